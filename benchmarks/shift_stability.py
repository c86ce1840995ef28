"""How stable the fold models of training runs are under small shifts, on their held-out tiles.

``bench_predict.py`` checks the issue's criterion on the shipped model and one tile. This compares recipes: for
each run folder (``train --cv`` or ``train --fold``, which keep each fold's checkpoint in ``models/fold_K``,
git-ignored), each fold model predicts each of its held-out tiles as ``predict_instances`` does by default (no
test-time augmentation, unless ``--tta``; torch backend) alone and shifted by a few pixels (the tile cropped by
``s`` pixels at the top and left), and PQ compares the two on the pixels they share. A perfectly
shift-equivariant model scores 1.

    .venv/bin/python benchmarks/shift_stability.py --runs results/cv results/experiments/NAME --folds 0 1 4

Writes ``results/experiments/shift_stability.json`` and ``.md`` (``--out`` for another path).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "experiments" / "shift_stability"


def run_stability(
    run: Path, folds: list[int], shifts: list[int], threads: int, tiles: dict, tta: bool = False
) -> dict:
    """Mean PQ of each shift over the held-out tiles of ``folds``, and the per-tile values."""
    from cryonuseg_hf.core.folds import TILE_IDS, tiles_of_fold
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.predict import load_predictor, predict_instances

    per_tile: dict[str, dict[str, float]] = {}
    for fold in folds:
        model = run / "models" / f"fold_{fold}"
        if not (model / "config.json").is_file():
            raise FileNotFoundError(f"{model}: no fold checkpoint (train this fold of the run first)")
        predictor = load_predictor(model, device="cpu", backend="torch", threads=threads)
        for tile in tiles_of_fold(fold):
            image = tiles["images"][TILE_IDS.index(tile)]
            alone = predict_instances(image, predictor, tta=tta)
            per_tile[tile] = {
                str(s): round(
                    score_tile(alone[s:, s:], predict_instances(image[s:, s:], predictor, tta=tta))["pq"], 4
                )
                for s in shifts
            }
    means = {str(s): round(float(np.mean([v[str(s)] for v in per_tile.values()])), 4) for s in shifts}
    name = run.relative_to(REPO) if run.is_relative_to(REPO) else run
    return {"run": str(name), "mean_pq": means, "per_tile": per_tile}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="run folders holding models/fold_K"
    )
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 4])
    parser.add_argument("--shifts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="predict with 8-view TTA (as the CV does)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="path without suffix (.json, .md)")
    args = parser.parse_args()

    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.training.data import load_tiles

    tiles = load_tiles(None)
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    runs = [
        run_stability(r.resolve(), args.folds, args.shifts, args.threads, tiles, args.tta) for r in args.runs
    ]
    command = "python benchmarks/shift_stability.py --runs " + " ".join(r["run"] for r in runs)
    command += " --folds " + " ".join(map(str, args.folds)) + " --shifts " + " ".join(map(str, args.shifts))
    command += (" --tta" if args.tta else "") + (f" --out {args.out}" if args.out != DEFAULT_OUT else "")
    record = {
        "command": command,
        "machine": machine_description(),
        "load_average_1_5_15_min_at_start": load_at_start,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Shift stability of fold models on their held-out tiles",
        "",
        f"Produced by `{command}` on {record['machine']} (load {load_at_start[0]} at the start). Each fold model predicts each of its held-out tiles "
        f"({'with 8-view test-time augmentation' if args.tta else 'default path: no test-time augmentation'}) "
        "alone and shifted by s pixels; PQ between the two on the "
        f"pixels they share, mean over the {len(runs[0]['per_tile'])} tiles of folds "
        f"{', '.join(map(str, args.folds))}. 1 = perfectly shift-equivariant.",
        "",
        "| run | " + " | ".join(f"PQ, shift {s} px" for s in args.shifts) + " |",
        "|---|" + "---|" * len(args.shifts),
    ]
    for r in runs:
        lines.append(
            f"| `{r['run']}` | " + " | ".join(f"{r['mean_pq'][str(s)]:.3f}" for s in args.shifts) + " |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
