"""Human agreement on CryoNuSeg: the three mark-ups scored against each other, the yardstick for any model.

The one place it is computed. Two comparisons, on all 30 tiles, with the released ``label masks modify`` instance
masks of each mark-up (:func:`human_agreement`, written by ``cryonuseg-hf agreement``):

- ``intra_observer``: Annotator 1's second round as reference, their first round as prediction;
- ``inter_observer``: Annotator 1's second round as reference, Annotator 2 as prediction.

Annotator 1 round 2 is the reference in both because that orientation reproduces the numbers of the CryoNuSeg
paper (Mahbod et al., 2021): AJI 0.605 / PQ 0.570 intra-observer and 0.525 / 0.493 inter-observer, means over
tiles. The orientation matters for AJI only (AJI pairs each *reference* nucleus with a prediction; Dice, AJI+ and
PQ are symmetric); :func:`orientations` scores every ordered pair of mark-ups to show it.

Beside a model's scores (``cryonuseg-hf score``, and so the CV's report) the agreement is taken on exactly the
tiles the model was scored on: :func:`markup_pairs` scores every other mark-up against each reference, and
:func:`observer_comparisons` picks the two comparisons above out of such a table.
The report files (``human_agreement.json``, ``.md``, ``_per_tile.csv``) are written by
:func:`cryonuseg_hf.reports.agreement.write_agreement`.

>>> from cryonuseg_hf.data.release import open_release, default_source
>>> agreement = human_agreement(open_release(default_source()))  # doctest: +SKIP
>>> round(agreement["inter_observer"]["mean"]["aji"], 3)  # doctest: +SKIP
0.525
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.folds import fold_of, organ_of
from cryonuseg_hf.core.tiles import TILE_SHAPE
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
    try:
        files = release.markups[markup].variants[VARIANT]
    except KeyError:
        raise ValueError(
            f"{release.root}: mark-up {markup!r} has no '{VARIANT}' masks in this release"
        ) from None
    return {tile: _read_mask(Path(files[tile])) for tile in release.tile_ids}


def _read_mask(path: Path) -> np.ndarray:
    """One released mask; its header is checked against the tile before any pixel is decoded (a damaged file may
    claim a huge image)."""
    import tifffile

    way_out = "replace it with a good copy of the release and run `cryonuseg-hf check`"
    try:
        with tifffile.TiffFile(path) as tiff:
            shape = tuple(tiff.series[0].shape)
            mask = tiff.asarray() if shape == TILE_SHAPE else None
    except OSError as error:
        raise OSError(f"{path}: cannot be read ({error.strerror or error}); {way_out}") from None
    except Exception as error:  # tifffile raises many types for damaged files
        raise ValueError(
            f"{path}: not a readable TIFF mask ({type(error).__name__}: {error}); {way_out}"
        ) from None
    if mask is None:
        raise ValueError(
            f"{path}: a mask of shape {shape}, but a tile's mask is {TILE_SHAPE[0]}x{TILE_SHAPE[1]}; {way_out}"
        )
    return mask


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


def observer_relation(reference: str, other: str) -> str:
    """``intra-observer`` for two rounds of one annotator, else ``inter-observer``.

    >>> observer_relation("annotator1_round2", "annotator1_round1"), observer_relation("annotator2", "annotator1_round1")
    ('intra-observer', 'inter-observer')
    """
    return "intra-observer" if reference.split("_")[0] == other.split("_")[0] else "inter-observer"


def markup_pairs(
    masks: Mapping[str, Mapping[str, np.ndarray]], references: Sequence[str], tiles: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every other mark-up of ``masks`` scored as a prediction against each reference mark-up, on ``tiles``.

    Args:
        masks: mark-up -> tile id -> instance labels.
        references: the reference mark-ups.
        tiles: the tiles to compare on.

    Returns:
        reference -> other mark-up -> ``relation`` (:func:`observer_relation`) and the result of
        :func:`compare_markups`.
    """
    pairs: dict[str, dict[str, dict[str, Any]]] = {}
    for reference in references:
        pairs[reference] = {}
        for other in masks:
            if other == reference:
                continue
            result = compare_markups(
                {t: masks[reference][t] for t in tiles}, {t: masks[other][t] for t in tiles}
            )
            pairs[reference][other] = {"relation": observer_relation(reference, other), **result}
    return pairs


def observer_comparisons(pairs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The intra- and inter-observer comparisons (:data:`COMPARISONS`) out of mark-ups scored against each other.

    Args:
        pairs: reference -> other mark-up -> its scores, as :func:`markup_pairs` returns them or as the ``human``
            of a ``cryonuseg-hf score`` report holds them.

    Returns:
        comparison name -> ``reference``, ``prediction`` and the scores of that pair.

    Raises:
        ValueError: a comparison's pair is missing (not every mark-up was loaded).
    """
    missing = [f"{p} vs {r}" for r, p in COMPARISONS.values() if p not in pairs.get(r, {})]
    if missing:
        raise ValueError(
            f"the human agreement needs every mark-up: no scores of {', '.join(missing)}; load all three"
        )
    return {
        name: {"reference": reference, "prediction": prediction, **pairs[reference][prediction]}
        for name, (reference, prediction) in COMPARISONS.items()
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
