"""Class probabilities (background / nucleus interior / nucleus boundary [/ nucleus centre]) -> nuclei instance labels.

The recipe, in the order it runs:

1. markers: connected components (4-neighbour) of ``p_marker > interior_threshold``, where the marker class is
   the nucleus interior, or the nucleus centre for a model that has the fourth class
   (:func:`cryonuseg_hf.data.targets.nucleus_centres`); components smaller than ``min_marker_size`` pixels are
   dropped; with ``split_depth``, a component holds one marker per maximum of its distance transform at least
   that many pixels deep (h-maxima), so two touching nuclei whose interiors merged into one blob with a neck get
   a marker each;
2. nucleus region: ``1 - p_background > mask_threshold`` (interior, boundary or centre);
3. watershed of the markers into the nucleus region on the elevation ``1 - p_interior - 2 p_centre`` (centres
   lowest, then interiors, then boundary rings), so boundary rings go to the interior they surround and
   touching nuclei split along the boundary class;
4. region components that hold no marker (nuclei too thin to have an interior) become nuclei of their own;
5. background enclosed by one nucleus (a hole) becomes part of it, so every nucleus is the region inside its
   outline and the exported outlines (GeoJSON, ImageJ ROIs) rasterise back to the same labels;
6. instances smaller than ``min_size`` pixels, or whose mean nucleus probability (``1 - p_background`` over
   their pixels) is below ``min_confidence``, are removed, and labels are renumbered 1..N.

The tuned parameters travel with the checkpoint: ``config.json`` holds them under ``cryonuseg_postprocess`` and
the input scale under ``cryonuseg_input_scale``; :func:`params_from_config` reads both. ``tune_params`` picks
them on training tiles only (the caller passes training tiles; nothing here knows the folds).

>>> import numpy as np
>>> probabilities_to_instances(np.stack([np.ones((4, 4)), np.zeros((4, 4)), np.zeros((4, 4))])).max()
np.int32(0)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

CONFIG_KEY = "cryonuseg_postprocess"
INPUT_SCALE_KEY = "cryonuseg_input_scale"


@dataclass(frozen=True)
class PostprocessParams:
    """Thresholds of :func:`probabilities_to_instances` (probabilities in 0..1, sizes in pixels at 40x)."""

    interior_threshold: float = 0.5
    """Probability of the marker class (the interior, or the centre where the model has one) that seeds."""
    mask_threshold: float = 0.5
    min_marker_size: int = 3
    min_size: int = 10
    unmarked_components: bool = True
    min_confidence: float = 0.0
    """Lowest mean nucleus probability (``1 - p_background`` over the instance's pixels) a kept nucleus has."""
    split_depth: float = 0.0
    """Depth in pixels of the distance-transform maxima that split a marker component (0 = no split)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence is a mean probability in [0, 1], got {self.min_confidence!r}")
        if not self.split_depth >= 0.0:
            raise ValueError(f"split_depth is a depth in pixels >= 0, got {self.split_depth!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PostprocessParams:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"unknown post-processing parameter(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**values)


def config_values(config: Any) -> dict[str, Any]:
    """A checkpoint's config as a dict, from a ``transformers`` config, a dict, or a path to ``config.json`` or to
    a checkpoint folder: the one place a checkpoint's ``config.json`` is read for its values."""
    import json
    import os
    from pathlib import Path

    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint config.json there")
        return json.loads(path.read_text())
    return config if isinstance(config, dict) else config.to_dict()


def params_from_config(config: Any) -> tuple[PostprocessParams, float]:
    """The post-processing parameters and input scale stored in a checkpoint config.

    Args:
        config: a ``transformers`` config, a dict (``config.json`` contents) or a path to ``config.json`` or to
            a checkpoint folder.

    Returns:
        ``(params, input_scale)``; defaults (and scale 1.0) for keys the config does not carry.
    """
    values = config_values(config)
    params = PostprocessParams.from_dict(values.get(CONFIG_KEY) or {})
    scale = float(values.get(INPUT_SCALE_KEY, 1.0))
    if scale <= 0:
        raise ValueError(f"{INPUT_SCALE_KEY} must be > 0, got {scale}")
    return params, scale


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3 or probabilities.shape[0] < 3:
        raise ValueError(
            "expected (C, H, W) class probabilities with C >= 3 (background, nucleus interior, nucleus boundary), "
            f"got shape {probabilities.shape}"
        )
    if not np.isfinite(probabilities).all():
        raise ValueError("class probabilities hold NaN or infinite values")
    return probabilities


def probabilities_to_instances(
    probabilities: np.ndarray, params: PostprocessParams | dict | None = None
) -> np.ndarray:
    """Nuclei instance labels from class probabilities.

    Args:
        probabilities: (C, H, W) float32 softmax output at image resolution; channel 0 background, 1 nucleus
            interior, 2 nucleus boundary, and 3 nucleus centre where the model has it.
        params: a :class:`PostprocessParams`, its dict form, or None for the defaults.

    Returns:
        (H, W) int32 instance labels, 0 = background, nuclei numbered 1..N in raster order of their first pixel.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    probabilities = _check_probabilities(probabilities)
    if params is None:
        params = PostprocessParams()
    elif isinstance(params, dict):
        params = PostprocessParams.from_dict(params)
    p_interior = probabilities[1]
    region = (1.0 - probabilities[0]) > params.mask_threshold
    if len(probabilities) > 3:  # a centre class: centres seed, and lie lowest in the elevation
        seeds = (probabilities[3] > params.interior_threshold) & region
        elevation = 1.0 - p_interior - 2.0 * probabilities[3]
    else:
        seeds = (p_interior > params.interior_threshold) & region
        elevation = 1.0 - p_interior
    markers, n_markers = ndi.label(seeds)
    if n_markers and params.min_marker_size > 1:
        sizes = np.bincount(markers.ravel())
        small = sizes < params.min_marker_size
        small[0] = False
        markers[small[markers]] = 0
    if n_markers and params.split_depth > 0:
        markers = split_markers(markers, params.split_depth)
    labels = watershed(elevation, markers=markers, mask=region) if markers.any() else markers
    if params.unmarked_components:
        orphans, n_orphans = ndi.label(region & (labels == 0))
        if n_orphans:
            labels = np.where(orphans > 0, orphans + labels.max(), labels)
    return _relabel(fill_holes(labels), params.min_size, 1.0 - probabilities[0], params.min_confidence)


def split_markers(components: np.ndarray, depth: float) -> np.ndarray:
    """One marker per maximum at least ``depth`` pixels deep of each component's distance to its outside; a
    component too thin to hold such a maximum stays one marker. Markers numbered 1..N.

    >>> peanut = np.zeros((9, 17), int)
    >>> peanut[1:8, 1:8] = peanut[1:8, 9:16] = peanut[3:6, 8] = 1  # two 7x7 squares joined by a 3 px neck
    >>> int(split_markers(peanut, 1.0).max()), int(split_markers(peanut, 3.0).max())
    (2, 1)
    """
    from scipy import ndimage as ndi
    from skimage.morphology import local_maxima, reconstruction

    inside = components > 0
    distance = ndi.distance_transform_edt(inside)
    # the regional maxima of the distance lowered by ``depth`` and rebuilt under itself: two peaks joined by a
    # neck less than ``depth`` below them share one plateau (skimage's h_maxima would mark equal twins apart)
    raised = reconstruction(distance - depth, distance, method="dilation")
    peaks = local_maxima(raised, connectivity=2, allow_borders=True) & inside
    markers, n = ndi.label(peaks, structure=np.ones((3, 3), bool))
    split = np.unique(components[peaks])
    whole = inside & ~np.isin(components, split)  # no maximum that deep: the component is its own marker
    rest, _ = ndi.label(whole)
    return np.where(whole, rest + n, markers).astype(np.int32) * inside


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Background pixels enclosed by a single instance given to it (holes as ``ndimage.binary_fill_holes`` finds them).

    >>> ring = np.pad(np.pad(np.zeros((1, 1), int), 1, constant_values=3), 1)
    >>> int(fill_holes(ring)[2, 2])
    3
    """
    from scipy import ndimage as ndi

    labels = labels.copy()
    for value, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        crop = labels[box]
        mask = crop == value
        holes = ndi.binary_fill_holes(mask) & ~mask & (crop == 0)
        crop[holes] = value
    return labels


def _relabel(
    labels: np.ndarray, min_size: int, nucleus: np.ndarray | None = None, min_confidence: float = 0.0
) -> np.ndarray:
    """Labels smaller than ``min_size``, or whose mean of ``nucleus`` (the nucleus probability) is below
    ``min_confidence``, removed; the rest renumbered 1..N in raster order."""
    flat = labels.ravel()
    sizes = np.bincount(flat)
    keep = sizes >= max(min_size, 1)
    if min_confidence > 0:
        totals = np.bincount(flat, weights=nucleus.ravel(), minlength=len(sizes))
        keep &= totals >= min_confidence * sizes
    keep[0] = False
    values, first = np.unique(flat, return_index=True)
    kept = [(pos, v) for v, pos in zip(values, first, strict=True) if keep[v]]
    lookup = np.zeros(len(sizes), dtype=np.int32)
    for new, (_, old) in enumerate(sorted(kept), start=1):
        lookup[old] = new
    return lookup[labels]


MIN_SIZES: tuple[int, ...] = (5, 10, 20, 30, 45, 60, 80)
CONFIDENCE_GRID: tuple[float, ...] = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
"""The ``min_confidence`` values :func:`tune_params` tries after the grid (with 0, no filter)."""


def param_grid(
    interior_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    mask_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
    min_sizes: Sequence[int] = MIN_SIZES,
) -> list[PostprocessParams]:
    """The candidates :func:`tune_params` tries first, by default.

    Widened after tuned values sat on the edge of a smaller grid; the ten CV models of ``results/cv`` chose
    interior 0.4-0.5 and mask 0.6-0.7, so the mask threshold still touches this grid's edge in three folds, and
    then, in the filters' search, minimum sizes of 5-45 pixels (a 40x nucleus covers about 100-400 pixels) with
    ``min_confidence`` 0.75-0.85.
    """
    return [
        PostprocessParams(interior_threshold=i, mask_threshold=m, min_size=s)
        for i, m, s in itertools.product(interior_thresholds, mask_thresholds, min_sizes)
    ]


def tune_params(
    probabilities: Iterable[np.ndarray],
    references: Iterable[np.ndarray | Sequence[np.ndarray]],
    candidates: Sequence[PostprocessParams] | None = None,
    objective: Callable[[np.ndarray, np.ndarray], float] | None = None,
    workers: int = 1,
    confidences: Sequence[float] = CONFIDENCE_GRID,
    min_sizes: Sequence[int] = MIN_SIZES,
    after_grid: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[PostprocessParams, list[dict[str, Any]]]:
    """The parameters with the best mean objective over (probabilities, reference instances) pairs.

    Searches in turn: the best of ``candidates``; then, for each field of ``after_grid``, the best so far with
    that field's own value or each of the values given (a field at a time, the others fixed); then every pair of a
    ``min_size`` (its own and ``min_sizes``) and a ``min_confidence`` (its own, 0 and ``confidences``), taken
    only if it scores higher. The two filters act together (once faint blobs go, small nuclei can stay), and
    they share one watershed per tile, so that search costs about a quarter of the grid's scoring; one grid over
    all four parameters would score eight times as many candidates as the first search.

    Pass training tiles only: the chosen parameters ship with the model and are applied to unseen tiles.

    Args:
        probabilities: per tile, (C, H, W) probabilities from the model.
        references: per tile, (H, W) ground-truth instance labels, or a sequence of them (several mark-ups of
            the tile: its objective is their mean).
        candidates: parameter sets to try (default :func:`param_grid`).
        objective: ``f(truth, prediction) -> float`` to maximise; default mean of AJI and PQ from
            ``cryonuseg_hf.evaluation.metrics.score_tile``.
        workers: processes scoring tiles in parallel (default objective only; results do not depend on it).
        confidences: ``min_confidence`` values of the last search (empty: no such search).
        min_sizes: ``min_size`` values of the last search.
        after_grid: ``PostprocessParams`` field -> values, each searched after the grid (e.g.
            ``{"split_depth": (1.0, 2.0)}``; default none).

    Returns:
        ``(best params, one record per parameter set tried, with its params and mean objective)``.
    """
    pairs = list(zip(probabilities, references, strict=True))
    if not pairs:
        raise ValueError("tune_params needs at least one (probabilities, reference) pair")
    candidates = list(candidates) if candidates is not None else param_grid()
    best, records = _search(pairs, candidates, objective, workers)
    for name, values in (after_grid or {}).items():
        tries = dict.fromkeys(replace(best, **{name: v}) for v in (getattr(best, name), *values))
        winner, more = _search(pairs, list(tries), objective, workers)  # the first is ``best`` again
        best, records = winner, records + more[1:]
    if confidences:
        sizes, levels = (best.min_size, *min_sizes), (best.min_confidence, 0.0, *confidences)
        second = dict.fromkeys(replace(best, min_size=s, min_confidence=c) for s in sizes for c in levels)
        winner, more = _search(pairs, list(second), objective, workers)  # the first is ``best`` again
        best, records = winner, records + more[1:]
    return best, records


def _search(pairs, candidates, objective, workers) -> tuple[PostprocessParams, list[dict[str, Any]]]:
    """The first candidate with the highest mean objective over ``pairs``, and a record per candidate."""
    if workers > 1 and objective is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the caller may hold a CUDA context or OpenMP threads that a forked child would inherit
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = [pool.submit(_tile_objectives, p, ref, candidates, None) for p, ref in pairs]
            per_tile = [future.result() for future in futures]
    else:
        per_tile = [_tile_objectives(p, ref, candidates, objective) for p, ref in pairs]
    means = np.mean(np.array(per_tile), axis=0)
    records = [
        {**params.to_dict(), "objective": float(value)}
        for params, value in zip(candidates, means, strict=True)
    ]
    return candidates[int(np.argmax(means))], records


def _default_objective(truth: np.ndarray, prediction: np.ndarray) -> float:
    from cryonuseg_hf.evaluation.metrics import score_tile

    scores = score_tile(truth, prediction)
    return 0.5 * (scores["aji"] + scores["pq"])


def _tile_objectives(probabilities, reference, candidates, objective) -> list[float]:
    """The objective of every candidate on one tile (the mean over its references, if several); the watershed
    runs once per setting other than the filters (min_size, min_confidence)."""
    objective = objective or _default_objective
    references = [reference] if isinstance(reference, np.ndarray) else list(reference)
    nucleus = 1.0 - _check_probabilities(probabilities)[0]
    unfiltered: dict[PostprocessParams, np.ndarray] = {}
    values = []
    for params in candidates:
        key = replace(params, min_size=0, min_confidence=0.0)
        if key not in unfiltered:
            unfiltered[key] = probabilities_to_instances(probabilities, key)
        kept = _relabel(unfiltered[key], params.min_size, nucleus, params.min_confidence)
        values.append(float(np.mean([objective(truth, kept) for truth in references])))
    return values
