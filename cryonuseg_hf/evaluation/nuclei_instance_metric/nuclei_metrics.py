"""Dice, AJI, AJI+ and Panoptic Quality for nuclei instance segmentation, on plain numpy label images.

Inputs are 2-D integer label images (numpy arrays or PIL images, any integer dtype), ``0`` = background and every
other value one nucleus; ids need not be contiguous. Every metric of a tile comes from the overlapping (true id,
predicted id) pairs alone: a 512x512 tile is scored in milliseconds, and 60,000 touching nuclei in seconds and under
300 MB (``results/metric_speed.json``).

This file is the one source of these functions: it lives in the ``evaluate`` module's folder and needs only numpy
and scipy, so the folder loads on its own (the Hub); ``cryonuseg_hf.evaluation.metrics`` re-exports it.

The definitions are the published ones, computed as HoVer-Net's ``metrics/stats_utils.py`` (Graham et al., 2019)
computes them (``get_dice_1``, ``get_fast_aji``, ``get_fast_aji_plus``, ``get_fast_pq`` with ``match_iou=0.5``).
Writing :math:`T_i` for true nucleus ``i``, :math:`P_j` for predicted nucleus ``j``:

- ``dice``: binary Dice, :math:`2|T \\cap P| / (|T| + |P|)` with :math:`T = \\bigcup T_i`, :math:`P = \\bigcup P_j`.
- ``aji``: Aggregated Jaccard Index (Kumar et al., 2017). Each true nucleus is paired with the predicted nucleus of
  highest IoU, :math:`j^*(i)` (a predicted nucleus may be paired with several true nuclei); a true nucleus that
  overlaps no prediction stays unpaired. With :math:`U` the predicted nuclei paired with no true nucleus,
  :math:`AJI = \\sum_i |T_i \\cap P_{j^*(i)}| / (\\sum_i |T_i \\cup P_{j^*(i)}| + \\sum_{j \\in U} |P_j|)`,
  where an unpaired true nucleus contributes :math:`|T_i|` to the denominator.
- ``aji_plus``: AJI+ (Graham et al., 2019): the same ratio over a one-to-one pairing that maximises the total IoU
  (the optimum of the Hungarian algorithm, found by its sparse form, LAPJVsp); pairs of IoU 0 are not pairs.
- ``pq``, ``dq``, ``sq``: Panoptic Quality (Kirillov et al., 2019). A true and a predicted nucleus match when
  their IoU is *strictly* above 0.5 (such matches are unique). With TP matches, FP unmatched predictions and FN
  unmatched true nuclei: :math:`DQ = TP / (TP + FP/2 + FN/2)`, :math:`SQ` = mean IoU of the matches (0 when
  there are none), :math:`PQ = DQ \\cdot SQ`; ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN).
- Both images empty: every metric is 1.0. Exactly one empty: every metric is 0.0.

Where HoVer-Net's code has quirks, this module decides as follows:

- HoVer-Net divides intersections by ``union + 1e-6`` for AJI and AJI+. That only changes which predicted nucleus
  wins an exact IoU tie: the one with the larger intersection. For AJI this module applies that rule explicitly to
  exact ratios; for AJI+ the pairing maximises HoVer-Net's weights ``inter / (union + 1e-6)``.
- Remaining exact ties (equal IoU and intersection) go, in HoVer-Net, to the smaller id. Here they go to the
  nucleus whose first pixel comes first in raster (row-major) order: the same choice for images numbered in raster
  order (``skimage.measure.label``), and a score that does not change when the ids are permuted. For AJI+, when
  two pairs within a group of overlapping nuclei have the same weight (so that several pairings may be optimal),
  the solver sees that group's nuclei in raster order.
- HoVer-Net's SQ is ``sum(IoU) / (TP + 1e-6)``; here it is the exact mean (the difference is below 1e-6).
- HoVer-Net needs contiguous ids (``remap_label`` first) and returns NaN or divides by zero on empty images; here ids
  may be anything non-negative and the empty cases follow the rule above.

A dataset's score is the mean over tiles of each per-tile value (the convention of HoVer-Net and the CryoNuSeg
paper), under the names above. :func:`score` also returns pooled variants (sums over all tiles first), named
``<metric>_pooled``.

References:
    Kumar et al., "A Dataset and a Technique for Generalized Nuclear Segmentation for Computational Pathology",
    IEEE TMI 36(7), 2017. Kirillov et al., "Panoptic Segmentation", CVPR 2019. Graham et al., "HoVer-Net:
    Simultaneous segmentation and classification of nuclei in multi-tissue histology images", MedIA 58, 2019.

>>> import numpy as np
>>> truth = np.array([[1, 1, 0, 2, 2]])
>>> scores = score_tile(truth, np.array([[5, 5, 0, 0, 0]]))
>>> scores["dice"], scores["aji"], scores["pq"]
(0.6666666666666666, 0.5, 0.6666666666666666)
>>> score_tile(np.zeros((2, 2), int), np.zeros((2, 2), int))["aji"]
1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MATCH_IOU = 0.5
"""PQ's matching threshold: a pair matches when its IoU is strictly above it."""

METRICS: tuple[str, ...] = ("dice", "aji", "aji_plus", "pq", "dq", "sq", "precision", "recall")
"""The per-tile metrics; :func:`score` averages each over tiles under the same name."""

COUNTS: tuple[str, ...] = tuple(
    "n_true n_pred tp fp fn iou_sum dice_intersection dice_total "
    "aji_intersection aji_union aji_plus_intersection aji_plus_union".split()
)
"""The per-tile counts behind the metrics (``iou_sum``: summed IoU of the PQ matches; ``dice_total``:
foreground pixels of truth plus prediction); the pooled variants are ratios of their sums."""

# HoVer-Net divides by union + 1e-6 when pairing for AJI+; the same weights keep its choices among equal IoUs.
_HOVERNET_EPS = 1e-6

# A dense table of (true, predicted) bins is faster than sorting while it stays this many times the pixel count,
# and under 64 MB (a 512x512 tile: 2 million bins).
_DENSE_TABLE_FACTOR = 8
_DENSE_TABLE_MAX = 1 << 23

# AJI+ pairs on a dense table up to this many cells (16 MB), on the overlapping pairs alone beyond.
_DENSE_PAIRING_CELLS = 1 << 20

# first_pixels reads an image this many pixels at a time (a few MB, whatever the image size).
_CHUNK_PIXELS = 1 << 20


def as_label_image(labels: Any, name: str = "labels") -> np.ndarray:
    """Check one label image and return it as a 2-D non-negative integer numpy array (never a copy of the data
    when it is already one).

    Args:
        labels: a 2-D numpy array or PIL image of integer ids, 0 = background. Float arrays are accepted only when
            every value is a finite whole number (they are then converted to int64).
        name: how error messages call this image (a tile id or ``predictions[3]``).

    Raises:
        ValueError: not 2-D, not integer, negative ids, NaN or infinite values.
    """
    array = np.asarray(labels)  # PIL images convert through their array interface
    if array.ndim != 2:
        hint = " (squeeze the channel axis, or label a 3-D volume slice by slice)" if array.ndim == 3 else ""
        raise ValueError(f"{name}: expected a 2-D label image (H, W), got shape {array.shape}{hint}")
    kind = array.dtype.kind
    if kind == "b":
        raise ValueError(
            f"{name}: got a boolean mask, not a label image; give each nucleus its own id "
            "(e.g. skimage.measure.label(mask))"
        )
    if kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: label image contains NaN or infinite values")
        if (array != np.round(array)).any():
            raise ValueError(
                f"{name}: label image has non-integer values ({array.dtype}); ids must be integers"
            )
        array = array.astype(np.int64)
    elif kind not in "iu":
        raise ValueError(f"{name}: expected an integer label image, got dtype {array.dtype}")
    if array.size and kind in "if" and array.min() < 0:
        raise ValueError(
            f"{name}: label image has negative ids (min {array.min()}); 0 is background, ids > 0"
        )
    if array.dtype == np.uint64:
        if array.size and array.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name}: ids above {np.iinfo(np.int64).max} are not supported")
        array = array.astype(np.int64)
    return array


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relabel ids to 1..n in increasing order of id: returns (codes per pixel, 0 = background; the ids; their
    areas)."""
    n_pixels = flat.size
    top = int(flat.max()) if n_pixels else 0
    if top <= max(1 << 16, 4 * n_pixels):
        counts = np.bincount(flat, minlength=top + 1)
        present = np.flatnonzero(counts[1:]) + 1
        if present.size == top:  # already 1..n
            return flat, present, counts[1:]
        lookup = np.zeros(top + 1, dtype=np.intp)
        lookup[present] = np.arange(1, present.size + 1)
        return lookup[flat], present, counts[present]
    ids, codes = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        codes = codes + 1
    else:
        ids = ids[1:]
    areas = np.bincount(codes)[1:]
    return codes, ids, areas


def overlap_table(truth: np.ndarray, prediction: np.ndarray):
    """The sparse contingency table: overlapping (true index, predicted index, intersection), then the ids and the
    areas of the true and of the predicted nuclei.

    Indices run from 0 in increasing order of the original ids. When the ids are small (the usual case), one
    ``bincount`` over combined keys of the raw ids gives the whole table; otherwise ids are first relabelled 1..n.
    Every metric here is computed from it; ``benchmarks/error_analysis.py`` classifies unmatched nuclei with it.

    >>> truth = np.array([[1, 1, 0], [0, 2, 2]])
    >>> t_index, p_index, inter, t_ids, t_areas, p_ids, p_areas = overlap_table(truth, np.array([[5, 5, 5], [0, 5, 0]]))
    >>> t_index.tolist(), p_index.tolist(), inter.tolist(), t_areas.tolist(), p_ids.tolist(), p_areas.tolist()
    ([0, 1], [0, 0], [2, 1], [2, 2], [5], [4])
    """
    t_top = int(truth.max()) if truth.size else 0
    p_top = int(prediction.max()) if prediction.size else 0
    limit = min(_DENSE_TABLE_FACTOR * truth.size, _DENSE_TABLE_MAX) + 1024
    if (t_top + 1) * (p_top + 1) <= limit:
        width = p_top + 1
        keys = truth.reshape(-1).astype(np.intp) * width + prediction.reshape(-1)
        table = np.bincount(keys, minlength=(t_top + 1) * width).reshape(t_top + 1, width)
        t_all, p_all = table.sum(axis=1), table.sum(axis=0)
        t_ids, p_ids = np.flatnonzero(t_all[1:]) + 1, np.flatnonzero(p_all[1:]) + 1
        overlap = table[1:, 1:]
        t_raw, p_raw = np.nonzero(overlap)
        inter = overlap[t_raw, p_raw]
        t_index = np.searchsorted(t_ids, t_raw + 1)
        p_index = np.searchsorted(p_ids, p_raw + 1)
        return t_index, p_index, inter.astype(np.int64), t_ids, t_all[t_ids], p_ids, p_all[p_ids]
    t_codes, t_ids, t_areas = _compact(truth.reshape(-1))
    p_codes, p_ids, p_areas = _compact(prediction.reshape(-1))
    width = p_areas.size + 1
    keys = t_codes.astype(np.intp, copy=False) * width + p_codes
    n_bins = (t_areas.size + 1) * width
    if n_bins <= limit:
        table = np.bincount(keys, minlength=n_bins)
        table[:width] = 0  # true background row
        table[::width] = 0  # predicted background column
        bins = np.flatnonzero(table)
        inter = table[bins]
    else:
        bins, inter = np.unique(keys, return_counts=True)
        keep = (bins >= width) & (bins % width != 0)
        bins, inter = bins[keep], inter[keep]
    t_index, p_index = np.divmod(bins, width)
    areas = t_areas.astype(np.int64), p_areas.astype(np.int64)
    return t_index - 1, p_index - 1, inter.astype(np.int64), t_ids, areas[0], p_ids, areas[1]


def first_pixels(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row-major index of the first pixel of each nucleus in ``ids`` (increasing, all present in ``labels``).

    This is the tie-breaking key: an order of the nuclei that does not depend on how they are numbered (it equals
    the id order for images labelled in raster order, as ``skimage.measure.label`` numbers them).
    """
    flat = labels.reshape(-1)
    first = np.full(ids.size, -1, dtype=np.intp)
    for start in range(0, flat.size, _CHUNK_PIXELS):
        chunk = flat[start : start + _CHUNK_PIXELS]
        where = np.flatnonzero(np.isin(chunk, ids))
        values, at = np.unique(chunk[where], return_index=True)
        slot = np.searchsorted(ids, values)
        new = first[slot] < 0
        first[slot[new]] = start + where[at[new]]
    return first


def _raster_rank(first: np.ndarray) -> np.ndarray:
    rank = np.empty(first.size, dtype=np.intp)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank


def _aji_pairs(t_index, p_index, inter, iou, p_first) -> np.ndarray:
    """For AJI: the edge of highest IoU for each true nucleus that overlaps any prediction.

    Ties go to the larger intersection (as HoVer-Net's ``union + 1e-6`` does), then to the predicted nucleus whose
    first pixel comes first in raster order (HoVer-Net's ``argmax`` takes the smaller id; the raster order gives
    the same choice for raster-numbered images and keeps AJI independent of the numbering).
    ``p_first(indices)`` gives :func:`first_pixels` of those predicted nuclei; it is only called on a tie.
    """
    order = np.lexsort((p_index, -inter, -iou, t_index))
    t_sorted, iou_sorted, inter_sorted = t_index[order], iou[order], inter[order]
    tied = (
        (t_sorted[1:] == t_sorted[:-1])
        & (iou_sorted[1:] == iou_sorted[:-1])
        & (inter_sorted[1:] == inter_sorted[:-1])
    )
    if tied.any():
        involved = np.isin(t_index, t_sorted[1:][tied])
        preds = np.unique(p_index[involved])
        key = np.zeros(p_index.max() + 1, dtype=np.intp)
        key[preds] = _raster_rank(p_first(preds)) + 1
        order = np.lexsort((key[p_index], -inter, -iou, t_index))
        t_sorted = t_index[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = t_sorted[1:] != t_sorted[:-1]
    return order[first]


def _equal_iou_in_a_component(row_of: np.ndarray, col_of: np.ndarray, iou: np.ndarray) -> bool:
    """Whether two edges of one connected component of the overlap graph have the same IoU (the usual source of
    several optimal pairings)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_rows = int(row_of.max()) + 1
    n_nodes = n_rows + int(col_of.max()) + 1
    graph = coo_matrix((np.ones(row_of.size), (row_of, n_rows + col_of)), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    edge_component = component[row_of]
    order = np.lexsort((iou, edge_component))
    same_component = edge_component[order][1:] == edge_component[order][:-1]
    return bool((same_component & (iou[order][1:] == iou[order][:-1])).any())


def _aji_plus_pairs(t_index, p_index, iou, t_first, p_first) -> np.ndarray:
    """For AJI+: the edges of a one-to-one pairing that maximises the total of ``iou``.

    An edge whose two nuclei overlap nothing else is paired directly; the rest goes to the Hungarian algorithm on a
    dense table up to 16 MB, else to :func:`_best_pairing` on the pairs alone (both give the same pairings on all
    CryoNuSeg tiles). When equal IoUs in a group of overlapping nuclei could make several pairings optimal, the
    nuclei are first put in raster order (``t_first(indices)``, ``p_first(indices)``), whatever their numbering.
    """
    if t_index.size == 0:
        return np.zeros(0, dtype=np.intp)
    t_degree = np.bincount(t_index)
    p_degree = np.bincount(p_index)
    alone = (t_degree[t_index] == 1) & (p_degree[p_index] == 1)
    chosen = [np.flatnonzero(alone)]
    rest = np.flatnonzero(~alone)
    if rest.size:
        rows, row_of = np.unique(t_index[rest], return_inverse=True)
        cols, col_of = np.unique(p_index[rest], return_inverse=True)
        if _equal_iou_in_a_component(row_of, col_of, iou[rest]):
            row_of = _raster_rank(t_first(rows))[row_of]
            col_of = _raster_rank(p_first(cols))[col_of]
        if rows.size * cols.size <= _DENSE_PAIRING_CELLS:  # faster for a tile's few hundred nuclei
            from scipy.optimize import linear_sum_assignment

            weights = np.zeros((rows.size, cols.size))
            weights[row_of, col_of] = iou[rest]
            edge = np.full((rows.size, cols.size), -1, dtype=np.intp)
            edge[row_of, col_of] = rest
            picked = edge[linear_sum_assignment(weights, maximize=True)]
            chosen.append(picked[picked >= 0])
        else:
            chosen.append(rest[_best_pairing(row_of, col_of, iou[rest])])
    return np.concatenate(chosen)


def _best_pairing(row_of: np.ndarray, col_of: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Which edges (``row_of[k]``, ``col_of[k]``) form a one-to-one pairing of maximum total ``weight``, by the
    sparse Jonker-Volgenant solver (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``) on the edges alone.

    That solver pairs every node, so row ``i`` gets a stand-in column ``i'``, column ``j`` a stand-in row ``j'``
    (cost 2: unpaired), and edge ``(i, j)`` (cost ``3 - weight``) a twin ``j' - i'`` (cost 1): a pair costs
    ``4 - weight``, two unpaired nuclei 4 (cheap twins make the solver fast: 0.7 s, not 14 s, for 60,000 nuclei).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    n_rows, n_cols = int(row_of.max()) + 1, int(col_of.max()) + 1
    size = n_rows + n_cols
    rows = np.concatenate([row_of, np.arange(n_rows), n_rows + np.arange(n_cols), n_rows + col_of])
    cols = np.concatenate([col_of, n_cols + np.arange(n_rows), np.arange(n_cols), n_cols + row_of])
    costs = np.concatenate([3.0 - weight, np.full(size, 2.0), np.ones(weight.size)])
    paired_rows, paired_cols = min_weight_full_bipartite_matching(
        csr_matrix((costs, (rows, cols)), shape=(size, size))
    )
    column_of_row = np.empty(size, dtype=np.intp)
    column_of_row[paired_rows] = paired_cols
    return np.flatnonzero(column_of_row[row_of] == col_of)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def score_tile(truth: Any, prediction: Any, name: str = "tile") -> dict[str, float | int]:
    """Every metric for one tile.

    Args:
        truth: the reference label image (2-D integer ids, 0 = background; numpy or PIL).
        prediction: the predicted label image, same shape.
        name: how error messages call this pair.

    Returns:
        ``dice``, ``aji``, ``aji_plus``, ``pq``, ``dq``, ``sq``, ``precision``, ``recall`` (floats; see the module
        docstring for each definition) and the counts in :data:`COUNTS` (ints, ``iou_sum`` a float).

    Raises:
        ValueError: shapes differ, or either image is not a valid label image (see :func:`as_label_image`).

    >>> score_tile([[1, 1, 1, 1]], [[1, 1, 0, 0]])["pq"]  # IoU exactly 0.5 is not a match
    0.0
    """
    truth = as_label_image(truth, f"{name}: truth")
    prediction = as_label_image(prediction, f"{name}: prediction")
    if truth.shape != prediction.shape:
        raise ValueError(f"{name}: truth has shape {truth.shape} but prediction has shape {prediction.shape}")
    t_index, p_index, inter, t_ids, t_areas, p_ids, p_areas = overlap_table(truth, prediction)
    n_true, n_pred = t_areas.size, p_areas.size
    union = t_areas[t_index] + p_areas[p_index] - inter
    iou = inter / union if inter.size else np.zeros(0)

    dice_intersection = int(inter.sum())
    dice_total = int(t_areas.sum() + p_areas.sum())

    # The raster order of nuclei breaks exact ties; it is computed only for the nuclei of a tie.
    def t_first(indices: np.ndarray) -> np.ndarray:
        return first_pixels(truth, t_ids[indices])

    def p_first(indices: np.ndarray) -> np.ndarray:
        return first_pixels(prediction, p_ids[indices])

    def aggregated(pairs: np.ndarray) -> tuple[int, int]:
        """AJI's sums over the edges ``pairs``: intersections, and unions plus the area of every unpaired nucleus."""
        unpaired_true = np.ones(n_true, dtype=bool)
        unpaired_true[t_index[pairs]] = False
        unused_pred = np.ones(n_pred, dtype=bool)
        unused_pred[p_index[pairs]] = False
        unpaired = t_areas[unpaired_true].sum() + p_areas[unused_pred].sum()
        return int(inter[pairs].sum()), int(union[pairs].sum() + unpaired)

    aji_intersection, aji_union = aggregated(_aji_pairs(t_index, p_index, inter, iou, p_first))
    # HoVer-Net's weights: among equal IoUs the pairing then prefers larger intersections, as AJI does.
    hovernet_iou = inter / (union + _HOVERNET_EPS) if inter.size else np.zeros(0)
    one_to_one = _aji_plus_pairs(t_index, p_index, hovernet_iou, t_first, p_first)
    aji_plus_intersection, aji_plus_union = aggregated(one_to_one)

    matched = inter > MATCH_IOU * union  # exact: no division before the comparison
    tp = int(matched.sum())
    iou_sum = float(iou[matched].sum())
    counts = {
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "tp": tp,
        "fp": int(n_pred - tp),
        "fn": int(n_true - tp),
        "iou_sum": iou_sum,
        "dice_intersection": dice_intersection,
        "dice_total": dice_total,
        "aji_intersection": aji_intersection,
        "aji_union": aji_union,
        "aji_plus_intersection": aji_plus_intersection,
        "aji_plus_union": aji_plus_union,
    }
    return {**metrics_from_counts(counts), **counts}


def metrics_from_counts(counts: Mapping[str, float]) -> dict[str, float]:
    """The eight metrics from the counts in :data:`COUNTS` (of one tile, or summed over tiles for pooling).

    Both images empty (no true and no predicted nucleus) gives 1.0 for every metric.
    """
    if counts["n_true"] == 0 and counts["n_pred"] == 0:
        return dict.fromkeys(METRICS, 1.0)
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    dq = _ratio(tp, tp + 0.5 * fp + 0.5 * fn)
    sq = _ratio(counts["iou_sum"], tp)
    return {
        "dice": _ratio(2 * counts["dice_intersection"], counts["dice_total"]),
        "aji": _ratio(counts["aji_intersection"], counts["aji_union"]),
        "aji_plus": _ratio(counts["aji_plus_intersection"], counts["aji_plus_union"]),
        "pq": dq * sq,
        "dq": dq,
        "sq": sq,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def _summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """Mean over tiles of each metric, pooled variants from summed counts, and the summed counts."""
    summary: dict[str, float | int] = {m: float(np.mean([row[m] for row in rows])) for m in METRICS}
    totals = {c: sum(row[c] for row in rows) for c in COUNTS}
    summary.update({f"{m}_pooled": v for m, v in metrics_from_counts(totals).items()})
    summary["n_tiles"] = len(rows)
    summary.update(totals)
    return summary


def _check_per_tile(values: Sequence | None, what: str, n: int) -> list | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what}: expected one value per tile ({n}), got {len(values)}")
    return values


def _score_one_reference(predictions, references, organs, folds, tile_ids) -> dict[str, Any]:
    n = len(predictions)
    if len(references) != n:
        raise ValueError(
            f"got {n} predictions but {len(references)} references; give one reference per prediction"
        )
    if n == 0:
        raise ValueError("nothing to score: predictions and references are empty")
    organs = _check_per_tile(organs, "organs", n)
    folds = _check_per_tile(folds, "folds", n)
    tile_ids = _check_per_tile(tile_ids, "tile_ids", n)
    given = {"tile_id": tile_ids, "organ": organs, "fold": None if folds is None else [int(f) for f in folds]}
    rows = []
    for k, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        name = str(tile_ids[k]) if tile_ids is not None else f"tile {k}"
        row: dict[str, Any] = {key: values[k] for key, values in given.items() if values is not None}
        rows.append(row | score_tile(reference, prediction, name=name))
    result: dict[str, Any] = _summary(rows)
    result["per_tile"] = rows
    for key, values in (("organ", organs), ("fold", folds)):
        if values is not None:
            groups: dict[Any, list] = {}
            for row in rows:
                groups.setdefault(row[key], []).append(row)
            result[f"per_{key}"] = {group: _summary(members) for group, members in sorted(groups.items())}
    return result


def score(
    predictions: Sequence[Any],
    references: Sequence[Any] | Mapping[str, Sequence[Any]],
    organs: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    tile_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score a set of predicted label images against reference label images, tile by tile.

    Args:
        predictions: one predicted label image per tile.
        references: one reference label image per tile, or a mapping name -> such a list (e.g. one list per
            CryoNuSeg mark-up) to score the same predictions against each reference set in one call.
        organs: optional organ name per tile; adds ``per_organ``.
        folds: optional fold number per tile; adds ``per_fold``.
        tile_ids: optional id per tile; shown in ``per_tile`` and in error messages.

    Returns:
        For a list of references: the mean over tiles of each metric under its name (``dice``, ``aji``,
        ``aji_plus``, ``pq``, ``dq``, ``sq``, ``precision``, ``recall``); the pooled variants ``<metric>_pooled``
        (counts summed over tiles, then the ratio); ``n_tiles`` and the summed counts; ``per_tile``, a list of
        per-tile dicts (metrics, counts, and ``tile_id``/``organ``/``fold`` when given); ``per_organ`` and
        ``per_fold`` (group -> the same summary) when organs or folds are given. For a mapping of references: a
        dict name -> that result.

    Raises:
        ValueError: lengths differ, nothing to score, or a tile is invalid (the message names it).
    """
    predictions = list(predictions)
    if isinstance(references, Mapping):
        return {
            name: _score_one_reference(predictions, list(refs), organs, folds, tile_ids)
            for name, refs in references.items()
        }
    return _score_one_reference(predictions, list(references), organs, folds, tile_ids)
