"""The metrics of ``cryonuseg_hf.evaluation.metrics`` computed the slow, obvious way: the tests' reference.

:func:`reference_score_tile` is written the way most published code computes these metrics (HoVer-Net's
``stats_utils``, the MoNuSeg AJI script): one boolean mask per nucleus, and for each true nucleus the pixel counts of
every overlapping prediction. It is slow but easy to check against the definitions line by line.
``tests/test_metrics.py`` checks that the package's metric agrees with it to 1e-9 on hand-made and real tiles, and
``benchmarks/bench_metrics.py`` times the package's metric against it.
"""

from __future__ import annotations

import numpy as np


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def reference_score_tile(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """The eight metrics of ``cryonuseg_hf.evaluation.metrics``, computed nucleus by nucleus from their definitions."""
    from scipy.optimize import linear_sum_assignment

    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    # Nuclei in raster order of their first pixel: the tie-breaking order of cryonuseg_hf.evaluation.metrics.
    first_pixel = lambda labels, i: int(np.argmax(labels.reshape(-1) == i))  # noqa: E731
    true_ids = sorted((int(i) for i in np.unique(truth) if i != 0), key=lambda i: first_pixel(truth, i))
    pred_ids = sorted(
        (int(j) for j in np.unique(prediction) if j != 0), key=lambda j: first_pixel(prediction, j)
    )
    names = ("dice", "aji", "aji_plus", "pq", "dq", "sq", "precision", "recall")
    if not true_ids and not pred_ids:
        return dict.fromkeys(names, 1.0)
    true_masks = [truth == i for i in true_ids]
    pred_masks = [prediction == j for j in pred_ids]
    pred_column = {j: b for b, j in enumerate(pred_ids)}

    inter = np.zeros((len(true_ids), len(pred_ids)))
    union = np.zeros((len(true_ids), len(pred_ids)))
    for a, t_mask in enumerate(true_masks):
        for j in np.unique(prediction[t_mask]):
            if j == 0:
                continue
            b = pred_column[int(j)]
            inter[a, b] = np.logical_and(t_mask, pred_masks[b]).sum()
            union[a, b] = np.logical_or(t_mask, pred_masks[b]).sum()
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    fg_truth, fg_pred = truth > 0, prediction > 0
    dice = _safe_ratio(2 * np.logical_and(fg_truth, fg_pred).sum(), fg_truth.sum() + fg_pred.sum())

    # AJI: every true nucleus takes the prediction of highest IoU (ties: larger intersection, then raster order).
    aji_inter, aji_union, used = 0.0, 0.0, set()
    for a, t_mask in enumerate(true_masks):
        best_iou = iou[a].max() if pred_ids else 0.0
        if best_iou > 0:
            candidates = [b for b in range(len(pred_ids)) if iou[a, b] == best_iou]
            b = max(candidates, key=lambda c: (inter[a, c], -c))
            aji_inter += inter[a, b]
            aji_union += union[a, b]
            used.add(b)
        else:
            aji_union += t_mask.sum()
    aji_union += sum(pred_masks[b].sum() for b in range(len(pred_ids)) if b not in used)

    # AJI+: one-to-one pairing of maximal total IoU over the full matrix, with HoVer-Net's weights
    # inter / (union + 1e-6) (among equal IoUs they favour larger intersections); pairs of IoU 0 are no pairs.
    plus_inter, plus_union = 0.0, 0.0
    paired_true, paired_pred = set(), set()
    if true_ids and pred_ids:
        weights = np.divide(inter, union + 1e-6, out=np.zeros_like(inter), where=union > 0)
        rows, cols = linear_sum_assignment(weights, maximize=True)
        for a, b in zip(rows, cols, strict=True):
            if iou[a, b] > 0:
                plus_inter += inter[a, b]
                plus_union += union[a, b]
                paired_true.add(a)
                paired_pred.add(b)
    plus_union += sum(m.sum() for a, m in enumerate(true_masks) if a not in paired_true)
    plus_union += sum(m.sum() for b, m in enumerate(pred_masks) if b not in paired_pred)

    # PQ: pairs of IoU > 0.5 are unique matches.
    match_ious = [iou[a, b] for a in range(len(true_ids)) for b in range(len(pred_ids)) if iou[a, b] > 0.5]
    tp = len(match_ious)
    fp, fn = len(pred_ids) - tp, len(true_ids) - tp
    dq = _safe_ratio(tp, tp + 0.5 * fp + 0.5 * fn)
    sq = _safe_ratio(sum(match_ious), tp)
    return {
        "dice": dice,
        "aji": _safe_ratio(aji_inter, aji_union),
        "aji_plus": _safe_ratio(plus_inter, plus_union),
        "pq": dq * sq,
        "dq": dq,
        "sq": sq,
        "precision": _safe_ratio(tp, tp + fp),
        "recall": _safe_ratio(tp, tp + fn),
    }
