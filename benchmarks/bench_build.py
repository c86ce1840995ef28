"""Time of the dataset build and of loading the result, on the real release.

Run: ``.venv/bin/python benchmarks/bench_build.py [--source RELEASE] [--out results] [--repeats 3]``; writes
``results/build_timings.json`` and ``results/build_timings.md``. Each repeat, in this process:

- ``build``: ``cryonuseg_hf.data.build.build`` of all three configs (card by
  ``cryonuseg_hf.reports.dataset_card.dataset_card``) from the raw release folder into a fresh temporary folder,
  with its per-stage times and the CPU seconds it used (this process and the processes it spreads tiles over;
  unlike the wall time, this hardly depends on what else the machine runs);
- ``build_from_zip`` (once): the same from a store-only zip of the release, extraction included;
- ``load_and_decode``: ``datasets.load_dataset(<folder>, split="train")`` with an empty cache folder (so the
  Parquet -> Arrow preparation is included; the ``datasets`` import is not) and then every column of all 30 rows
  decoded: each ``Image`` column to a numpy array (the 16-bit masks to uint16) and the ``nuclei`` polygons to Python
  lists.

The targets: build <= 10 s, load + decode <= 3 s, on a 2-core CPU. The machine may be shared, so the JSON also
records the load average before each build; the minimum over repeats is the figure to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUILD_TARGET_S = 10.0
LOAD_TARGET_S = 3.0


def load_and_decode(folder: Path, cache_dir: Path) -> dict[str, float]:
    """``load_dataset`` into an empty cache, then decode every value of every row."""
    import numpy as np
    from datasets import load_dataset

    start = time.perf_counter()
    dataset = load_dataset(str(folder), split="train", cache_dir=str(cache_dir))
    loaded = time.perf_counter()
    n_pixels = 0
    for row in dataset:
        for value in row.values():
            if hasattr(value, "mode"):  # a decoded PIL image
                n_pixels += np.asarray(value).size
        assert len(row["nuclei"]) == row["n_nuclei"]
    assert n_pixels > 30 * 512 * 512 * 20
    done = time.perf_counter()
    return {
        "load": round(loaded - start, 3),
        "decode": round(done - loaded, 3),
        "total": round(done - start, 3),
    }


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (user + system)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def main(argv: list[str] | None = None) -> int:
    import datasets
    import PIL
    import pyarrow

    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.data.release import default_source
    from cryonuseg_hf.reports.dataset_card import dataset_card

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=None, help="raw release folder (default: default_source())"
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    source = args.source or default_source()
    load_average = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    builds, loads = [], []
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        tmp = Path(tmp)
        for i in range(args.repeats):
            stages: dict[str, float] = {"load_average": round(os.getloadavg()[0], 2)}
            cpu = _cpu_seconds()
            out = build(source, tmp / f"build{i}" / "cryonuseg", card=dataset_card, timings=stages)
            stages["cpu_s"] = round(_cpu_seconds() - cpu, 3)
            builds.append(stages)
            print(f"build {i}: {stages['total']:.1f} s {stages}", flush=True)
            loads.append(load_and_decode(out, tmp / f"cache{i}"))
            print(f"load + decode {i}: {loads[-1]}", flush=True)
        archive = tmp / "release.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(source))
        tempfile.tempdir = str(tmp)  # extract under tmp, not into the shared temp folder
        zip_stages: dict[str, float] = {}
        build(archive, tmp / "from_zip" / "cryonuseg", card=dataset_card, timings=zip_stages)
        tempfile.tempdir = None
        print(f"build from zip: {zip_stages['total']:.1f} s", flush=True)
        sizes = {p.parent.name: p.stat().st_size for p in (tmp / "build0" / "cryonuseg").rglob("*.parquet")}
        shutil.rmtree(tmp / "from_zip", ignore_errors=True)

    stage_names = [name for name in builds[0] if name not in ("load_average", "cpu_s")]
    result = {
        "command": "python benchmarks/bench_build.py --repeats " + str(args.repeats),
        "machine": machine_description(),
        "load_average_at_start": load_average,
        "python": platform.python_version(),
        "versions": {
            "datasets": datasets.__version__,
            "pyarrow": pyarrow.__version__,
            "pillow": PIL.__version__,
        },
        "repeats": args.repeats,
        "build_s": _summary([b["total"] for b in builds]),
        "build_cpu_s": _summary([b["cpu_s"] for b in builds]),
        "workers": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "build_stages_s_min": {name: round(min(b[name] for b in builds), 3) for name in stage_names},
        "build_from_zip_s": zip_stages["total"],
        "load_and_decode_s": _summary([x["total"] for x in loads]),
        "load_s": _summary([x["load"] for x in loads]),
        "decode_s": _summary([x["decode"] for x in loads]),
        "targets_s": {"build": BUILD_TARGET_S, "load_and_decode": LOAD_TARGET_S},
        "parquet_bytes": sizes,
        "runs": {"build": builds, "load_and_decode": loads},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build_timings.json").write_text(json.dumps(result, indent=2) + "\n")
    stage_rows = "\n".join(
        f"| {name} | {value:.2f} |" for name, value in result["build_stages_s_min"].items()
    )
    (args.out / "build_timings.md").write_text(
        f"""# Dataset build and load timings

Command: `{result["command"]}` (writes this file and `build_timings.json`).
Machine: {result["machine"]}; load average at start {load_average}, before each build \
{", ".join(str(b["load_average"]) for b in builds)}; tiles spread over {result["workers"]} processes; \
Python {result["python"]}, datasets {datasets.__version__}, pyarrow {pyarrow.__version__}, Pillow {PIL.__version__}.

| what | min | median | max | target |
|---|---|---|---|---|
| build all three configs from the release folder (s) | {result["build_s"]["min"]} | {result["build_s"]["median"]} \
| {result["build_s"]["max"]} | <= {BUILD_TARGET_S:g} |
| CPU seconds of that build, all its processes (s) | {result["build_cpu_s"]["min"]} \
| {result["build_cpu_s"]["median"]} | {result["build_cpu_s"]["max"]} | |
| `load_dataset(<folder>)` + decode all 30 rows, every column (s) | {result["load_and_decode_s"]["min"]} \
| {result["load_and_decode_s"]["median"]} | {result["load_and_decode_s"]["max"]} | <= {LOAD_TARGET_S:g} |
| of which `load_dataset` (empty cache) (s) | {result["load_s"]["min"]} | {result["load_s"]["median"]} \
| {result["load_s"]["max"]} | |
| of which decoding (s) | {result["decode_s"]["min"]} | {result["decode_s"]["median"]} | {result["decode_s"]["max"]} | |
| build from a store-only zip of the release, extraction included (s, one run) | {zip_stages["total"]} | | | |

Build stages (minimum over repeats, seconds):

| stage | s |
|---|---|
{stage_rows}

Parquet sizes (bytes): {", ".join(f"{k} {v:,}" for k, v in sorted(sizes.items()))}.
"""
    )
    print(
        json.dumps(
            {k: result[k] for k in ("build_s", "build_cpu_s", "load_and_decode_s", "build_from_zip_s")}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
