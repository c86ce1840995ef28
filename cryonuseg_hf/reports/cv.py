"""The cross-validation's report: the ``score`` report of the held-out predictions in a CV folder, with the run's
record added: ``metrics.json``, ``metrics.md`` and ``metrics_per_tile.csv``.

The predictions (``<cv>/predictions/<tile_id>.png``) are read and scored exactly as ``cryonuseg-hf score`` reads
and scores any tool's predictions (:func:`cryonuseg_hf.evaluation.score.score_folder`), against every mark-up the
run loaded, with the human agreement on the same tiles beside; :func:`cryonuseg_hf.reports.score.write_report`
writes it, with the run's command, machine, recipe and per-fold training records in the JSON and a word on them
in the Markdown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.folds import ORGANS, fold_of
from cryonuseg_hf.core.markdown import table
from cryonuseg_hf.evaluation.score import score_folder
from cryonuseg_hf.reports.score import write_report
from cryonuseg_hf.training.config import ground_truth

STEM = "metrics"
"""The report's files in the CV folder: ``metrics.json``, ``metrics.md``, ``metrics_per_tile.csv``."""
NAME = "SegFormer CV"
"""What the report calls the predictions."""


def score_cv(out_dir: Path, tiles: Mapping[str, Any]) -> dict[str, Any]:
    """The ``score`` report of the held-out predictions in ``out_dir/predictions`` against every mark-up of
    ``tiles`` (:func:`cryonuseg_hf.training.data.load_tiles`), with the human agreement beside.

    Raises:
        FileNotFoundError, ValueError: no predictions folder, or no prediction in it.
    """
    masks = {m: dict(zip(tiles["tile_ids"], stack, strict=True)) for m, stack in tiles["masks"].items()}
    return score_folder(out_dir / "predictions", pattern="*.png", cv_metrics=None, name=NAME, masks=masks)


def fold_records(out_dir: Path, folds: list[int]) -> dict[int, dict[str, Any]]:
    """fold -> its training record (``folds/fold_K.json``; empty where missing)."""
    records = {}
    for k in folds:
        path = out_dir / "folds" / f"fold_{k}.json"
        records[k] = json.loads(path.read_text()) if path.is_file() else {}
    return records


def cv_preface(record: Mapping[str, Any]) -> list[str]:
    """Markdown put before the scores: what the predictions are, the scale of the run and its recipe."""
    config = record["config"]
    trained_on = "one of the three trained on" if config.get("all_markups") else "the training ground truth"
    lines = [
        f"Leave-one-organ-out cross-validation on {record['machine']}: {record['n_tiles']} of 30 tiles have a "
        "held-out prediction (`predictions/<tile_id>.png`, 16-bit instance labels), each made by the model of the "
        f"fold that held the tile's organ out. Scored against each mark-up; {config['markup']} is {trained_on}.",
        "",
        *([f"**Scale of this run: {record['scale_note']}**", ""] if record.get("scale_note") else []),
        f"Config: SegFormer-{config['variant']}, input scale {config['input_scale']}, {config['steps']} steps of "
        f"{config['batch_size']} crops of {config['crop']} px, lr {config['lr']}, seed {config['seed']}, "
        f"init {config['init'] or 'none (from scratch)'}, TTA {'8 flips/rotations' if config['tta'] else 'off'}, "
        f"ground truth {ground_truth(config)}; post-processing tuned on {config['tune_tiles'] or 'all'} training "
        "tiles per fold.",
    ]
    return lines


def cv_appendix(record: Mapping[str, Any]) -> list[str]:
    """Markdown put after the scores: each fold's training, the seeds, where every value is."""
    rows = []
    for k, fold in sorted(record["folds"].items(), key=lambda item: int(item[0])):
        rows.append(
            [str(k), ORGANS[int(k)]]
            + [str(fold.get(f, "")) for f in ("steps", "train_seconds", "tune_predict_seconds")]
        )
    seed = record["config"]["seed"]
    return [
        "## Training per fold",
        "",
        *table(["fold", "organ", "steps", "train s", "tune + predict s"], rows),
        "",
        f"Seeds: numpy `default_rng([{seed}, fold + 1])` for crops, torch `{seed} * 1000 + fold + 1` for "
        f"augmentation, torch `manual_seed` {seed} for the weights. Every value: `{STEM}.json`; per tile, "
        f"mark-up and what sits beside: `{STEM}_per_tile.csv`.",
    ]


def write_cv_results(out_dir: Path, tiles: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Score every held-out prediction in ``out_dir`` and write the CV report there (replacing an earlier one).

    Args:
        out_dir: the CV folder (``predictions/``, ``folds/``).
        tiles: the tiles and mark-ups the run loaded (:func:`cryonuseg_hf.training.data.load_tiles`).
        run: :func:`cryonuseg_hf.training.cv.run_record` of the run (``command``, ``machine``, ``config``...).

    Returns:
        The report's JSON content: the run's record, ``n_tiles``, ``folds`` and the score report.
    """
    out_dir = Path(out_dir)
    report = score_cv(out_dir, tiles)
    folds = sorted({fold_of(t) for t in report["tiles"]})
    record = {k: v for k, v in run.items() if k != "command"}
    record.update(n_tiles=len(report["tiles"]), folds=fold_records(out_dir, folds))
    write_report(
        report,
        out_dir,
        STEM,
        command=run["command"],
        overwrite=True,
        record=record,
        preface=cv_preface(record),
        appendix=cv_appendix(record),
    )
    return {"command": run["command"], **record, **report}
