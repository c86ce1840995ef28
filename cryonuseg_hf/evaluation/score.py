"""Score any tool's nuclei on CryoNuSeg, with the SegFormer CV and the human agreement beside.

:func:`score_folder` reads a folder of predictions (one file per tile, any format of
:mod:`cryonuseg_hf.evaluation.predictions`), scores them with :func:`cryonuseg_hf.evaluation.metrics.score` against
the released ``label masks modify`` of each mark-up, and puts beside them, on exactly the same tiles, the
SegFormer's leave-one-organ-out CV (``results/cv/metrics.json``) and the human agreement: every other mark-up
scored as a prediction against the same reference (:func:`cryonuseg_hf.evaluation.agreement.markup_pairs`; with
Annotator 1 round 2 as the reference these are the intra- and inter-observer rows of
``results/human_agreement.json``).

It returns the report as a dict; :func:`cryonuseg_hf.reports.score.write_report` writes it (``score.json``,
``score.md``, ``score_per_tile.csv``). The CV's own report is this report of its held-out predictions
(:mod:`cryonuseg_hf.reports.cv`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.folds import ORGANS, TILE_IDS, fold_of, organ_of
from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.evaluation.agreement import markup_pairs
from cryonuseg_hf.evaluation.metrics import COUNTS, METRICS, score
from cryonuseg_hf.evaluation.predictions import FORMATS, match_files, read_predictions

logger = logging.getLogger(__name__)

CV_METRICS = Path("results/cv/metrics.json")
"""Where the SegFormer CV scores live in a checkout (``cryonuseg-hf train --cv``)."""


def summarise_tiles(per_tile: Mapping[str, Mapping[str, Any]], tiles: Sequence[str]) -> dict[str, Any]:
    """Means over ``tiles`` of per-tile metrics, overall, per organ and per fold (fold k = organ k).

    Returns:
        ``mean`` (metric -> value), ``per_organ`` and ``per_fold`` (group -> metric -> value, plus ``n_tiles``),
        ``per_tile`` (tile -> metrics and counts, for ``tiles`` only).
    """
    rows = {t: per_tile[t] for t in tiles}

    def means(group: Sequence[str]) -> dict[str, float]:
        values = {m: float(np.mean([rows[t][m] for t in group])) for m in METRICS}
        values["n_tiles"] = len(group)
        for count in ("n_true", "n_pred"):
            if all(count in rows[t] for t in group):
                values[count] = int(sum(rows[t][count] for t in group))
        return values

    organs = [o for o in ORGANS if any(organ_of(t) == o for t in tiles)]
    return {
        "mean": means(list(tiles)),
        "per_organ": {o: means([t for t in tiles if organ_of(t) == o]) for o in organs},
        "per_fold": {ORGANS.index(o): means([t for t in tiles if organ_of(t) == o]) for o in organs},
        "per_tile": {t: {k: rows[t][k] for k in (*METRICS, *COUNTS) if k in rows[t]} for t in tiles},
    }


def human_beside(
    masks: Mapping[str, Mapping[str, np.ndarray]], references: Sequence[str], tiles: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """For each reference mark-up: every other loaded mark-up scored as a prediction against it, on ``tiles``
    (:func:`cryonuseg_hf.evaluation.agreement.markup_pairs`), as ``relation`` and a :func:`summarise_tiles`."""
    return {
        reference: {
            other: {"relation": pair["relation"]} | summarise_tiles(pair["per_tile"], tiles)
            for other, pair in others.items()
        }
        for reference, others in markup_pairs(masks, references, tiles).items()
    }


def cv_beside(
    path: str | Path | None, references: Sequence[str], tiles: Sequence[str]
) -> dict[str, Any] | None:
    """The SegFormer CV scores (``results/cv/metrics.json``) on ``tiles``, per reference; None where the file or
    a tile is missing (logged)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        logger.warning("%s: no SegFormer CV results; the report leaves them out", path)
        return None
    cv = _read_cv(path)
    beside: dict[str, Any] = {"path": str(path), "command": cv.get("command")}
    for reference in references:
        rows = _cv_rows(path, cv["scores"].get(reference) or {})
        lacking = [t for t in tiles if t not in rows]
        if lacking:
            logger.warning("%s: no CV score vs %s for %s; left out", path, reference, ", ".join(lacking[:3]))
            continue
        beside[reference] = summarise_tiles(rows, tiles)
    return beside


_MAX_CV_BYTES = 64 * 2**20  # the CV's metrics.json is about 0.2 MB


def _read_cv(path: Path) -> dict[str, Any]:
    """A CV ``metrics.json``: its size checked before it is read, its layout after."""
    way_out = "pass --cv the metrics.json of `cryonuseg-hf train --cv`, or --cv '' to leave the CV out"
    if path.stat().st_size > _MAX_CV_BYTES:
        raise ValueError(
            f"{path}: {path.stat().st_size:,} bytes, not a CV metrics.json (about 0.2 MB); {way_out}"
        )
    try:
        cv = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error}); {way_out}") from None
    if not isinstance(cv, dict) or not isinstance(cv.get("scores"), dict):
        raise ValueError(f"{path}: not a CV metrics.json (no 'scores' per reference mark-up); {way_out}")
    return cv


def _cv_rows(path: Path, scores: Any) -> dict[str, Any]:
    """tile id -> the CV's row of metrics, from a ``scores`` entry of a CV ``metrics.json`` (rows as a mapping, or
    as the list that CV records written before the CV report was the score report hold)."""
    rows = scores.get("per_tile", {}) if isinstance(scores, dict) else None
    if isinstance(rows, list) and all(isinstance(row, dict) and "tile_id" in row for row in rows):
        rows = {row["tile_id"]: row for row in rows}
    if not isinstance(rows, dict) or not all(
        isinstance(row, dict) and all(isinstance(row.get(m), int | float) for m in METRICS)
        for row in rows.values()
    ):
        raise ValueError(
            f"{path}: its per-tile CV scores are not rows of {', '.join(METRICS)}; is it a CV metrics.json?"
        )
    return rows


def score_predictions(
    predictions: Mapping[str, np.ndarray],
    masks: Mapping[str, Mapping[str, np.ndarray]],
    references: Sequence[str],
) -> dict[str, Any]:
    """Predicted labels (tile id -> labels) against each reference mark-up: :func:`cryonuseg_hf.evaluation.metrics.score`'s
    result per reference (means, pooled values, ``per_tile`` as tile -> row, ``per_organ``, ``per_fold``)."""
    tiles = [t for t in TILE_IDS if t in predictions]
    scored = score(
        [predictions[t] for t in tiles],
        {r: [masks[r][t] for t in tiles] for r in references},
        organs=[organ_of(t) for t in tiles],
        folds=[fold_of(t) for t in tiles],
        tile_ids=tiles,
    )
    for result in scored.values():
        result["per_tile"] = {row["tile_id"]: row for row in result["per_tile"]}
    return scored


def score_folder(
    folder: str | Path,
    source: str | Path | None = None,
    references: Sequence[str] | None = None,
    pattern: str = "*",
    object_types: Iterable[str] | None = None,
    cv_metrics: str | Path | None = CV_METRICS,
    allow_extra: bool = False,
    name: str | None = None,
    masks: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Score a folder of predictions on CryoNuSeg, with the SegFormer CV and the human agreement beside.

    Args:
        folder: one prediction file per tile (see :func:`cryonuseg_hf.evaluation.predictions.match_files` and
            :data:`~cryonuseg_hf.evaluation.predictions.FORMATS`).
        source: the raw release (default: :func:`cryonuseg_hf.data.release.default_source`).
        references: mark-ups to score against (default: all three, or all of ``masks``).
        pattern: glob choosing the prediction files in ``folder``.
        object_types: GeoJSON only: QuPath object types to keep (None: all).
        cv_metrics: the SegFormer CV ``metrics.json`` to put beside (None or a missing file: left out).
        allow_extra: list files that name no tile instead of raising.
        name: what the report calls these predictions (default: the folder name).
        masks: the reference masks already in memory (mark-up -> tile id -> labels, e.g. those a training run
            loaded); the release is then not read, and the report's ``release`` is None.

    Returns:
        A JSON-ready report: ``name``, ``folder``, ``files`` (tile -> path), ``formats``, ``missing``, ``extra``,
        ``skipped``, ``tiles``, ``references``, ``scores`` (reference -> the metric's result),
        ``summary`` (reference -> :func:`summarise_tiles` of the predictions), ``segformer_cv`` and ``human``
        (reference -> other mark-up -> summary), all on the scored tiles; written by
        :func:`cryonuseg_hf.reports.score.write_report`.

    Raises:
        FileNotFoundError, ValueError: see :func:`~cryonuseg_hf.evaluation.predictions.match_files` and
            :func:`~cryonuseg_hf.evaluation.predictions.read_prediction`; an unknown mark-up.
    """
    from cryonuseg_hf.data.release import MARKUPS, default_source, open_release
    from cryonuseg_hf.evaluation.agreement import read_markup

    known = list(masks) if masks is not None else list(MARKUPS)
    references = list(references or known)
    unknown = [r for r in references if r not in known]
    if unknown:
        raise ValueError(f"unknown mark-up(s) {unknown}; choose from {known}")
    matched = match_files(folder, pattern, allow_extra)
    release = open_release(source if source is not None else default_source()) if masks is None else None
    predictions = read_predictions(
        matched, TILE_SHAPE, object_types
    )  # the user's files first: each is checked
    if release is not None:
        masks = {m: read_markup(release, m) for m in MARKUPS}
    tiles = list(predictions)
    if matched.missing:
        logger.warning(
            "%s: no prediction for %d tile(s): %s", matched.folder, len(matched.missing), matched.missing
        )
    scores = score_predictions(predictions, masks, references)
    formats: dict[str, int] = {}
    for path in matched.files.values():
        formats[FORMATS[path.suffix.lower()]] = formats.get(FORMATS[path.suffix.lower()], 0) + 1
    return {
        "name": name or Path(folder).resolve().name,
        "folder": str(folder),
        "release": str(release.root) if release is not None else None,
        "masks": "released 'label masks modify' of each mark-up",
        "pattern": pattern,
        "object_types": sorted(object_types) if object_types is not None else None,
        "formats": formats,
        "files": {t: str(p) for t, p in matched.files.items()},
        "missing": matched.missing,
        "extra": [str(p) for p in matched.extra],
        "skipped": [str(p) for p in matched.skipped],
        "tiles": tiles,
        "references": references,
        "scores": scores,
        "summary": {r: summarise_tiles(scores[r]["per_tile"], tiles) for r in references},
        "segformer_cv": cv_beside(cv_metrics, references, tiles),
        "human": human_beside(masks, references, tiles),
    }
