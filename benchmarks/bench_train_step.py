"""CPU time per SegFormer training step (the loop of ``cryonuseg_hf.training.loop``), written to ``results/``.

Run: ``.venv/bin/python benchmarks/bench_train_step.py [--steps 3] [--threads 2]``. Writes
``results/train_step_cpu.json`` and ``.md``. Each setting trains a fresh model on the training tiles of fold 1
with the full step of the library (on-device crops, augmentation, forward, loss, backward, AdamW); one untimed
step first. Wall time depends on what else the machine runs; process CPU time (all threads) much less, so both
are reported, with the load average seen during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SETTINGS = [
    # (variant, input scale, first-stage stride, batch size, crop, bf16 autocast)
    ("b0", 1.0, 4, 8, 128, False),
    ("b0", 1.0, 4, 8, 128, True),
    ("b0", 1.0, 4, 2, 256, False),
    ("b0", 1.0, 2, 8, 128, False),
    ("b0", 1.0, 2, 8, 128, True),
    ("b0", 2.0, 4, 8, 128, False),
    ("b1", 1.0, 4, 8, 128, False),
    ("b0", 1.0, 4, 8, 256, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args()

    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.training.config import TrainConfig
    from cryonuseg_hf.training.cv import train_model
    from cryonuseg_hf.training.data import load_tiles

    tiles = load_tiles(None, ("annotator1_round2",))
    rows = []
    for variant, scale, stride, batch, crop, bf16 in SETTINGS:
        config = TrainConfig(
            variant=variant, input_scale=scale, first_stride=stride, batch_size=batch, crop=crop, steps=1,
            scale_jitter=0.0, threads=args.threads, device="cpu", bf16=bf16,
        )  # fmt: skip
        train_model(config, tiles, fold=1, progress=False)  # warm-up: first-step allocations, lazy imports
        config.steps = args.steps
        cpu0, load0 = time.process_time(), os.getloadavg()[0]
        _, record = train_model(config, tiles, fold=1, progress=False)
        cpu = time.process_time() - cpu0
        row = {
            "variant": variant,
            "input_scale": scale,
            "first_stride": stride,
            "bf16": bf16,
            "batch_size": batch,
            "crop": crop,
            "encoder_input": int(crop * scale),
            "steps": args.steps,
            "wall_s_per_step": record["seconds_per_step"],
            "process_cpu_s_per_step": round(cpu / args.steps, 3),
            "load_average": round((load0 + os.getloadavg()[0]) / 2, 2),
        }
        rows.append(row)
        print(row, flush=True)
    result = {
        "command": "python benchmarks/bench_train_step.py "
        + f"--steps {args.steps} --threads {args.threads}",
        "machine": machine_description(),
        "threads": args.threads,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# SegFormer training step on the CPU",
        "",
        f"Produced by `{result['command']}` on {result['machine']}, {args.threads} torch threads. One step = crops "
        "drawn and augmented on the device, forward, weighted CE + Dice loss, backward, AdamW. The machine was "
        "shared with other jobs (load average column): wall time is inflated by that; process CPU time (summed "
        "over threads) is the steadier number.",
        "",
        "| variant | input scale | first stride | bf16 | batch x crop | encoder input | wall s/step | process CPU s/step "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['input_scale']} | {r['first_stride']} | {r['bf16']} | {r['batch_size']} x "
            f"{r['crop']}² | {r['encoder_input']}² | "
            f"{r['wall_s_per_step']} | {r['process_cpu_s_per_step']} | {r['load_average']} |"
        )
    (args.out / "train_step_cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
