"""The CV as a user's default ``predict`` sees it: each fold's saved model, onnxruntime, no test-time augmentation.

Run after ``cryonuseg-hf train --cv`` (which keeps each fold's checkpoint in ``results/cv/models/fold_K``, git-
ignored): ``.venv/bin/python benchmarks/bench_cv_default_predict.py``. Writes ``results/cv/default_predict.json``
and ``.md``.

The CV's own held-out predictions (``results/cv/predictions``) use 8-view test-time augmentation and the torch
backend; ``cryonuseg-hf predict`` and ``predict_instances`` default to onnxruntime without augmentation (8x
faster). This scores that default path on the same held-out tiles with the same fold models, so a user knows
what the faster default costs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=Path, default=REPO / "results" / "cv")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from cryonuseg_hf.core.folds import N_FOLDS, TILE_IDS, tiles_of_fold
    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.evaluation.predictions import match_files, read_predictions
    from cryonuseg_hf.evaluation.score import score_predictions
    from cryonuseg_hf.model.predict import load_predictor, predict_instances
    from cryonuseg_hf.training.data import load_tiles

    tiles = load_tiles(None)
    predictions, seconds = {}, []
    for fold in range(N_FOLDS):
        model = args.cv / "models" / f"fold_{fold}"
        if not (model / "config.json").is_file():
            raise FileNotFoundError(f"{model}: no fold checkpoint; run `cryonuseg-hf train --cv` first")
        predictor = load_predictor(model, device="cpu", backend=args.backend, threads=args.threads)
        for tile in tiles_of_fold(fold):
            start = time.perf_counter()
            predictions[tile] = predict_instances(tiles["images"][TILE_IDS.index(tile)], predictor)
            seconds.append(time.perf_counter() - start)
    masks = {m: dict(zip(tiles["tile_ids"], stack, strict=True)) for m, stack in tiles["masks"].items()}
    default = score_predictions(predictions, masks, list(masks))
    tta = score_predictions(
        read_predictions(match_files(args.cv / "predictions", "*.png")), masks, list(masks)
    )
    metrics = ("aji", "aji_plus", "pq", "dice")
    record = {
        "command": "python benchmarks/bench_cv_default_predict.py"
        + (f" --backend {args.backend}" if args.backend != "onnx" else ""),
        "machine": machine_description(),
        "threads": args.threads,
        "backend": args.backend,
        "seconds_per_tile_median": round(sorted(seconds)[len(seconds) // 2], 3),
        "default_predict": {m: {k: default[m][k] for k in metrics} for m in default},
        "cv_with_tta": {m: {k: tta[m][k] for k in metrics} for m in tta},
    }
    (args.cv / "default_predict.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# The CV through the default prediction path",
        "",
        f"Produced by `{record['command']}` on {record['machine']}, {args.threads} threads: each fold's saved "
        f"model predicts its 3 held-out tiles with `predict_instances` defaults ({args.backend}, no test-time "
        f"augmentation; median {record['seconds_per_tile_median']} s per tile end to end), beside the CV's own "
        "predictions (8-view TTA). Mean over the 30 held-out tiles.",
        "",
        "| reference | path | AJI | AJI+ | PQ | Dice |",
        "|---|---|---|---|---|---|",
    ]
    for markup in default:
        for label, scores in (("default (no TTA)", default), ("CV, 8-view TTA", tta)):
            s = scores[markup]
            lines.append(f"| {markup} | {label} | " + " | ".join(f"{s[k]:.4f}" for k in metrics) + " |")
    (args.cv / "default_predict.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
