"""Speed of ``cryonuseg_hf.evaluation.metrics`` against a straightforward per-nucleus implementation of the same definitions.

Run: ``.venv/bin/python benchmarks/bench_metrics.py [--source RELEASE] [--out results]``; writes
``results/metric_speed.json``. On each of the 30 real tile pairs (Annotator 1 round 1 as reference, Annotator 2 as
prediction: ~250 nuclei a tile) it times ``metrics.score_tile`` (best of several repeats) and the tests' reference
implementation, ``reference_score_tile`` of ``tests/reference_metric.py`` (one run: it is the baseline, written
nucleus by nucleus from the definitions), checks that both agree, then times
``evaluate.load(METRIC_PATH).compute`` on the 30 pairs, evaluate's input encoding included, and times one large
pair (:func:`touching_grid`: 4000x4000, 62,500 touching nuclei a side) with the peak of its allocations.
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

REFERENCE_METRIC = Path(__file__).resolve().parents[1] / "tests" / "reference_metric.py"


def _reference_score_tile():
    """``reference_score_tile`` of ``tests/reference_metric.py`` (the tests are not a package to import from)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_metric", REFERENCE_METRIC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_score_tile


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


def touching_grid(side: int = 4000, cell: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A large pair: square nuclei of ``cell`` pixels tiling a ``side`` x ``side`` image, and the same grid shifted
    by half a nucleus, so that every nucleus overlaps four and all of them form one group of overlapping nuclei."""
    n = -(-side // cell)
    grid = np.arange(1, n * n + 1, dtype=np.int32).reshape(n, n).repeat(cell, 0).repeat(cell, 1)[:side, :side]
    return grid, np.roll(grid, (cell // 2, cell // 2), axis=(0, 1))


def large_pair() -> dict[str, object]:
    """Wall time and allocation peak (``tracemalloc``: numpy's buffers included) of ``score_tile`` on
    :func:`touching_grid`."""
    import tracemalloc

    from cryonuseg_hf.evaluation.metrics import score_tile

    truth, prediction = touching_grid()
    score_tile(truth[:64, :64], prediction[:64, :64])  # imports scipy's solvers outside the timing
    tracemalloc.start()
    start = time.perf_counter()
    scores = score_tile(truth, prediction)
    seconds = time.perf_counter() - start
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {
        "pair": "4000x4000, square nuclei of 16 px and the same grid shifted by 8 px (benchmarks/bench_metrics.py"
        " touching_grid)",
        "nuclei": [scores["n_true"], scores["n_pred"]],
        "seconds": seconds,
        "peak_mb": peak_mb,
        "aji_plus": scores["aji_plus"],
        "before": "a dense table of true x predicted nuclei for AJI+: 29 GiB asked for, MemoryError",
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

    reference_score_tile = _reference_score_tile()
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
    large = large_pair()

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
        "large_pair": large,
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
        json.dumps(
            {k: result[k] for k in ("score_tile_ms", "baseline_ms", "speedup", "evaluate", "large_pair")},
            indent=2,
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
