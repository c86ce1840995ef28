"""Human agreement on CryoNuSeg: the three mark-ups scored against each other, the yardstick for any model.

Two comparisons, on all 30 tiles, with the released ``label masks modify`` instance masks of each mark-up:

- ``intra_observer``: Annotator 1's second round as reference, their first round as prediction;
- ``inter_observer``: Annotator 1's second round as reference, Annotator 2 as prediction.

Annotator 1 round 2 is the reference in both because that orientation reproduces the numbers of the CryoNuSeg
paper (Mahbod et al., 2021): AJI 0.605 / PQ 0.570 intra-observer and 0.525 / 0.493 inter-observer, means over
tiles. The orientation matters for AJI only (AJI pairs each *reference* nucleus with a prediction; Dice, AJI+ and
PQ are symmetric); :func:`orientations` scores every ordered pair of mark-ups to show it.

>>> from cryonuseg_hf.release import open_release, default_source
>>> agreement = human_agreement(open_release(default_source()))  # doctest: +SKIP
>>> round(agreement["inter_observer"]["mean"]["aji"], 3)  # doctest: +SKIP
0.525
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.folds import fold_of, organ_of
from cryonuseg_hf.metrics import COUNTS, METRICS, score

logger = logging.getLogger(__name__)

VARIANT = "label_masks_modify"
"""The released mask each mark-up is read from."""

COMPARISONS: dict[str, tuple[str, str]] = {
    "intra_observer": ("annotator1_round2", "annotator1_round1"),
    "inter_observer": ("annotator1_round2", "annotator2"),
}
"""comparison name -> (reference mark-up, predicted mark-up)."""

PAPER: dict[str, dict[str, float]] = {
    "intra_observer": {"aji": 0.605, "pq": 0.570},
    "inter_observer": {"aji": 0.525, "pq": 0.493},
}
"""The values quoted for the CryoNuSeg paper (Mahbod et al., 2021), mean over the 30 tiles."""


def read_markup(release, markup: str) -> dict[str, np.ndarray]:
    """tile id -> the released ``label masks modify`` instance mask of ``markup`` (uint16, 0 = background)."""
    import tifffile

    try:
        files = release.markups[markup].variants[VARIANT]
    except KeyError:
        raise ValueError(
            f"{release.root}: mark-up {markup!r} has no '{VARIANT}' masks in this release"
        ) from None
    masks = {}
    for tile in release.tile_ids:
        mask = tifffile.imread(files[tile])
        if mask.ndim != 2:
            raise ValueError(f"{files[tile]}: expected a 2-D instance mask, got shape {mask.shape}")
        masks[tile] = mask
    return masks


def _metrics(summary: dict[str, Any], suffix: str = "") -> dict[str, float]:
    return {m: float(summary[f"{m}{suffix}"]) for m in METRICS}


def compare(reference: dict[str, np.ndarray], prediction: dict[str, np.ndarray]) -> dict[str, Any]:
    """One mark-up against another, tile by tile.

    Args:
        reference: tile id -> reference label image.
        prediction: tile id -> predicted label image (the same tiles).

    Returns:
        ``mean`` (metric -> mean over tiles), ``pooled`` (metric -> from counts summed over tiles), ``per_organ``
        (organ -> metric -> mean over its tiles) and ``per_tile`` (tile id -> metrics and counts).
    """
    tiles = list(reference)
    result = score(
        [prediction[t] for t in tiles],
        [reference[t] for t in tiles],
        organs=[organ_of(t) for t in tiles],
        folds=[fold_of(t) for t in tiles],
        tile_ids=tiles,
    )
    return {
        "mean": _metrics(result),
        "pooled": _metrics(result, "_pooled"),
        "per_organ": {organ: _metrics(summary) for organ, summary in result["per_organ"].items()},
        "per_tile": {
            row["tile_id"]: {"organ": row["organ"], **{k: row[k] for k in (*METRICS, *COUNTS)}}
            for row in result["per_tile"]
        },
    }


def human_agreement(release) -> dict[str, dict[str, Any]]:
    """Intra- and inter-observer agreement on all tiles of a release.

    Args:
        release: a :class:`cryonuseg_hf.release.Release` (``open_release(source)``).

    Returns:
        comparison name (``intra_observer``, ``inter_observer``) -> ``reference`` and ``prediction`` (mark-up
        names) and the result of :func:`compare`: ``mean``, ``pooled``, ``per_organ``, ``per_tile``. Each metric
        dict has the keys of :data:`cryonuseg_hf.metrics.METRICS`.
    """
    markups = {m: read_markup(release, m) for m in sorted({m for pair in COMPARISONS.values() for m in pair})}
    agreement = {}
    for name, (reference, prediction) in COMPARISONS.items():
        logger.info("scoring %s: %s (prediction) against %s (reference)", name, prediction, reference)
        agreement[name] = {
            "reference": reference,
            "prediction": prediction,
            **compare(markups[reference], markups[prediction]),
        }
    return agreement


def orientations(release, markups: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Every ordered pair of mark-ups: reference, prediction and the mean metrics (shows which orientation the
    paper used)."""
    from cryonuseg_hf.release import MARKUPS

    masks = {m: read_markup(release, m) for m in markups or MARKUPS}
    rows = []
    for reference in masks:
        for prediction in masks:
            if reference != prediction:
                result = compare(masks[reference], masks[prediction])
                rows.append({"reference": reference, "prediction": prediction, **result["mean"]})
    return rows


_LABELS = {
    "dice": "Dice",
    "aji": "AJI",
    "aji_plus": "AJI+",
    "pq": "PQ",
    "dq": "DQ",
    "sq": "SQ",
    "precision": "precision",
    "recall": "recall",
}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def agreement_markdown(
    agreement: dict[str, dict[str, Any]], orientation_rows: list[dict[str, Any]], machine: str
) -> str:
    """The human agreement report as Markdown."""
    names = list(agreement)
    lines = [
        "# Human agreement on CryoNuSeg",
        "",
        "Produced by `cryonuseg-hf agreement` (`cryonuseg_hf/agreement.py`, metrics from `cryonuseg_hf/metrics.py`)"
        f" on {machine}. Each mark-up's released `label masks modify` masks, all 30 tiles; every value is the mean"
        " over tiles of the per-tile value unless marked pooled (counts summed over the 30 tiles first).",
        "",
        "- **intra-observer**: Annotator 1 round 2 (reference) vs Annotator 1 round 1 (prediction);",
        "- **inter-observer**: Annotator 1 round 2 (reference) vs Annotator 2 (prediction).",
        "",
        "## Overall (mean over the 30 tiles)",
        "",
    ]
    header = ["comparison", *(_LABELS[m] for m in METRICS)]
    rows = []
    for name in names:
        rows.append([name.replace("_", "-"), *(f"{agreement[name]['mean'][m]:.4f}" for m in METRICS)])
        rows.append(
            [f"{name.replace('_', '-')} (pooled)", *(f"{agreement[name]['pooled'][m]:.4f}" for m in METRICS)]
        )
    lines += _table(header, rows)
    lines += [
        "",
        "Values quoted for the CryoNuSeg paper (Mahbod et al., 2021) and what this command gets:",
        "",
    ]
    paper_rows = [
        [name.replace("_", "-"), f"{PAPER[name]['aji']:.3f}", f"{agreement[name]['mean']['aji']:.4f}",
         f"{PAPER[name]['pq']:.3f}", f"{agreement[name]['mean']['pq']:.4f}"]
        for name in names if name in PAPER
    ]  # fmt: skip
    lines += _table(["comparison", "AJI (paper)", "AJI (here)", "PQ (paper)", "PQ (here)"], paper_rows)
    reproduced = all(
        abs(agreement[n]["mean"][m] - PAPER[n][m]) < 0.0005 for n in names if n in PAPER for m in PAPER[n]
    )
    verdict = (
        "Both reproduce to the third decimal with Annotator 1 round 2 as the reference."
        if reproduced
        else "These do NOT all reproduce to the third decimal; see the orientations below."
    )
    lines += [
        "",
        f"{verdict} The orientation changes AJI only (AJI pairs each reference nucleus with its best prediction;"
        " Dice, AJI+ and PQ are symmetric):",
        "",
    ]
    lines += _table(
        ["reference", "prediction", "Dice", "AJI", "AJI+", "PQ"],
        [
            [r["reference"], r["prediction"], *(f"{r[m]:.4f}" for m in ("dice", "aji", "aji_plus", "pq"))]
            for r in orientation_rows
        ],
    )
    lines += ["", "## Per organ (mean over the organ's 3 tiles)", ""]
    shown = ("dice", "aji", "aji_plus", "pq")
    header = ["organ", *(f"{_LABELS[m]} {name.split('_')[0]}" for name in names for m in shown)]
    organs = list(agreement[names[0]]["per_organ"])
    lines += _table(
        header,
        [[o, *(f"{agreement[n]['per_organ'][o][m]:.4f}" for n in names for m in shown)] for o in organs],
    )
    lines += [
        "",
        "Per-tile values with the counts behind them: `human_agreement_per_tile.csv`, `human_agreement.json`.",
        "",
    ]
    return "\n".join(lines)


def machine_description() -> str:
    """The CPU model (from ``lscpu``), the cores this process may use, and no GPU: where results were made."""
    import os
    import platform
    import subprocess

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model or platform.processor() or 'unknown CPU'}, {cores} cores, no GPU"


def write_agreement(release, out_dir: Path | str) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """Compute the agreement and write ``human_agreement.json``, ``.md`` and ``human_agreement_per_tile.csv``.

    Returns:
        the result of :func:`human_agreement`, and ``json``/``md``/``csv`` -> the path written.
    """
    machine = machine_description()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agreement = human_agreement(release)
    orientation_rows = orientations(release)
    paths = {
        "json": out_dir / "human_agreement.json",
        "md": out_dir / "human_agreement.md",
        "csv": out_dir / "human_agreement_per_tile.csv",
    }
    document = {
        "command": "cryonuseg-hf agreement",
        "machine": machine,
        "masks": f"released '{VARIANT.replace('_', ' ')}' of each mark-up, 30 tiles",
        "summary": "mean over tiles of per-tile values ('pooled': counts summed over tiles first)",
        "paper": PAPER,
        **agreement,
        "orientations": orientation_rows,
    }
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    paths["md"].write_text(agreement_markdown(agreement, orientation_rows, machine))
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["comparison", "reference", "prediction", "tile_id", "organ", *METRICS, *COUNTS])
        for name, result in agreement.items():
            for tile, row in result["per_tile"].items():
                writer.writerow(
                    [name, result["reference"], result["prediction"], tile, row["organ"]]
                    + [row[k] for k in (*METRICS, *COUNTS)]
                )
    return agreement, paths
