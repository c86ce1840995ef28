"""Human agreement on CryoNuSeg: the three mark-ups scored against each other, the yardstick for any model.

Two comparisons, on all 30 tiles, with the released ``label masks modify`` instance masks of each mark-up:

- ``intra_observer``: Annotator 1's second round as reference, their first round as prediction;
- ``inter_observer``: Annotator 1's second round as reference, Annotator 2 as prediction.

Annotator 1 round 2 is the reference in both because that orientation reproduces the numbers of the CryoNuSeg
paper (Mahbod et al., 2021): AJI 0.605 / PQ 0.570 intra-observer and 0.525 / 0.493 inter-observer, means over
tiles. The orientation matters for AJI only (AJI pairs each *reference* nucleus with a prediction; Dice, AJI+ and
PQ are symmetric); :func:`orientations` scores every ordered pair of mark-ups to show it.
The report files (``human_agreement.json``, ``.md``, ``_per_tile.csv``) are written by
:func:`cryonuseg_hf.reports.agreement.write_agreement`.

>>> from cryonuseg_hf.data.release import open_release, default_source
>>> agreement = human_agreement(open_release(default_source()))  # doctest: +SKIP
>>> round(agreement["inter_observer"]["mean"]["aji"], 3)  # doctest: +SKIP
0.525
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cryonuseg_hf.core.folds import fold_of, organ_of
from cryonuseg_hf.evaluation.metrics import COUNTS, METRICS, score

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


def compare_markups(reference: dict[str, np.ndarray], prediction: dict[str, np.ndarray]) -> dict[str, Any]:
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
        release: a :class:`cryonuseg_hf.data.release.Release` (``open_release(source)``).

    Returns:
        comparison name (``intra_observer``, ``inter_observer``) -> ``reference`` and ``prediction`` (mark-up
        names) and the result of :func:`compare_markups`: ``mean``, ``pooled``, ``per_organ``, ``per_tile``. Each metric
        dict has the keys of :data:`cryonuseg_hf.evaluation.metrics.METRICS`.
    """
    markups = {m: read_markup(release, m) for m in sorted({m for pair in COMPARISONS.values() for m in pair})}
    agreement = {}
    for name, (reference, prediction) in COMPARISONS.items():
        logger.info("scoring %s: %s (prediction) against %s (reference)", name, prediction, reference)
        agreement[name] = {
            "reference": reference,
            "prediction": prediction,
            **compare_markups(markups[reference], markups[prediction]),
        }
    return agreement


def orientations(release, markups: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Every ordered pair of mark-ups: reference, prediction and the mean metrics (shows which orientation the
    paper used)."""
    from cryonuseg_hf.data.release import MARKUPS

    masks = {m: read_markup(release, m) for m in markups or MARKUPS}
    rows = []
    for reference in masks:
        for prediction in masks:
            if reference != prediction:
                result = compare_markups(masks[reference], masks[prediction])
                rows.append({"reference": reference, "prediction": prediction, **result["mean"]})
    return rows
