"""What a prediction path costs in accuracy on held-out tiles: the same fold models, several backends/precisions.

Run after ``cryonuseg-hf train --fold K ... --out DIR`` (which keeps each fold's checkpoint in ``DIR/models/fold_K``):

    python benchmarks/bench_path_accuracy.py --cv results/cv
    python benchmarks/bench_path_accuracy.py --cv results/cv --paths "onnx fp32" "openvino bf16"

Each fold model present predicts its 3 held-out tiles with 8-view test-time augmentation (as the CV does) through
each path (``BACKEND PRECISION``, the folded head and ``predict_instances``), and every path is scored against
each mark-up. Writes ``results/path_accuracy.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("aji", "aji_plus", "pq", "dice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=Path, default=REPO / "results" / "cv")
    parser.add_argument(
        "--paths", nargs="+", default=["onnx fp32", "openvino bf16"], help="'BACKEND PRECISION'"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args()

    from cryonuseg_hf.core.folds import N_FOLDS, TILE_IDS, tiles_of_fold
    from cryonuseg_hf.core.machine import load_words, machine_description
    from cryonuseg_hf.evaluation.score import score_predictions
    from cryonuseg_hf.model.predict import load_predictor, predict_instances
    from cryonuseg_hf.training.data import load_tiles

    folds = [k for k in range(N_FOLDS) if (args.cv / "models" / f"fold_{k}" / "config.json").is_file()]
    if not folds:
        raise SystemExit(
            f"{args.cv}/models: no fold checkpoints; run `cryonuseg-hf train --fold K --out {args.cv}`"
        )
    tiles = load_tiles(None)
    held_out = [t for k in folds for t in tiles_of_fold(k)]
    masks = {m: {t: stack[TILE_IDS.index(t)] for t in held_out} for m, stack in tiles["masks"].items()}
    load_before = os.getloadavg()[0]
    scores, seconds, labels = {}, {}, {}
    for path in args.paths:
        backend, precision = path.split()
        predictions, start = {}, time.perf_counter()
        for fold in folds:
            predictor = load_predictor(
                args.cv / "models" / f"fold_{fold}", device="cpu", backend=backend, threads=args.threads,
                head="folded", precision=precision,
            )  # fmt: skip
            for tile in tiles_of_fold(fold):
                predictions[tile] = predict_instances(
                    tiles["images"][TILE_IDS.index(tile)], predictor, tta=True
                )
        seconds[path] = round(time.perf_counter() - start, 1)
        labels[path] = predictions
        scores[path] = score_predictions(predictions, masks, list(masks))
    load_after = os.getloadavg()[0]
    first = args.paths[0]
    agreement = {
        path: score_predictions(labels[path], {first: labels[first]}, [first])[first]["pq"]
        for path in args.paths
    }
    record = {
        "command": shlex.join(["python", "benchmarks/bench_path_accuracy.py", *sys.argv[1:]]),
        "machine": machine_description(),
        "load": [round(load_before, 2), round(load_after, 2)],
        "folds": folds,
        "tiles": held_out,
        "seconds": seconds,
        "scores": {p: {m: {k: s[m][k] for k in METRICS} for m in s} for p, s in scores.items()},
        "pq_against_first_path": agreement,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "path_accuracy.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Accuracy of each prediction path on held-out tiles",
        "",
        f"Produced by `{record['command']}` on {record['machine']}, {load_words(load_before, load_after)}: the "
        f"fold models of `{args.cv.name}` (folds {', '.join(map(str, folds))}) predict their {len(held_out)} "
        "held-out tiles with 8-view test-time augmentation and the folded head, through each path. Mean over "
        "those tiles.",
        "",
        "| reference | path | AJI | AJI+ | PQ | Dice |",
        "|---|---|---|---|---|---|",
    ]
    for markup in masks:
        for path in args.paths:
            s = scores[path][markup]
            lines.append(f"| {markup} | {path} | " + " | ".join(f"{s[k]:.4f}" for k in METRICS) + " |")
    lines += [
        "",
        "| path | seconds for all tiles | PQ of its labels against the first path's |",
        "|---|---|---|",
    ]
    lines += [f"| {p} | {seconds[p]} | {agreement[p]:.4f} |" for p in args.paths]
    (args.out / "path_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
