"""SegFormer training with the leave-one-organ-out fold protocol: one fold, the whole CV, or the final model.

All 30 tiles live on the training device as two tensors (uint8 images, uint8 class maps), and every step draws
random crops there, augments them there (dihedral flips, stain jitter in optical density, brightness/contrast,
defocus blur, noise, input-scale jitter) and runs under bf16 autocast on a GPU: there is no data loader to wait
for. The same code runs on a CPU, only slower.

The shipped recipe, run on a 2-core CPU (bf16 autocast pays 1.6x there; ``results/train_step_cpu.md``): one
start point pretrained on other 40x nuclei data (:mod:`cryonuseg_hf.external`; about an hour), then every fold
and the final model fine-tuned from it (about 2 minutes each)::

    cryonuseg-hf pretrain --data ../shared/datasets/external/monuseg_train \
        --data ../shared/datasets/external/nuinsseg_human_spleen --out results/pretrained --input-scale 1 \
        --boundary-width 2 --bf16 --batch-size 8 --crop 128 --steps 14000 --warmup 200
    cryonuseg-hf train --cv --final --init results/pretrained --input-scale 1.5 --boundary-width 2 --bf16 \
        --batch-size 8 --crop 128 --warmup 30 --steps 300 --lr 0.0003
    cryonuseg-hf model-card

Every run is resumable: the training state is saved every ``--save-every`` seconds and a restarted command
continues from it; ``--cv`` keeps the folds it finished with the same recipe. Each fold's model is saved in
``results/cv/models/fold_K`` (git-ignored), and its held-out tiles are predicted from that checkpoint by
:func:`cryonuseg_hf.predict.predict_instances`, the function users call.

On a GPU the same commands take ``--device cuda``; ``train --pack .gpu/cryonuseg_tiles.npz`` packs the tiles
into one file to carry there (``.gpu/`` is git-ignored). ``--max-seconds`` times steps 10-30 and cuts the cosine
schedule to fit a wall-clock budget per model; the steps actually run are recorded.

A held-out tile can never reach training: :func:`training_indices` raises if one would, and every fold calls it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.folds import TILE_IDS, fold_of, organ_of, tiles_of_fold, train_tiles
from cryonuseg_hf.model import VARIANTS
from cryonuseg_hf.release import DEFAULT_MARKUP, MARKUPS

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that decides a trained model; saved beside every result and checkpoint."""

    variant: str = "b0"
    input_scale: float = 2.0
    first_stride: int = 4
    """Stride of SegFormer's first patch embedding (4 in the paper; 2 doubles the output resolution)."""
    init: str | None = None
    markup: str = DEFAULT_MARKUP
    boundary_width: int = 1
    steps: int = 1500
    max_seconds: float | None = None
    """Optional wall-clock budget per model: after 10 timed steps, ``steps`` is cut to fit it."""
    batch_size: int = 16
    crop: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    class_weights: tuple[float, float, float] = (1.0, 1.0, 2.0)
    dice_weight: float = 1.0
    scale_jitter: float = 0.15
    tta: bool = True
    tune_tiles: int = 9
    """Training tiles the post-processing is tuned on (one per organ first); 0 = all training tiles."""
    workers: int = 1
    """Processes for the post-processing grid search (results do not depend on it)."""
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    log_every: int = 25
    bf16: bool = False
    """bf16 autocast on the CPU too (always on with CUDA)."""
    save_every: float = 300.0
    """Seconds between resumable training states (with ``state_path``)."""


MAX_NONFINITE_IN_A_ROW = 20
"""Training steps in a row whose gradient may be inf/NaN (each one skipped) before a run counts as diverged."""

INT_MINIMUMS: dict[str, int] = {
    "first_stride": 1,
    "boundary_width": 1,
    "steps": 1,
    "batch_size": 1,
    "crop": 32,  # one cell of SegFormer's 32 px grid; smaller crops round to an empty input
    "warmup": 0,
    "tune_tiles": 0,
    "workers": 1,
    "seed": 0,
    "threads": 1,
    "log_every": 1,
}
"""The smallest value of each integer ``TrainConfig`` field (the CLI's argument types use them too)."""
MAX_CROP = 512
"""The side of a CryoNuSeg tile: a training crop cannot be larger."""
DEVICES = ("auto", "cpu", "cuda")


def validate_config(config: TrainConfig) -> TrainConfig:
    """Check every field of ``config`` before any work; return it.

    Raises:
        ValueError: the first bad field, named as its command-line option, with the values it takes.
    """

    def bad(name: str, expected: str) -> ValueError:
        value = getattr(config, name)
        return ValueError(f"--{name.replace('_', '-')} {value!r}: expected {expected}")

    for name, minimum in INT_MINIMUMS.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad(name, f"a whole number >= {minimum}")
    if config.crop > MAX_CROP:
        raise bad("crop", f"at most {MAX_CROP} (the tile side)")
    if config.markup not in MARKUPS:
        raise bad("markup", f"one of {', '.join(MARKUPS)}")
    if config.variant not in VARIANTS:
        raise bad("variant", f"one of {', '.join(VARIANTS)}")
    if config.device not in DEVICES:
        raise bad("device", f"one of {', '.join(DEVICES)}")
    for name in ("input_scale", "lr", "save_every"):
        if not math.isfinite(getattr(config, name)) or getattr(config, name) <= 0:
            raise bad(name, "a number > 0")
    for name in ("weight_decay", "dice_weight"):
        if not math.isfinite(getattr(config, name)) or getattr(config, name) < 0:
            raise bad(name, "a number >= 0")
    if not 0 <= config.scale_jitter < 1:
        raise bad("scale_jitter", "a number in [0, 1)")
    if config.max_seconds is not None and not config.max_seconds > 0:
        raise bad("max_seconds", "a number of seconds > 0")
    return config


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# ---------------------------------------------------------------------------------------------------- data


def load_tiles(data: str | Path | None = None, markups: tuple[str, ...] = MARKUPS) -> dict[str, Any]:
    """All 30 tiles: ``{"tile_ids", "images": (30, 512, 512, 3) uint8, "masks": {markup: (30, 512, 512) uint16}}``.

    Args:
        data: a folder written by ``cryonuseg-hf build`` (read with ``load_dataset``), a ``.npz`` written by
            :func:`pack_tiles`, or a raw release folder/zip; None = the default raw release.
        markups: the mark-ups whose instance masks to load.
    """
    from cryonuseg_hf.release import default_source, open_release

    path = Path(data) if data is not None else default_source()
    if path.suffix == ".npz":
        return _load_packed(path, markups)
    if (path / "README.md").is_file() and any((path / m).is_dir() for m in MARKUPS):
        return _load_built(path, markups)
    import tifffile

    from cryonuseg_hf.builder import check_release

    release = open_release(path)
    check_release(release)  # a mask of another tile would train the model silently wrong
    images = np.stack([tifffile.imread(release.images[t]) for t in TILE_IDS])
    masks = {
        m: np.stack([tifffile.imread(release.markups[m].variants["label_masks_modify"][t]) for t in TILE_IDS])
        for m in markups
    }
    return _checked({"tile_ids": list(TILE_IDS), "images": images, "masks": masks}, path)


def _load_built(folder: Path, markups: tuple[str, ...]) -> dict[str, Any]:
    from datasets import load_dataset

    images, masks = None, {}
    for markup in markups:
        rows = load_dataset(str(folder), markup, split="train", columns=["tile_id", "image", "instance_mask"])
        by_tile = {row["tile_id"]: row for row in rows}
        missing = sorted(set(TILE_IDS) - set(by_tile))
        if missing:
            raise ValueError(f"{folder}: config {markup!r} lacks tiles {missing}")
        masks[markup] = np.stack([np.asarray(by_tile[t]["instance_mask"], dtype=np.uint16) for t in TILE_IDS])
        if images is None:
            images = np.stack([np.asarray(by_tile[t]["image"].convert("RGB")) for t in TILE_IDS])
    return _checked({"tile_ids": list(TILE_IDS), "images": images, "masks": masks}, folder)


def _load_packed(path: Path, markups: tuple[str, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no packed tiles; write them with `cryonuseg-hf train --pack {path}`"
        )
    with np.load(path) as npz:
        missing = [m for m in markups if f"mask_{m}" not in npz]
        if missing:
            raise ValueError(f"{path}: packed file lacks the mark-ups {missing}")
        tiles = {
            "tile_ids": [str(t) for t in npz["tile_ids"]],
            "images": npz["images"],
            "masks": {m: npz[f"mask_{m}"] for m in markups},
        }
    return _checked(tiles, path)


def _checked(tiles: dict[str, Any], where: Path) -> dict[str, Any]:
    if tiles["tile_ids"] != list(TILE_IDS):
        raise ValueError(
            f"{where}: expected the 30 CryoNuSeg tiles in fold order, got {tiles['tile_ids'][:3]}..."
        )
    if tiles["images"].shape != (len(TILE_IDS), 512, 512, 3) or tiles["images"].dtype != np.uint8:
        raise ValueError(f"{where}: expected 30 RGB uint8 512x512 images, got {tiles['images'].shape}")
    for markup, masks in tiles["masks"].items():
        if masks.shape != (len(TILE_IDS), 512, 512):
            raise ValueError(f"{where}: {markup} masks have shape {masks.shape}, expected (30, 512, 512)")
    return tiles


def pack_tiles(tiles: dict[str, Any], path: str | Path) -> Path:
    """Tiles and every loaded mark-up in one compressed ``.npz`` (to carry to a GPU machine; keep it git-ignored)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"mask_{m}": masks.astype(np.uint16) for m, masks in tiles["masks"].items()}
    np.savez_compressed(path, tile_ids=np.array(tiles["tile_ids"]), images=tiles["images"], **arrays)
    return path


def training_indices(fold: int | None) -> list[int]:
    """Indices (into ``TILE_IDS``) a model for ``fold`` may train on; ``None`` = the final model, all 30.

    Raises:
        RuntimeError: if a held-out tile of ``fold`` would reach training (the fold protocol is broken).
    """
    if fold is None:
        return list(range(len(TILE_IDS)))
    allowed = train_tiles(fold)
    leaked = set(allowed) & set(tiles_of_fold(fold))
    if leaked or len(allowed) != len(TILE_IDS) - 3:
        raise RuntimeError(f"fold {fold}: held-out tiles {sorted(leaked)} would reach training")
    return [TILE_IDS.index(t) for t in allowed]


def tuning_tiles(indices: list[int], n: int) -> list[int]:
    """``n`` of the training indices for tuning post-processing: tile _01 of each organ, then _02, then _03."""
    ordered = sorted(indices, key=lambda i: (TILE_IDS[i][-2:], i))
    return ordered if n <= 0 else ordered[:n]


# ---------------------------------------------------------------------------------------------------- training


def augment(images, generator):
    """Stain, contrast, focus and noise jitter on a (B, 3, H, W) float batch in 0..1, on its own device."""
    import torch
    import torch.nn.functional as F

    b, device = images.shape[0], images.device

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(b, *shape, device=device, generator=generator)

    density = -torch.log(images.clamp(1 / 255, 1.0))  # optical density: stains act linearly here
    density = density * uniform(0.8, 1.2, 3, 1, 1) + uniform(-0.05, 0.05, 3, 1, 1)
    x = torch.exp(-density)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.8, 1.2, 1, 1, 1) + mean + uniform(-0.08, 0.08, 1, 1, 1)
    sigma = uniform(0.2, 1.5) * (torch.rand(b, device=device, generator=generator) < 0.3)
    taps = torch.arange(-3, 4, device=device, dtype=x.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (B*3, 7)
    flat = x.reshape(1, b * 3, *x.shape[2:])
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="reflect"), kernel[:, None, :, None], groups=b * 3)
    x = flat.reshape_as(x) + uniform(0, 0.02, 1, 1, 1) * torch.randn(
        x.shape, device=device, generator=generator
    )
    return x.clamp(0, 1)


def sample_batch(images, classes, indices: list[int], config: TrainConfig, rng: np.random.Generator):
    """Random crops with random flips/rotations from the allowed tile indices only (tensors on the device)."""
    import torch

    crop, side = config.crop, images.shape[-1]
    xs, ys = [], []
    for i in rng.choice(indices, size=config.batch_size):
        r, c = rng.integers(0, side - crop + 1, size=2)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = images[i, :, r : r + crop, c : c + crop], classes[i, r : r + crop, c : c + crop]
        x, y = torch.rot90(x, k, dims=(1, 2)), torch.rot90(y, k, dims=(0, 1))
        xs.append(x.flip(2) if flip else x)
        ys.append(y.flip(1) if flip else y)
    return torch.stack(xs), torch.stack(ys).long()


def loss_fn(logits, target, config: TrainConfig):
    """Weighted cross-entropy plus soft Dice over the two nucleus classes, at the target's resolution.

    Pixels of class ``IGNORE_INDEX`` (ambiguous areas of pretraining data) count in neither term.
    """
    import torch
    import torch.nn.functional as F

    from cryonuseg_hf.targets import IGNORE_INDEX

    logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    weight = torch.tensor(config.class_weights, device=logits.device)
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    p = logits.softmax(1)[:, 1:] * valid
    onehot = F.one_hot(target.masked_fill(~valid[:, 0], 0), p.shape[1] + 1).permute(0, 3, 1, 2)[:, 1:].float()
    dice = 1 - (2 * (p * onehot).sum((0, 2, 3)) + 1) / ((p + onehot).sum((0, 2, 3)) + 1)
    return ce + config.dice_weight * dice.mean()


def train_model(
    config: TrainConfig,
    tiles: dict[str, Any],
    fold: int | None,
    progress: bool = True,
    state_path: str | Path | None = None,
):
    """Train one SegFormer on the CryoNuSeg training tiles of ``fold`` (None: all 30). Returns (model, record)."""
    from cryonuseg_hf.targets import instances_to_classes

    indices = training_indices(fold)
    classes = np.stack(
        [instances_to_classes(m, config.boundary_width) for m in tiles["masks"][config.markup]]
    )
    model, record = fit_segformer(
        config, tiles["images"], classes, indices, 0 if fold is None else fold + 1, progress, state_path,
        name=f"fold {fold}",
    )  # fmt: skip
    record = {"fold": fold, "train_tiles": [TILE_IDS[i] for i in indices], **record}
    return model, record


RUN_OPTIONS = ("threads", "log_every", "save_every", "workers")
"""``TrainConfig`` fields that change how a run goes, not what it makes: a resumed run may change them."""


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUN_OPTIONS}


def fit_segformer(
    config: TrainConfig,
    images: np.ndarray,
    classes: np.ndarray,
    indices: list[int],
    stream: int = 0,
    progress: bool = True,
    state_path: str | Path | None = None,
    name: str = "model",
):
    """The training loop: random crops of ``images[indices]`` / ``classes[indices]``, augmented on the device.

    Args:
        config: the recipe.
        images: (N, H, W, 3) uint8.
        classes: (N, H, W) uint8 class maps (``IGNORE_INDEX`` = not in the loss).
        indices: which of the N images may be drawn.
        stream: random-stream key (the fold + 1; 0 for the final model), so folds draw different crops.
        state_path: a file for resumable training state, written every ``config.save_every`` seconds and at the
            end; an existing one made with the same config is resumed from its step. Removed by the caller.
        name: how the log names this model.

    Returns:
        ``(model in eval mode, record)``; the record holds steps, timing and the loss curve.
    """
    import torch
    import torch.nn.functional as F

    from cryonuseg_hf.model import IMAGE_MEAN, IMAGE_STD, build_model

    torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    rng = np.random.default_rng([config.seed, stream])
    generator = torch.Generator(device=device).manual_seed(config.seed * 1000 + stream)
    images_t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
    classes_t = torch.from_numpy(np.ascontiguousarray(classes)).to(device)
    model = build_model(
        config.variant, config.input_scale, config.init, seed=config.seed, first_stride=config.first_stride
    ).to(device).train()  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)
    if device.startswith("cuda"):
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16)
    total, losses, step, elapsed, skipped = config.steps, [], 0, 0.0, 0
    state_path = Path(state_path) if state_path is not None else None
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if _recipe(state["config"]) != _recipe(asdict(config)) or state["stream"] != stream:
            raise ValueError(f"{state_path}: training state of another recipe; remove it to start afresh")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())  # stochastic depth draws from the global generator
        total, step, elapsed = state["total"], state["step"], state["elapsed"]
        losses = [torch.tensor(v) for v in state["losses"]]
        skipped = state.get("skipped", 0)
        logger.info("%s: resumed from %s at step %d/%d", name, state_path, step, total)

    def save_state() -> None:
        state = {
            "config": asdict(config), "stream": stream, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "total": total, "step": step,
            "elapsed": elapsed + time.perf_counter() - start, "losses": [float(v) for v in losses], "skipped": skipped,
        }  # fmt: skip
        state_path.parent.mkdir(parents=True, exist_ok=True)
        partial = state_path.with_name(state_path.name + ".partial")
        torch.save(state, partial)
        partial.replace(state_path)

    start = last_save = time.perf_counter()
    resumed_at, bad_in_a_row = step, 0
    while step < total:
        lr_scale = min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_scale
        x, y = sample_batch(images_t, classes_t, indices, config, rng)
        x = augment(x.float() / 255.0, generator)
        jitter = rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter)
        side = 32 * int(round(config.crop * config.input_scale * jitter / 32))
        x = F.interpolate((x - mean) / std, size=(side, side), mode="bilinear", align_corners=False)
        with amp:
            loss = loss_fn(model(pixel_values=x).logits, y, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        step += 1
        if torch.isfinite(norm):  # waits for the GPU, which a launch-bound loop costs little
            optimizer.step()
            losses.append(loss.detach())
            bad_in_a_row = 0
        else:  # an overflow under bf16 autocast: skip the update rather than write NaN into the weights
            skipped, bad_in_a_row = skipped + 1, bad_in_a_row + 1
            if bad_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                raise FloatingPointError(
                    f"{name}: the run diverged: steps {step - bad_in_a_row + 1}-{step} all had a non-finite loss "
                    f"or gradient (loss {float(loss)}) and were skipped. Lower --lr (now {config.lr}) or raise "
                    f"--warmup, and remove {state_path or 'the saved training state'} to start afresh"
                )
        timed = step - resumed_at  # steps run by this process: the budget is timed on steps 10-30 of it
        if config.max_seconds and timed in (10, 30):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if timed == 10:
                warm = time.perf_counter()
            else:
                left = config.max_seconds - (elapsed + time.perf_counter() - start)
                total = max(step + 1, min(total, step + int(left / ((time.perf_counter() - warm) / 20))))
        if progress and (step % config.log_every == 0 or step == total):
            logger.info(
                "%s step %d/%d loss %.4f (%.1f s)",
                name,
                step,
                total,
                float(torch.stack(losses[-config.log_every :]).mean()) if losses else float("nan"),
                elapsed + time.perf_counter() - start,
            )
        if state_path is not None and (time.perf_counter() - last_save > config.save_every or step == total):
            save_state()
            last_save = time.perf_counter()
    losses = torch.stack(losses).float().cpu().numpy() if losses else np.zeros(0)
    seconds = elapsed + time.perf_counter() - start
    record = {
        "steps": step,
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(step, 1), 3),
        "loss_first_25": float(np.mean(losses[:25])),
        "loss_last_25": float(np.mean(losses[-25:])),
        "loss_curve": [
            round(float(np.mean(losses[i : i + config.log_every])), 4)
            for i in range(0, step, config.log_every)
        ],
        "device": device,
        "skipped_steps": skipped,
    }
    return model.eval(), record


def tune_postprocess(predictor, tiles: dict[str, Any], indices: list[int], config: TrainConfig):
    """Post-processing parameters tuned on the given training tiles, predicted by ``predictor`` without TTA."""
    from cryonuseg_hf.postprocess import tune_params

    probabilities = [predictor.probabilities(tiles["images"][i], tta=False) for i in indices]
    references = [tiles["masks"][config.markup][i] for i in indices]
    best, records = tune_params(probabilities, references, workers=config.workers)
    return best, max(r["objective"] for r in records)


def save_tuned(model, config: TrainConfig, tiles: dict[str, Any], indices: list[int], checkpoint: Path):
    """Save ``model`` as a checkpoint, tune its post-processing on ``indices`` through the saved checkpoint (as a
    user loads it), store the parameters in it. Returns ``(params, objective, tuning indices)``."""
    from cryonuseg_hf.model import save_checkpoint
    from cryonuseg_hf.predict import open_predictor

    model.config.cryonuseg_train_config = asdict(config)
    save_checkpoint(model, checkpoint)
    predictor = open_predictor(checkpoint, resolve_device(config.device), "torch", config.threads)
    tune = tuning_tiles(indices, config.tune_tiles)
    params, objective = tune_postprocess(predictor, tiles, tune, config)
    save_checkpoint(model, checkpoint, postprocess=params)
    return params, objective, tune


def fit_fold(config: TrainConfig, tiles: dict[str, Any], fold: int, out_dir: Path) -> dict[str, Any]:
    """Train fold ``fold``, tune post-processing on its training tiles, write its 3 held-out predictions.

    The fold's model is saved as a checkpoint (``out_dir/models/fold_K``, fp16 like the shipped one) and the
    held-out tiles are predicted from that checkpoint by :func:`cryonuseg_hf.predict.predict_instances`, the
    function users call, with the same padding and TTA: the CV scores the code that users run.
    """
    from PIL import Image

    from cryonuseg_hf.predict import open_predictor, predict_instances

    state = out_dir / "models" / f"fold_{fold}.state.pt"
    model, record = train_model(config, tiles, fold, state_path=state)
    start = time.perf_counter()
    checkpoint = out_dir / "models" / f"fold_{fold}"
    params, objective, tune = save_tuned(model, config, tiles, training_indices(fold), checkpoint)
    predictor = open_predictor(checkpoint, resolve_device(config.device), "torch", config.threads)
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    for tile in tiles_of_fold(fold):
        i = TILE_IDS.index(tile)
        assert i not in training_indices(fold)
        labels = predict_instances(tiles["images"][i], predictor, tta=config.tta)
        if labels.max() > 65535:
            raise ValueError(f"{tile}: {labels.max()} instances do not fit a 16-bit PNG")
        Image.fromarray(labels.astype(np.uint16)).save(out_dir / "predictions" / f"{tile}.png")
    record.update(
        held_out=tiles_of_fold(fold),
        tuning_tiles=[TILE_IDS[i] for i in tune],
        postprocess=params.to_dict(),
        tuning_objective_train=round(objective, 4),
        tune_predict_seconds=round(time.perf_counter() - start, 1),
        config=asdict(config),
    )
    (out_dir / "folds").mkdir(exist_ok=True)
    (out_dir / "folds" / f"fold_{fold}.json").write_text(json.dumps(record, indent=2) + "\n")
    state.unlink(missing_ok=True)
    return record


def fold_done(config: TrainConfig, out_dir: Path, fold: int) -> dict[str, Any] | None:
    """The record of ``fold`` if ``out_dir`` holds it, made with ``config``, with all 3 predictions; else None."""
    path = out_dir / "folds" / f"fold_{fold}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    predictions = [out_dir / "predictions" / f"{t}.png" for t in tiles_of_fold(fold)]
    same = _recipe(record.get("config", {})) == _recipe(json.loads(json.dumps(asdict(config))))
    if not same or not all(p.is_file() for p in predictions):
        return None
    return record


def train_final(config: TrainConfig, tiles: dict[str, Any], checkpoint: Path, state: Path) -> dict[str, Any]:
    """The all-data model, post-processing tuned on its training tiles, saved as an fp16 checkpoint."""
    model, record = train_model(config, tiles, None, state_path=state)
    params, objective, _ = save_tuned(model, config, tiles, training_indices(None), checkpoint)
    state.unlink(missing_ok=True)
    record.update(
        postprocess=params.to_dict(), tuning_objective_train=round(objective, 4), checkpoint=str(checkpoint)
    )
    return record


# ---------------------------------------------------------------------------------------------------- scoring


def read_predictions(out_dir: Path) -> dict[str, np.ndarray]:
    """tile id -> held-out instance labels found in ``out_dir/predictions``."""
    from PIL import Image

    found = {}
    for tile in TILE_IDS:
        path = out_dir / "predictions" / f"{tile}.png"
        if path.is_file():
            found[tile] = np.asarray(Image.open(path)).astype(np.int32)
    return found


def score_predictions(predictions: dict[str, np.ndarray], tiles: dict[str, Any]) -> dict[str, Any]:
    """Held-out predictions scored against every loaded mark-up (per tile, organ, fold and mean)."""
    from cryonuseg_hf.metrics import score

    ids = [t for t in TILE_IDS if t in predictions]
    references = {m: [masks[TILE_IDS.index(t)] for t in ids] for m, masks in tiles["masks"].items()}
    return score(
        [predictions[t] for t in ids],
        references,
        organs=[organ_of(t) for t in ids],
        folds=[fold_of(t) for t in ids],
        tile_ids=ids,
    )


def human_rows(results_dir: Path) -> dict[str, Any]:
    """The human-agreement comparisons from ``results/human_agreement.json`` (``cryonuseg-hf agreement``)."""
    path = results_dir / "human_agreement.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `cryonuseg-hf agreement` first")
    agreement = json.loads(path.read_text())
    return {name: agreement[name] for name in ("intra_observer", "inter_observer")}


def write_cv_results(
    out_dir: Path, tiles: dict[str, Any], run: dict[str, Any], human: dict[str, Any]
) -> dict:
    """Score every held-out prediction in ``out_dir`` and write ``metrics.json``, ``metrics.md``, ``per_tile.csv``."""
    import csv

    predictions = read_predictions(out_dir)
    if not predictions:
        raise FileNotFoundError(f"{out_dir / 'predictions'}: no held-out predictions to score")
    scores = score_predictions(predictions, tiles)
    folds = sorted({fold_of(t) for t in predictions})
    fold_records = {}
    for k in folds:
        path = out_dir / "folds" / f"fold_{k}.json"
        fold_records[k] = json.loads(path.read_text()) if path.is_file() else {}
    results = {
        **run,
        "n_tiles": len(predictions),
        "folds": fold_records,
        "scores": scores,
        "human_agreement": human,
    }
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    with open(out_dir / "per_tile.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["tile_id", "organ", "fold", "reference", "dice", "aji", "aji_plus", "pq", "dq", "sq"]
        )
        for markup, result in scores.items():
            for row in result["per_tile"]:
                writer.writerow(
                    [row["tile_id"], row["organ"], row["fold"], markup]
                    + [f"{row[m]:.4f}" for m in ("dice", "aji", "aji_plus", "pq", "dq", "sq")]
                )
        for name, comparison in human.items():
            for tile, row in comparison["per_tile"].items():
                writer.writerow(
                    [tile, row["organ"], fold_of(tile), f"human_{name}"]
                    + [f"{row[m]:.4f}" for m in ("dice", "aji", "aji_plus", "pq", "dq", "sq")]
                )
    (out_dir / "metrics.md").write_text(cv_markdown(results))
    return results  # fmt: skip


def cv_markdown(results: dict[str, Any]) -> str:
    """The CV results as Markdown tables: model vs each mark-up, with the human agreement beside."""
    metrics = ("dice", "aji", "aji_plus", "pq")
    scores, human, config = results["scores"], results["human_agreement"], results["config"]
    reference = config["markup"]
    lines = [
        "# SegFormer cross-validation on CryoNuSeg (leave one organ out)",
        "",
        f"Produced by `{results['command']}` on {results['machine']}.",
        f"{results['n_tiles']} of 30 tiles have a held-out prediction (`predictions/<tile_id>.png`, 16-bit instance "
        "labels, each made by the model of the fold that held the tile out). Means are over those tiles.",
        "",
        f"**Scale of this run: {results.get('scale_note', '')}**",
        "",
        f"Config: SegFormer-{config['variant']}, input scale {config['input_scale']}, {config['steps']} steps of "
        f"{config['batch_size']} crops of {config['crop']} px, lr {config['lr']}, seed {config['seed']}, "
        f"init {config['init'] or 'none (from scratch)'}, TTA {'8 flips/rotations' if config['tta'] else 'off'}, "
        f"ground truth {reference}; post-processing tuned on {config['tune_tiles'] or 'all'} training tiles per fold.",
        "",
        "## Mean over the held-out tiles",
        "",
        "| predictions vs reference | " + " | ".join(m.upper().replace("_PLUS", "+") for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for markup, result in scores.items():
        lines.append(f"| SegFormer vs {markup} | " + " | ".join(f"{result[m]:.4f}" for m in metrics) + " |")
    for name, comparison in human.items():
        label = f"human {name.replace('_', '-')} ({comparison['prediction']} vs {comparison['reference']}, 30 tiles)"
        lines.append(f"| {label} | " + " | ".join(f"{comparison['mean'][m]:.4f}" for m in metrics) + " |")
    others = [m for m in scores if m != reference]
    short = {"annotator1_round1": "A1r1", "annotator1_round2": "A1r2", "annotator2": "A2"}
    head = [f"{m} {short.get(reference, reference)}" for m in ("AJI", "PQ", "Dice")]
    head += [f"{m} {short.get(o, o)}" for o in others for m in ("AJI", "PQ")]
    head += ["AJI intra", "PQ intra", "AJI inter", "PQ inter"]

    def cells(group: str, key: str) -> list[str]:
        def pick(result: dict) -> dict:
            if group == "per_tile":
                return next(r for r in result["per_tile"] if r["tile_id"] == key)
            return result[group][key]

        row = pick(scores[reference])
        values = [row["aji"], row["pq"], row["dice"]]
        values += [pick(scores[o])[m] for o in others for m in ("aji", "pq")]
        for name in ("intra_observer", "inter_observer"):
            values += [human[name][group][key][m] for m in ("aji", "pq")]
        return [f"{v:.4f}" for v in values]

    lines += [
        "",
        "## Per organ (= per fold), with the human agreement on the same tiles",
        "",
        f"Columns: the predictions against each mark-up (A1r2 = {reference} is the training ground truth); "
        "intra = Annotator 1 round 1 vs round 2, inter = Annotator 2 vs Annotator 1 round 2.",
        "",
        "| fold | organ | " + " | ".join(head) + " | steps | train s | tune + predict s |",
        "|---|---|" + "---|" * (len(head) + 3),
    ]
    for organ in scores[reference].get("per_organ", {}):
        k = fold_of(f"Human_{organ}_01")
        record = results["folds"].get(k) or results["folds"].get(str(k)) or {}
        timing = [str(record.get(f, "")) for f in ("steps", "train_seconds", "tune_predict_seconds")]
        lines.append(f"| {k} | {organ} | " + " | ".join(cells("per_organ", organ) + timing) + " |")
    lines += ["", "## Per tile", "", "| tile | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for row in scores[reference]["per_tile"]:
        lines.append(f"| {row['tile_id']} | " + " | ".join(cells("per_tile", row["tile_id"])) + " |")
    lines += [
        "",
        f"Seeds: numpy `default_rng([{config['seed']}, fold + 1])` for crops, torch `{config['seed']} * 1000 + fold + 1` "
        "for augmentation, torch `manual_seed` "
        f"{config['seed']} for the weights. Every value: `metrics.json`; per tile and mark-up: `per_tile.csv`.",
        "",
    ]
    return "\n".join(lines)  # fmt: skip


def machine(device: str) -> str:
    """Where a run happened: the CPU model and cores, and the GPU if one was used."""
    from cryonuseg_hf.agreement import machine_description

    if device.startswith("cuda"):
        import torch

        return machine_description().replace("no GPU", f"GPU {torch.cuda.get_device_name(0)}")
    return machine_description()


def command_line(args) -> str:
    """The ``cryonuseg-hf train`` command equivalent to ``args``: every option that differs from its default
    (``--scale-note`` is recorded separately)."""
    import shlex

    parts = ["cryonuseg-hf", "train"]
    if args.data is not None:
        parts += ["--data", str(args.data)]
    for fold in args.fold or []:
        parts += ["--fold", str(fold)]
    parts += [
        flag
        for flag, on in (("--cv", args.cv), ("--final", args.final), ("--score-only", args.score_only))
        if on
    ]
    for name in ("pack", "out", "checkpoint", "results"):
        if getattr(args, name) is not None:
            parts += [f"--{name}", str(getattr(args, name))]
    return shlex.join(parts + recipe_options(args))


def recipe_options(args) -> list[str]:
    """The command-line options of every ``TrainConfig`` field in ``args`` that differs from its default."""
    parts, defaults = [], TrainConfig()
    for name in TrainConfig.__dataclass_fields__:
        value = getattr(args, name, getattr(defaults, name))
        if value != getattr(defaults, name):
            if isinstance(value, bool):
                parts += ["--no-tta"] if name == "tta" else [f"--{name.replace('_', '-')}"]
            else:
                parts += [f"--{name.replace('_', '-')}", str(value)]
    return parts


def config_from_args(args) -> TrainConfig:
    """The ``TrainConfig`` of parsed ``train``/``pretrain`` options (fields the options lack keep defaults)."""
    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)}
    return validate_config(TrainConfig(**fields))


def run_pretraining(args, command: str | None = None) -> list[str]:
    """The ``cryonuseg-hf pretrain`` job: one start point from other nuclei data, saved as a checkpoint.

    Resumable: the training state is saved every ``--save-every`` seconds, and the same command started again
    continues from it; the state file is removed once the checkpoint is written.
    """
    import shlex

    config = config_from_args(args)  # bad options fail here, before torch is imported or data read

    import torch
    import transformers

    from cryonuseg_hf.external import load_pretraining_tiles
    from cryonuseg_hf.model import save_checkpoint

    out = Path(args.out)
    state = Path(args.state) if args.state else out.with_name(out.name + ".state.pt")
    data = load_pretraining_tiles(args.data, config.boundary_width)
    indices = list(range(len(data["names"])))
    model, record = fit_segformer(
        config, data["images"], data["classes"], indices, stream=100, state_path=state, name="pretrain"
    )
    model.config.cryonuseg_train_config = asdict(config)
    save_checkpoint(model, out)
    device = resolve_device(config.device)
    record.update(
        command=command
        or shlex.join(
            ["cryonuseg-hf", "pretrain", *[f"--data={d}" for d in args.data], f"--out={out}"]
            + ([f"--state={args.state}"] if args.state else [])
            + recipe_options(args)
        ),
        machine=machine(device),
        config=asdict(config),
        sources=data["sources"],
        windows=len(indices),
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    state.unlink(missing_ok=True)
    return [
        f"pretrained on {len(indices)} windows of {sum(s['images'] for s in data['sources'])} images: "
        f"{record['steps']} steps in {record['train_seconds']} s, loss {record['loss_first_25']:.3f} -> "
        f"{record['loss_last_25']:.3f} -> {out}"
    ]


def run_training(args, command: str | None = None) -> list[str]:
    """The ``cryonuseg-hf train`` job: pack, folds, CV scoring and/or the final model. Returns summary lines."""
    config = config_from_args(args)  # bad options fail here, before torch is imported or data read
    folds = list(range(len(TILE_IDS) // 3)) if args.cv else list(args.fold or [])
    wrong = [k for k in folds if not 0 <= k < len(TILE_IDS) // 3]
    if wrong:
        raise ValueError(f"--fold {wrong[0]}: expected a fold 0..{len(TILE_IDS) // 3 - 1} (one per organ)")
    if not (args.pack or folds or args.score_only or args.final):
        raise ValueError("nothing to do: give --fold K, --cv, --final, --score-only or --pack PATH")
    lines = []
    tiles = load_tiles(args.data, MARKUPS)

    import torch
    import transformers

    if args.pack:
        lines.append(
            f"packed {len(tiles['tile_ids'])} tiles and {list(tiles['masks'])} into {pack_tiles(tiles, args.pack)}"
        )
    device = resolve_device(config.device)
    run = {
        "command": command or command_line(args),
        "machine": machine(device),
        "config": asdict(config),
        "scale_note": args.scale_note,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    out = Path(args.out)
    for fold in folds:
        done = fold_done(config, out, fold)
        if done is not None:  # a restarted command continues where it stopped
            lines.append(f"fold {fold}: already done in {out} with this recipe; kept")
            continue
        record = fit_fold(config, tiles, fold, out)
        record.update(run)
        (out / "folds" / f"fold_{fold}.json").write_text(json.dumps(record, indent=2) + "\n")
        lines.append(
            f"fold {fold}: {record['steps']} steps in {record['train_seconds']} s, loss {record['loss_first_25']:.3f} -> {record['loss_last_25']:.3f}"
        )
    if folds or args.score_only:
        results = write_cv_results(out, tiles, run, human_rows(Path(args.results)))
        ours = results["scores"][config.markup]
        lines.append(
            f"CV on {results['n_tiles']} held-out tiles vs {config.markup}: AJI {ours['aji']:.4f} PQ {ours['pq']:.4f} Dice {ours['dice']:.4f} -> {out / 'metrics.md'}"
        )
    if args.final:
        from cryonuseg_hf import MODEL_PATH

        checkpoint = Path(args.checkpoint) if args.checkpoint else MODEL_PATH
        state = out / "models" / "final.state.pt"
        record = {**train_final(config, tiles, checkpoint, state), **run}
        out.mkdir(parents=True, exist_ok=True)
        (out / "final.json").write_text(json.dumps(record, indent=2) + "\n")
        lines.append(f"final model: {record['steps']} steps in {record['train_seconds']} s -> {checkpoint}")
    return lines  # fmt: skip
