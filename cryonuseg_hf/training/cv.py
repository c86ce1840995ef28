"""SegFormer training with the leave-one-organ-out fold protocol: pretraining, folds, the CV and the final model.

The data come from :mod:`cryonuseg_hf.training.data`, the loop from :mod:`cryonuseg_hf.training.loop`, the
recipe from :mod:`cryonuseg_hf.training.config` (named recipes in ``training/recipes/``); the CV's results files
are written by :mod:`cryonuseg_hf.reports.cv`. A model is made in two steps: a start point pretrained on other 40x
nuclei data (:mod:`cryonuseg_hf.data.external`), then every fold and the final model fine-tuned from it::

    cryonuseg-hf pretrain --recipe segformer-b0-pretrain --out results/pretrained \
        --data $CRYONUSEG_EXTERNAL/monuseg_train --data $CRYONUSEG_EXTERNAL/nuinsseg_human_spleen
    cryonuseg-hf train --cv --final --recipe segformer-b0-cryonuseg
    cryonuseg-hf model-card

Every run is resumable: the training state is saved every ``--save-every`` seconds and a restarted command
continues from it; ``--cv`` keeps the folds it finished with the same recipe. Each fold's model is saved in
``results/cv/models/fold_K`` (git-ignored), and its held-out tiles are predicted from that checkpoint by
:func:`cryonuseg_hf.model.predict.predict_instances`, the function users call.

On a GPU the same commands take ``--device cuda``; ``train --pack tiles.npz`` packs the tiles and every mark-up
into one file that ``--data tiles.npz`` reads on another machine. ``--max-seconds`` times steps 10-30 and cuts the cosine
schedule to fit a wall-clock budget per model; the steps actually run are recorded.

A held-out tile can never reach training: :func:`~cryonuseg_hf.training.data.training_indices` raises if one
would, and every fold calls it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.folds import N_FOLDS, TILE_IDS, tiles_of_fold
from cryonuseg_hf.core.machine import machine_description
from cryonuseg_hf.data.release import MARKUPS
from cryonuseg_hf.model.segformer import resolve_device
from cryonuseg_hf.training.config import TrainConfig, recipe
from cryonuseg_hf.training.data import load_tiles, training_indices, tuning_tiles
from cryonuseg_hf.training.loop import fit_segformer
from cryonuseg_hf.training.processes import main_process

logger = logging.getLogger(__name__)


def training_markups(config: TrainConfig) -> tuple[str, ...]:
    """The mark-ups a model is trained and its post-processing tuned on: all three with ``all_markups``."""
    return MARKUPS if config.all_markups else (config.markup,)


def train_model(
    config: TrainConfig,
    tiles: dict[str, Any],
    fold: int | None,
    progress: bool = True,
    state_path: str | Path | None = None,
):
    """Train one SegFormer on the CryoNuSeg training tiles of ``fold`` (None: all 30). Returns (model, record)."""
    from cryonuseg_hf.data.targets import contact_zones, instances_to_classes

    indices = training_indices(fold)
    markups = training_markups(config)
    missing = [m for m in markups if m not in tiles["masks"]]
    if missing:
        raise ValueError(f"training needs the mark-ups {missing}, which the loaded tiles lack")
    # one copy of the tiles per mark-up: a crop drawn from copy k has mark-up k's target
    masks = [m for markup in markups for m in tiles["masks"][markup]]
    n = len(tiles["images"])
    images = np.concatenate([tiles["images"]] * len(markups)) if len(markups) > 1 else tiles["images"]
    allowed = [k * n + i for k in range(len(markups)) for i in indices]
    classes = np.stack(
        [instances_to_classes(m, config.boundary_width, config.centre_fraction) for m in masks]
    )
    contacts = (
        np.stack([contact_zones(m, config.contact_radius) for m in masks]) if config.contact_weight else None
    )
    weights = None
    if config.mix_data:  # other nuclei data after the CryoNuSeg copies, drawn config.mix_share of the time
        from cryonuseg_hf.data.external import load_pretraining_tiles

        other = load_pretraining_tiles(
            config.mix_data,
            config.boundary_width,
            instances=contacts is not None,
            centre_fraction=config.centre_fraction,
        )
        extra = list(range(len(images), len(images) + len(other["names"])))
        images = np.concatenate([images, other["images"]])
        classes = np.concatenate([classes, other["classes"]])
        if contacts is not None:
            near = [contact_zones(m, config.contact_radius) for m in other["instances"]]
            contacts = np.concatenate([contacts, np.stack(near)])
        weights = np.array(
            [(1 - config.mix_share) / len(allowed)] * len(allowed)
            + [config.mix_share / len(extra)] * len(extra)
        )
        allowed = allowed + extra
    stream = 0 if fold is None else fold + 1
    models, records = [], []
    for k, state in enumerate(run_states(state_path, config.soup)):  # run k: seed + k, its own state
        member = replace(config, seed=config.seed + k, soup=1)
        model, record = fit_segformer(
            member, images, classes, allowed, stream, progress, state,
            name=f"fold {fold}" + (f" run {k + 1}/{config.soup}" if config.soup > 1 else ""), contacts=contacts,
            weights=weights,
        )  # fmt: skip
        models.append(model)
        records.append(record)
    if config.soup > 1:
        model = average_weights(models)
        record = {
            **records[0],
            "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
            "soup_runs": [
                {k: r[k] for k in ("train_seconds", "loss_last_25", "skipped_steps")} for r in records
            ],
        }
    record = {"fold": fold, "train_tiles": [TILE_IDS[i] for i in indices], **record}
    return model, record


def run_states(state_path: str | Path | None, runs: int) -> list[Path | None]:
    """The resumable state file of each fine-tuning run of a model: ``state_path`` itself for a single run,
    ``<name>.run<k>.state.pt`` beside it for the runs of a soup (None throughout without a state path)."""
    if state_path is None:
        return [None] * runs
    path = Path(state_path)
    if runs == 1:
        return [path]
    stem = path.name.removesuffix(".state.pt")
    return [path.with_name(f"{stem}.run{k}.state.pt") for k in range(runs)]


def average_weights(models: list) -> Any:
    """The first model holding the mean of all the models' floating-point weights and buffers (integer buffers,
    such as batch-norm counters, stay the first model's)."""
    import torch

    states = [m.state_dict() for m in models]
    mean = {
        name: torch.stack([s[name].float() for s in states]).mean(0).to(value.dtype)
        if value.is_floating_point()
        else value
        for name, value in states[0].items()
    }
    models[0].load_state_dict(mean)
    return models[0]


def tune_postprocess(predictor, tiles: dict[str, Any], indices: list[int], config: TrainConfig):
    """Post-processing parameters tuned on the given training tiles, predicted by ``predictor`` without TTA,
    against the mark-ups the model was trained on (the mean objective over them)."""
    from cryonuseg_hf.model.postprocess import tune_params

    probabilities = [predictor.probabilities(tiles["images"][i], tta=False) for i in indices]
    references = [[tiles["masks"][m][i] for m in training_markups(config)] for i in indices]
    best, records = tune_params(probabilities, references, workers=config.workers)
    return best, max(r["objective"] for r in records)


def save_tuned(model, config: TrainConfig, tiles: dict[str, Any], indices: list[int], checkpoint: Path):
    """Save ``model`` as a checkpoint, tune its post-processing on ``indices`` through the saved checkpoint (as a
    user loads it), store the parameters in it. Returns ``(params, objective, tuning indices)``."""
    from cryonuseg_hf.model.predict import open_predictor
    from cryonuseg_hf.model.segformer import save_checkpoint

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
    held-out tiles are predicted from that checkpoint by :func:`cryonuseg_hf.model.predict.predict_instances`, the
    function users call, with the same padding and TTA: the CV scores the code that users run.
    """
    from PIL import Image

    from cryonuseg_hf.model.predict import open_predictor, predict_instances

    state = out_dir / "models" / f"fold_{fold}.state.pt"
    model, record = train_model(config, tiles, fold, state_path=state)
    if not main_process():  # under `accelerate launch` the other processes train with the main one, no more
        return record
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
    for path in run_states(state, config.soup):
        path.unlink(missing_ok=True)
    return record


def fold_done(config: TrainConfig, out_dir: Path, fold: int) -> dict[str, Any] | None:
    """The record of ``fold`` if ``out_dir`` holds it, made with ``config``, with all 3 predictions; else None."""
    path = out_dir / "folds" / f"fold_{fold}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    predictions = [out_dir / "predictions" / f"{t}.png" for t in tiles_of_fold(fold)]
    same = recipe(record.get("config", {})) == recipe(json.loads(json.dumps(asdict(config))))
    if not same or not all(p.is_file() for p in predictions):
        return None
    return record


def train_final(config: TrainConfig, tiles: dict[str, Any], checkpoint: Path, state: Path) -> dict[str, Any]:
    """The all-data model, post-processing tuned on its training tiles, saved as an fp16 checkpoint."""
    model, record = train_model(config, tiles, None, state_path=state)
    if not main_process():  # under `accelerate launch` the other processes train with the main one, no more
        return record
    params, objective, _ = save_tuned(model, config, tiles, training_indices(None), checkpoint)
    for path in run_states(state, config.soup):
        path.unlink(missing_ok=True)
    record.update(
        postprocess=params.to_dict(), tuning_objective_train=round(objective, 4), checkpoint=str(checkpoint)
    )
    return record


def run_record(config: TrainConfig, command: str, scale_note: str = "") -> dict[str, Any]:
    """What every fold and final record carries about the run: command, machine, recipe, versions."""
    import torch
    import transformers

    return {
        "command": command,
        "machine": machine_description(resolve_device(config.device)),
        "config": asdict(config),
        "scale_note": scale_note,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def pretrain(
    config: TrainConfig,
    folders: Sequence[str | Path],
    out: str | Path,
    command: str,
    state: str | Path | None = None,
    resize: Sequence[float] | str | None = None,
    cryonuseg: str | Path | None = None,
) -> dict[str, Any]:
    """One start point from other nuclei data (:mod:`cryonuseg_hf.data.external`), saved as a checkpoint in ``out``
    with its record (``pretrain.json``). Returns the record.

    Args:
        resize: one linear factor per folder; ``"auto"`` measures each folder's factor so that its median
            nucleus area matches CryoNuSeg's (all nuclei of the three mark-ups of ``cryonuseg``); None: all 1.
        cryonuseg: the CryoNuSeg data ``"auto"`` measures against (as :func:`load_tiles` reads it).

    Resumable: the training state is saved every ``save_every`` seconds (default ``<out>.state.pt``), and the
    same call made again continues from it; the state file is removed once the checkpoint is written.
    """
    import torch
    import transformers

    from cryonuseg_hf.data.external import load_pretraining_tiles, median_nucleus_area
    from cryonuseg_hf.model.segformer import save_checkpoint

    if config.contact_weight:
        raise ValueError("--contact-weight applies to fine-tuning on CryoNuSeg (train), not to pretrain")
    if config.all_markups:
        raise ValueError("--all-markups applies to fine-tuning on CryoNuSeg (train), not to pretrain")
    if config.soup > 1:
        raise ValueError("--soup applies to fine-tuning on CryoNuSeg (train), not to pretrain")
    if config.mix_data:
        raise ValueError("--mix-data applies to fine-tuning on CryoNuSeg (train); pretrain reads --data")
    out = Path(out)
    state = Path(state) if state else out.with_name(out.name + ".state.pt")
    target = None
    if resize == "auto":
        masks = load_tiles(cryonuseg)["masks"]
        target, resize = median_nucleus_area(m for stack in masks.values() for m in stack), None
    data = load_pretraining_tiles(
        folders,
        config.boundary_width,
        resize=resize,
        match_area=target,
        centre_fraction=config.centre_fraction,
    )
    if target is not None:
        logger.info(
            "resize factors matching CryoNuSeg's median nucleus (%.0f px): %s",
            target,
            [s["resize"] for s in data["sources"]],
        )
    indices = list(range(len(data["names"])))
    model, record = fit_segformer(
        config, data["images"], data["classes"], indices, stream=100, state_path=state, name="pretrain"
    )
    record.update(
        command=command,
        machine=machine_description(resolve_device(config.device)),
        config=asdict(config),
        sources=data["sources"],
        windows=len(indices),
        window=int(data["images"].shape[1]),
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )
    if target is not None:
        record["resize_rule"] = {
            "rule": "each folder's median nucleus area matched to CryoNuSeg's (three mark-ups pooled)",
            "cryonuseg_median_nucleus_px": target,
        }
    if main_process():  # under `accelerate launch` the other processes train with the main one, no more
        model.config.cryonuseg_train_config = asdict(config)
        save_checkpoint(model, out)
        (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
        state.unlink(missing_ok=True)
    return record


def check_folds(folds: Sequence[int]) -> None:
    """Raise ValueError naming the first fold number that is not 0..9 (one fold per organ)."""
    wrong = [k for k in folds if not 0 <= k < N_FOLDS]
    if wrong:
        raise ValueError(f"--fold {wrong[0]}: expected a fold 0..{N_FOLDS - 1} (one per organ)")


def fit(
    config: TrainConfig,
    dataset: dict[str, Any] | None = None,
    *,
    out: str | Path,
    folds: Sequence[int] = (),
    final_checkpoint: str | Path | None = None,
    run: dict[str, Any] | None = None,
) -> list[str]:
    """Train the given folds (each predicts its held-out tiles into ``out``) and/or the final model.

    Args:
        config: the recipe.
        dataset: the tiles (:func:`cryonuseg_hf.training.data.load_tiles`); None loads the project's ``datasets``
            build of the default raw release.
        out: the CV folder (``folds/``, ``predictions/``, ``models/``, ``final.json``).
        folds: folds to train; one already done in ``out`` with this recipe is kept (a restarted run continues).
        final_checkpoint: where to save the model trained on all 30 tiles; None trains none.
        run: :func:`run_record` of this run, stored in every record.

    Returns:
        One summary line per model.
    """
    from cryonuseg_hf.training.data import load_tiles

    check_folds(folds)
    tiles = load_tiles() if dataset is None else dataset
    run = run if run is not None else run_record(config, "cryonuseg_hf.training.cv.fit")
    out, lines = Path(out), []
    for fold in folds:
        if fold_done(config, out, fold) is not None:  # a restarted command continues where it stopped
            lines.append(f"fold {fold}: already done in {out} with this recipe; kept")
            continue
        record = fit_fold(config, tiles, fold, out)
        record.update(run)
        if main_process():
            (out / "folds" / f"fold_{fold}.json").write_text(json.dumps(record, indent=2) + "\n")
        lines.append(
            f"fold {fold}: {record['steps']} steps in {record['train_seconds']} s, "
            f"loss {record['loss_first_25']:.3f} -> {record['loss_last_25']:.3f}"
        )
    if final_checkpoint is not None:
        state = out / "models" / "final.state.pt"
        record = {**train_final(config, tiles, Path(final_checkpoint), state), **run}
        if main_process():
            out.mkdir(parents=True, exist_ok=True)
            (out / "final.json").write_text(json.dumps(record, indent=2) + "\n")
        lines.append(
            f"final model: {record['steps']} steps in {record['train_seconds']} s -> {final_checkpoint}"
        )
    return lines
