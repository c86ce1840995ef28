"""How stable the fold models of training runs are under small shifts, on their held-out tiles.

``bench_predict.py`` checks the issue's criterion on the shipped model and one tile. This compares recipes: for
each run folder (``train --cv`` or ``train --fold``, which keep each fold's checkpoint in ``models/fold_K``,
git-ignored), each fold model predicts each of its held-out tiles as ``predict_instances`` does by default (no
test-time augmentation, unless ``--tta``; torch backend) alone and shifted by a few pixels (the tile cropped by
``s`` pixels at the top and left), and PQ compares the two on the pixels they share. A perfectly
shift-equivariant model scores 1.

    .venv/bin/python benchmarks/shift_stability.py --runs results/cv experiments/results/NAME --folds 0 1 4

Writes ``experiments/results/shift_stability.json`` and ``.md`` (``--out`` for another path).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "experiments" / "results" / "shift_stability"


def stability(labeller, folds: list[int], shifts: list[int], tiles: dict) -> dict:
    """Mean PQ of each shift over the held-out tiles of ``folds``, and the per-tile values; ``labeller(fold)``
    returns the function that labels an image for that fold."""
    from cryonuseg_hf.core.folds import TILE_IDS, tiles_of_fold
    from cryonuseg_hf.evaluation.metrics import score_tile

    per_tile: dict[str, dict[str, float]] = {}
    for fold in folds:
        label = labeller(fold)
        for tile in tiles_of_fold(fold):
            image = tiles["images"][TILE_IDS.index(tile)]
            alone = label(image)
            per_tile[tile] = {
                str(s): round(score_tile(alone[s:, s:], label(image[s:, s:]))["pq"], 4) for s in shifts
            }
    means = {str(s): round(float(np.mean([v[str(s)] for v in per_tile.values()])), 4) for s in shifts}
    return {"mean_pq": means, "per_tile": per_tile}


def fold_models(run: Path, threads: int, tta: bool):
    """The labeller of a run's fold models (``run/models/fold_K``), as ``predict_instances`` runs them."""
    from cryonuseg_hf.model.predict import load_predictor, predict_instances

    def labeller(fold: int):
        model = run / "models" / f"fold_{fold}"
        if not (model / "config.json").is_file():
            raise FileNotFoundError(f"{model}: no fold checkpoint (train this fold of the run first)")
        predictor = load_predictor(model, device="cpu", backend="torch", threads=threads)
        return lambda image: predict_instances(image, predictor, tta=tta)

    return labeller


def instanseg(threads: int):
    """The labeller of the peer, InstanSeg zero-shot on tiles resized to 0.75 (as ``bench_peers.py`` runs it);
    the same for every fold, since it never saw CryoNuSeg."""
    import torch
    from bench_peers import FIXED_FACTOR, default_model_dir, load_model, segment

    torch.set_num_threads(threads)
    model = load_model(default_model_dir())
    return lambda fold: lambda image: segment(model, image, FIXED_FACTOR)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="run folders holding models/fold_K"
    )
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 4])
    parser.add_argument("--shifts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="predict with 8-view TTA (as the CV does)")
    parser.add_argument("--peer", action="store_true", help="also InstanSeg zero-shot (resized 0.75)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="path without suffix (.json, .md)")
    args = parser.parse_args()

    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.training.data import load_tiles

    tiles = load_tiles(None)
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    runs = []
    for run in args.runs:
        name = run.resolve().relative_to(REPO) if run.resolve().is_relative_to(REPO) else run
        labeller = fold_models(run.resolve(), args.threads, args.tta)
        runs.append({"run": str(name), **stability(labeller, args.folds, args.shifts, tiles)})
    if args.peer:
        peer = stability(instanseg(args.threads), args.folds, args.shifts, tiles)
        runs.append({"run": "InstanSeg zero-shot, resized 0.75 (peer)", **peer})
    command = "python benchmarks/shift_stability.py --runs " + " ".join(
        r["run"] for r in runs[: len(args.runs)]
    )
    command += " --folds " + " ".join(map(str, args.folds)) + " --shifts " + " ".join(map(str, args.shifts))
    command += (" --tta" if args.tta else "") + (" --peer" if args.peer else "")
    command += f" --out {args.out}" if args.out != DEFAULT_OUT else ""
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
