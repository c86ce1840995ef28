"""Scaling past one process: a cohort of slides on 1 and 2 Dask workers, training steps on 1 and 2 processes.

    .venv/bin/python benchmarks/bench_scaling.py [--slides 8] [--steps 30]   # writes results/scaling.json/.md

The CryoNuSeg release comes from $CRYONUSEG_DATA (or --source), the pretraining data from $CRYONUSEG_EXTERNAL.

- Cohort: ``--slides`` pyramidal TIFFs, each white glass with two real CryoNuSeg tiles side by side (different
  tiles for each slide), predicted by ``cryonuseg-hf predict <folder>`` with the shipped checkpoint on
  onnxruntime, on a local Dask cluster of 1 worker with 1 model thread, 1 worker with all the cores' threads
  (``--workers 1``, the default threads) and 2 workers with 1 thread each (``--workers 2``). Slides per hour
  come from the command's wall time, which includes starting the cluster and loading the model in each worker.
- Training: ``cryonuseg-hf pretrain`` on NuInsSeg human spleen ($CRYONUSEG_EXTERNAL) with the first-stage recipe
  (``segformer-b0-pretrain``: b0, 8 crops of 128² per process and step, bf16 autocast), ``--steps`` steps, in 1
  process (1 and 2 threads) and under ``accelerate launch`` in 2 processes of 1 thread (distributed data
  parallel, gloo). Steps per second come from the run's record (the training loop only: data loading excluded);
  crops per second count every process's crops.

On a machine of N cores the ratios are what count: two workers (processes) against one worker of the same threads,
and against one worker using the cores as threads. The 1-minute load average is recorded before and after each run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def load() -> float:
    return round(os.getloadavg()[0], 2)


SETTLE_SECONDS = 45
"""Pause before each run, so that its load before is not the tail of the run before it (the 1-minute load average
decays by e^-1 a minute)."""


def timed(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command``; its wall seconds and the load average before and after. Raises on a failure."""
    time.sleep(SETTLE_SECONDS)
    before, started = load(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {
        "command": shlex.join(command),
        "seconds": round(seconds, 1),
        "load_before": before,
        "load_after": load(),
    }


def write_slides(folder: Path, count: int, source: str | None) -> list[str]:
    """``count`` slides of two real CryoNuSeg tiles each on white glass; returns the tiles used."""
    from cryonuseg_hf.core.folds import TILE_IDS
    from cryonuseg_hf.data.release import default_source, open_release
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.slides.pyramid import write_pyramid
    from cryonuseg_hf.model.slides.reader import MODEL_MPP

    release = open_release(Path(source) if source else default_source())
    tiles = [TILE_IDS[(2 * k + j) % len(TILE_IDS)] for k in range(count) for j in range(2)]
    folder.mkdir(parents=True)
    for k in range(count):
        image = np.full((1024, 1536, 3), 255, np.uint8)
        for j in range(2):
            image[256:768, 256 + 512 * j : 768 + 512 * j] = read_image(release.images[tiles[2 * k + j]])
        write_pyramid(folder / f"slide_{k:02d}.tif", image, MODEL_MPP, steps=(1, 4, 16))
    return tiles


def cohort_runs(slides: Path, work: Path, env: dict[str, str]) -> list[dict]:
    cores = len(os.sched_getaffinity(0))
    runs = []
    for workers, threads in ((1, 1), (1, cores), (2, 1)):
        out = work / f"out_{workers}x{threads}"
        command = [sys.executable, "-m", "cryonuseg_hf.cli", "predict", str(slides), "-o", str(out)]
        command += [
            "--backend",
            "onnx",
            "--device",
            "cpu",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ]
        run = timed(command, env)
        with open(out / "cohort_summary.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        if any(r["status"] != "done" for r in rows):
            raise RuntimeError(f"{out}: not every slide was done; see its cohort_summary.md")
        run.update(
            workers=workers, threads=threads, slides=len(rows), slides_per_hour=round(len(rows) / run["seconds"] * 3600),
            tissue_mm2_per_slide=round(float(np.mean([float(r["tissue_mm2"]) for r in rows])), 4),
            nuclei=sum(int(r["nuclei"]) for r in rows),
            slide_seconds=round(float(np.mean([float(r["seconds"]) for r in rows])), 1),
        )  # fmt: skip
        runs.append(run)
        print(
            f"cohort {workers} worker(s) x {threads} thread(s): {run['slides_per_hour']} slides/h", flush=True
        )
    return runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_runs(data: Path, work: Path, steps: int, env: dict[str, str]) -> list[dict]:
    cores = len(os.sched_getaffinity(0))
    pretrain = [
        "-m",
        "cryonuseg_hf.cli",
        "pretrain",
        "--recipe",
        "segformer-b0-pretrain",
        "--data",
        str(data),
    ]
    pretrain += ["--steps", str(steps), "--warmup", "10", "--device", "cpu", "--save-every", "100000"]
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"]
    launch += [
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    runs = []
    for processes, threads in ((1, 1), (1, cores), (2, 1)):
        out = work / f"pretrained_{processes}x{threads}"
        args = [*pretrain, "--out", str(out), "--threads", str(threads)]
        if processes == 1:
            command = [sys.executable, *args]
        else:
            command = [*launch, "--main_process_port", str(_free_port()), *args]
        run = timed(command, env)
        record = json.loads((out / "pretrain.json").read_text())
        assert record["processes"] == processes, record["processes"]
        per_second = record["steps"] / record["train_seconds"]
        crops = per_second * processes * record["config"]["batch_size"]
        run.update(
            processes=processes, threads=threads, steps=record["steps"], train_seconds=record["train_seconds"],
            steps_per_second=round(per_second, 3), crops_per_second=round(crops, 2),
        )  # fmt: skip
        runs.append(run)
        print(f"training {processes} process(es) x {threads} thread(s): {crops:.2f} crops/s", flush=True)
    return runs


def ratio(runs: list[dict], key: str, a: tuple[int, int], b: tuple[int, int]) -> float:
    """``key`` of the run with (workers or processes, threads) ``b`` over that of the run ``a``."""

    def pick(size):
        return next(r for r in runs if (r.get("workers", r.get("processes")), r["threads"]) == size)

    return round(pick(b)[key] / pick(a)[key], 2)


def markdown(result: dict) -> str:
    cohort, train, cores = result["cohort"], result["training"], result["cores"]
    lines = [
        "# Scaling: a cohort of slides on Dask workers, training on processes",
        "",
        f"Made by `{result['command']}` on {result['machine']}; 1-minute load average {result['load_at_start']} "
        f"when the first run started. Each row gives the load before the run (taken {SETTLE_SECONDS} s after the "
        "run before it, whose tail it still counts) and after it. The ratios, measured back to back, count more "
        "than the absolute numbers.",
        "",
        f"## Cohort: {cohort[0]['slides']} slides, `cryonuseg-hf predict <folder>`",
        "",
        f"Each slide is white glass with two real CryoNuSeg tiles ({cohort[0]['tissue_mm2_per_slide']} mm² of "
        "tissue found per slide); the shipped checkpoint on onnxruntime. Seconds: the wall time of the whole "
        "command, starting the local cluster and loading the model in each worker included; seconds per slide: "
        "the mean time a worker spent on one slide.",
        "",
        "| workers x model threads | seconds | slides per hour | seconds per slide | nuclei | load before / after |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['workers']} x {r['threads']} | {r['seconds']} | {r['slides_per_hour']} | {r['slide_seconds']} | "
        f"{r['nuclei']} | {r['load_before']} / {r['load_after']} |"
        for r in cohort
    ]
    lines += [
        "",
        f"- 2 workers x 1 thread against 1 worker x 1 thread: **{result['ratios']['cohort_2x1_over_1x1']}x** the "
        f"slides per hour; against 1 worker x {cores} threads (the same cores as threads): "
        f"**{result['ratios']['cohort_2x1_over_1x' + str(cores)]}x**.",
        "",
        f"## Training: `cryonuseg-hf pretrain --recipe segformer-b0-pretrain`, {train[0]['steps']} steps",
        "",
        "b0, 8 crops of 128² per process and step, bf16 autocast, NuInsSeg human spleen. Two processes run under "
        "`accelerate launch` (distributed data parallel over gloo): each step trains on both processes' crops. "
        "Timing from the run's record (the training loop; loading the data excluded).",
        "",
        "| processes x threads | steps per second | crops per second | load before / after |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['processes']} x {r['threads']} | {r['steps_per_second']} | {r['crops_per_second']} | "
        f"{r['load_before']} / {r['load_after']} |"
        for r in train
    ]
    lines += [
        "",
        f"- 2 processes x 1 thread against 1 process x 1 thread: **{result['ratios']['train_2x1_over_1x1']}x** the "
        f"crops per second; against 1 process x {cores} threads: "
        f"**{result['ratios']['train_2x1_over_1x' + str(cores)]}x**.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.data.external import default_external

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=8, help="slides in the cohort")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--source", default=None, help="CryoNuSeg release (default: $CRYONUSEG_DATA)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for scaling.json and scaling.md")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        tiles = write_slides(work / "slides", args.slides, args.source)
        cohort = cohort_runs(work / "slides", work, env)
        train = training_runs(default_external() / "nuinsseg_human_spleen", work, args.steps, env)
    result = {
        "command": shlex.join(["python", "benchmarks/bench_scaling.py", *sys.argv[1:]]),
        "machine": machine_description(),
        "cores": cores,
        "load_at_start": cohort[0]["load_before"],
        "tiles": tiles,
        "cohort": cohort,
        "training": train,
        "ratios": {
            "cohort_2x1_over_1x1": ratio(cohort, "slides_per_hour", (1, 1), (2, 1)),
            f"cohort_2x1_over_1x{cores}": ratio(cohort, "slides_per_hour", (1, cores), (2, 1)),
            "train_2x1_over_1x1": ratio(train, "crops_per_second", (1, 1), (2, 1)),
            f"train_2x1_over_1x{cores}": ratio(train, "crops_per_second", (1, cores), (2, 1)),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "scaling.md").write_text(markdown(result))
    print(f"wrote {args.out / 'scaling.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
