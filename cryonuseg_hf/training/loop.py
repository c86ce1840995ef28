"""The training loop: random crops of the tiles, augmented on the training device, bf16 autocast on a GPU.

All tiles live on the device as two tensors (uint8 images, uint8 class maps), and every step draws random crops
there, augments them there (dihedral flips, stain jitter in optical density, brightness/contrast, defocus blur,
noise, input-scale jitter): there is no data loader to wait for. The same code runs on a CPU, only slower
(bf16 autocast pays 1.6x there; ``results/train_step_cpu.md``).

Every run is resumable: the training state is saved every ``save_every`` seconds and a restarted run continues
from it. With ``ema_decay`` the model returned is the exponential moving average of the weights
(``torch.optim.swa_utils.AveragedModel``), updated after every step and saved with the state. ``max_seconds``
times steps 10-30 and cuts the cosine schedule to fit a wall-clock budget; the steps actually run are recorded.
A step whose gradient is inf/NaN is skipped, and a run that keeps producing them stops.

Under ``accelerate launch`` several processes train the model together (distributed data parallel, one process
per GPU); :mod:`cryonuseg_hf.training.processes` says how they share the work, and the record says how many
there were. Without the launcher the run has one process and trains as it always did.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.files import staged_files
from cryonuseg_hf.model.segformer import resolve_device
from cryonuseg_hf.training.config import TrainConfig, recipe
from cryonuseg_hf.training.processes import (
    agree,
    gather,
    mean_over_processes,
    process_seeds,
    share_buffers,
    start_accelerator,
)

logger = logging.getLogger(__name__)


MAX_NONFINITE_IN_A_ROW = 20
"""Training steps in a row whose gradient may be inf/NaN (each one skipped) before a run counts as diverged."""


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


def sample_batch(
    images, targets, indices: list[int], config: TrainConfig, rng: np.random.Generator, weights=None
):
    """Random crops with random flips/rotations from the allowed tile indices only (tensors on the device).

    ``targets`` is (N, K, H, W): the class maps, then any per-pixel maps cropped with them (contact zones).
    ``weights``: the probability of each of ``indices`` (None: all alike).
    Returns ``(images (B, 3, crop, crop), targets (B, K, crop, crop) int64)``.
    """
    import torch

    crop, side = config.crop, images.shape[-1]
    xs, ys = [], []
    for i in rng.choice(indices, size=config.batch_size, p=weights):
        r, c = rng.integers(0, side - crop + 1, size=2)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = images[i, :, r : r + crop, c : c + crop], targets[i, :, r : r + crop, c : c + crop]
        x, y = torch.rot90(x, k, dims=(1, 2)), torch.rot90(y, k, dims=(1, 2))
        xs.append(x.flip(2) if flip else x)
        ys.append(y.flip(2) if flip else y)
    return torch.stack(xs), torch.stack(ys).long()


def loss_fn(logits, target, config: TrainConfig, contact=None):
    """Weighted cross-entropy plus soft Dice over the nucleus classes, at the target's resolution.

    Pixels of class ``IGNORE_INDEX`` (ambiguous areas of pretraining data) count in neither term. ``contact``
    (B, H, W), where given, marks the pixels near two or more nuclei
    (:func:`cryonuseg_hf.data.targets.contact_zones`): their cross-entropy weighs ``1 + config.contact_weight``
    times as much, so the model learns to separate touching nuclei.
    """
    import torch
    import torch.nn.functional as F

    from cryonuseg_hf.data.targets import IGNORE_INDEX

    logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    weight = torch.tensor(config.class_weights, device=logits.device)
    valid = target != IGNORE_INDEX
    safe = target.masked_fill(~valid, 0)  # any class: these pixels get weight 0 below
    if contact is None or config.contact_weight == 0:
        ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
    else:  # the same weighted mean as above, each pixel also weighted by its contact weight
        pixel = (1 + config.contact_weight * contact.float()) * valid
        per_pixel = F.cross_entropy(logits, safe, weight=weight, reduction="none")
        ce = (per_pixel * pixel).sum() / (weight[safe] * pixel).sum()
    p = logits.softmax(1)[:, 1:] * valid.unsqueeze(1)
    onehot = F.one_hot(safe, p.shape[1] + 1).permute(0, 3, 1, 2)[:, 1:].float()
    dice = 1 - (2 * (p * onehot).sum((0, 2, 3)) + 1) / ((p + onehot).sum((0, 2, 3)) + 1)
    return ce + config.dice_weight * dice.mean()


def fit_segformer(
    config: TrainConfig,
    images: np.ndarray,
    classes: np.ndarray,
    indices: list[int],
    stream: int = 0,
    progress: bool = True,
    state_path: str | Path | None = None,
    name: str = "model",
    contacts: np.ndarray | None = None,
    weights: np.ndarray | None = None,
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
        contacts: (N, H, W) bool, the pixels near two or more nuclei, weighted by ``config.contact_weight``;
            required when that weight is not 0.
        weights: the probability of drawing each of ``indices`` (None: all alike).

    Returns:
        ``(model in eval mode, record)``; the record holds steps, timing, the loss curve (the mean over the
        processes) and the number of processes that trained.
    """
    import torch
    import torch.nn.functional as F

    from cryonuseg_hf.data.targets import class_names
    from cryonuseg_hf.model.segformer import IMAGE_MEAN, IMAGE_STD, build_model

    device = resolve_device(config.device)
    accelerator = start_accelerator(device)
    processes, process = accelerator.num_processes, accelerator.process_index
    if processes > 1:  # this process's GPU, not the first one
        device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    torch.set_num_threads(config.threads)
    crop_seed, augment_seed = process_seeds(config.seed, stream, process)
    rng = np.random.default_rng(crop_seed)
    generator = torch.Generator(device=device).manual_seed(augment_seed)
    images_t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
    if config.contact_weight and contacts is None:
        raise ValueError(
            f"{name}: --contact-weight {config.contact_weight} needs the contact zones of its tiles"
        )
    targets = (
        classes[:, None] if contacts is None else np.stack([classes, contacts.astype(classes.dtype)], axis=1)
    )
    targets_t = torch.from_numpy(np.ascontiguousarray(targets)).to(device)
    model = build_model(
        config.variant, config.input_scale, config.init, seed=config.seed, first_stride=config.first_stride,
        class_names=class_names(config.centre_fraction),
    ).to(device).train()  # fmt: skip
    if process > 0:  # stochastic depth draws from the global generator: each process its own draws
        torch.manual_seed(augment_seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    average = None
    if config.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # buffers too: the decode head's batch-norm statistics follow the averaged weights
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
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
        if recipe(state["config"]) != recipe(asdict(config)) or state["stream"] != stream:
            raise ValueError(f"{state_path}: training state of another recipe; remove it to start afresh")
        saved_by = state.get("processes", 1)
        if saved_by != processes:
            raise ValueError(
                f"{state_path}: training state of a run of {saved_by} process(es), this one has {processes}; "
                f"resume it with `accelerate launch --num_processes {saved_by}`"
                f"{'' if saved_by > 1 else ' or without the launcher'}, or remove it to start afresh"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if average is not None:
            average.load_state_dict(state["average"])
        streams = state["process_streams"][process] if processes > 1 else state
        rng.bit_generator.state = streams["rng"]
        generator.set_state(streams["generator"].cpu())
        torch.set_rng_state(streams["torch_rng"].cpu())  # stochastic depth draws from the global generator
        total, step, elapsed = state["total"], state["step"], state["elapsed"]
        losses = [torch.tensor(v) for v in streams["losses"]]
        skipped = state.get("skipped", 0)
        if accelerator.is_main_process:
            logger.info("%s: resumed from %s at step %d/%d", name, state_path, step, total)
    trained, optimizer = accelerator.prepare(model, optimizer)  # DistributedDataParallel under the launcher

    def save_state() -> None:
        """Every process hands in its random streams and losses; the main process writes the state."""
        streams = {"rng": rng.bit_generator.state, "generator": generator.get_state(),
                   "torch_rng": torch.get_rng_state(), "losses": [float(v) for v in losses]}  # fmt: skip
        every_process = gather(accelerator, streams)
        if accelerator.is_main_process:
            state = {
                "config": asdict(config), "stream": stream, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), **streams, "total": total, "step": step,
                "elapsed": elapsed + time.perf_counter() - start, "skipped": skipped,
                "average": average.state_dict() if average is not None else None,
                "processes": processes, "process_streams": every_process if processes > 1 else None,
            }  # fmt: skip
            state_path.parent.mkdir(parents=True, exist_ok=True)
            with staged_files({"state": state_path}) as twin:
                torch.save(state, twin["state"])
        accelerator.wait_for_everyone()  # no process reads the state before it is complete

    start = last_save = time.perf_counter()
    resumed_at, bad_in_a_row = step, 0
    while step < total:
        lr_scale = min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_scale
        x, y = sample_batch(images_t, targets_t, indices, config, rng, weights)
        x = augment(x.float() / 255.0, generator)
        jitter = rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter)
        side = 32 * int(round(config.crop * config.input_scale * jitter / 32))
        x = F.interpolate((x - mean) / std, size=(side, side), mode="bilinear", align_corners=False)
        with amp:
            loss = loss_fn(
                trained(pixel_values=x).logits, y[:, 0], config, y[:, 1] if y.shape[1] > 1 else None
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        step += 1
        if torch.isfinite(norm):  # waits for the GPU, which a launch-bound loop costs little
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            losses.append(loss.detach())
            bad_in_a_row = 0
        else:  # an overflow under bf16 autocast: skip the update rather than write NaN into the weights
            skipped, bad_in_a_row = skipped + 1, bad_in_a_row + 1
            if bad_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                raise FloatingPointError(
                    f"{name}: the run diverged: steps {step - bad_in_a_row + 1}-{step} all had a non-finite loss "
                    f"or gradient (loss {float(loss.detach())}) and were skipped. Lower --lr (now {config.lr}) or raise "
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
                total = agree(accelerator, total)  # every process stops at the same step
        if progress and accelerator.is_main_process and (step % config.log_every == 0 or step == total):
            logger.info(
                "%s step %d/%d loss %.4f (%.1f s)",
                name,
                step,
                total,
                float(torch.stack(losses[-config.log_every :]).mean()) if losses else float("nan"),
                elapsed + time.perf_counter() - start,
            )
        due = time.perf_counter() - last_save > config.save_every or step == total
        if state_path is not None and agree(accelerator, due):
            save_state()
            last_save = time.perf_counter()
    returned = model if average is None else average.module
    share_buffers(accelerator, returned)
    losses = (
        mean_over_processes(accelerator, torch.stack(losses).float()).cpu().numpy() if losses else np.zeros(0)
    )
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
        "processes": processes,
    }
    return returned.eval(), record
