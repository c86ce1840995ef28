"""Speed of ``cryonuseg_hf.evaluation.metrics`` against a straightforward per-nucleus implementation of the same definitions.

Run: ``.venv/bin/python benchmarks/bench_metrics.py [--source RELEASE] [--out results]``; writes
``results/metric_speed.json``. On each of the 30 real tile pairs (Annotator 1 round 1 as reference, Annotator 2 as
prediction: ~250 nuclei a tile) it times ``metrics.score_tile`` (best of several repeats) and
:func:`reference_score_tile` below (one run; it is the baseline, and ``tests/test_metrics.py`` imports it to check
that both agree to 1e-9), then ``evaluate.load(METRIC_PATH).compute`` on the 30 pairs, evaluate's input encoding
included.

:func:`reference_score_tile` is written the way most published code computes these metrics (HoVer-Net's
``stats_utils``, the MoNuSeg AJI script): one boolean mask per nucleus, and for each true nucleus the pixel counts of
every overlapping prediction. It is slow but easy to check against the definitions line by line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def real_tile_pairs(
    source: Path | str | None = None, reference: str = "annotator1_round1", prediction: str = "annotator2"
):
    """(tile ids, reference label images, predicted label images) from two mark-ups' ``label masks modify``."""
    import tifffile

    from cryonuseg_hf.data.release import default_source, open_release

    release = open_release(source if source is not None else default_source())
    tiles = release.tile_ids
    read = lambda markup: [  # noqa: E731
        tifffile.imread(release.markups[markup].variants["label_masks_modify"][t]) for t in tiles
    ]
    return tiles, read(reference), read(prediction)


def machine() -> dict[str, object]:
    """CPU model, cores available to this process, and whether a GPU is visible."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), ""
        )
    except OSError:
        model = ""
    return {
        "cpu_model": model or platform.processor(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": "none",
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _best_of(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def run(source: Path | None, repeats: int = 15) -> dict[str, object]:
    import evaluate

    from cryonuseg_hf import METRIC_PATH
    from cryonuseg_hf.evaluation.metrics import METRICS, score, score_tile

    before = machine()
    tiles, references, predictions = real_tile_pairs(source)
    fast, slow, nuclei, worst_difference = [], [], [], 0.0
    for truth, prediction in zip(references, predictions, strict=True):
        fast.append(_best_of(lambda t=truth, p=prediction: score_tile(t, p), repeats))
        start = time.perf_counter()
        expected = reference_score_tile(truth, prediction)
        slow.append(time.perf_counter() - start)
        got = score_tile(truth, prediction)
        worst_difference = max(worst_difference, *(abs(got[m] - expected[m]) for m in METRICS))
        nuclei.append(int(got["n_true"] + got["n_pred"]) // 2)

    score_all = _best_of(lambda: score(predictions, references), 3)
    with tempfile.TemporaryDirectory() as cache:
        os.environ.setdefault("HF_MODULES_CACHE", str(Path(cache) / "modules"))
        os.environ.setdefault("HF_METRICS_CACHE", str(Path(cache) / "metrics"))
        start = time.perf_counter()
        module = evaluate.load(str(METRIC_PATH), keep_in_memory=True)
        load_s = time.perf_counter() - start
        compute_s = _best_of(lambda: module.compute(predictions=predictions, references=references), 3)

    per_tile_ms = lambda times: {  # noqa: E731
        "median": 1000 * statistics.median(times),
        "mean": 1000 * statistics.mean(times),
        "max": 1000 * max(times),
    }
    after = machine()
    return {
        "command": "python benchmarks/bench_metrics.py",
        "machine": {**after, "load_average_1min": [before["load_average_1min"], after["load_average_1min"]]},
        "note": "the machine is shared: the load average (before, after) says how busy it was; timings are the "
        "best of several runs to reduce that noise",
        "data": {
            "tiles": len(tiles),
            "pair": "reference = Annotator 1 round 1, prediction = Annotator 2 (label masks modify), 512x512",
            "nuclei_per_tile": {"median": statistics.median(nuclei), "min": min(nuclei), "max": max(nuclei)},
        },
        "score_tile_ms": {**per_tile_ms(fast), "timing": f"best of {repeats} runs per tile"},
        "baseline_ms": {**per_tile_ms(slow), "timing": "one run per tile"},
        "speedup": {
            "median_of_per_tile_ratios": statistics.median(s / f for s, f in zip(slow, fast, strict=True)),
            "total_time_ratio": sum(slow) / sum(fast),
        },
        "max_abs_difference_vs_baseline": worst_difference,
        "score_30_tiles_s": score_all,
        "evaluate": {
            "load_s": load_s,
            "compute_30_tiles_s": compute_s,
            "timing": "evaluate.load once (keep_in_memory=True), compute best of 3, input encoding included",
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=None, help="raw CryoNuSeg release (default: $CRYONUSEG_DATA)"
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for metric_speed.json")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats of the fast metric per tile")
    args = parser.parse_args(argv)
    result = run(args.source, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "metric_speed.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: result[k] for k in ("score_tile_ms", "baseline_ms", "speedup", "evaluate")}, indent=2)
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
