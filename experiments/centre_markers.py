"""Which channel should seed the watershed of a model trained with the centre class: its centres, or its interior?

For each fold model of a CV run trained with ``--centre-fraction``, the held-out tiles (with TTA, as the CV
predicts them) and the fold's tuning tiles (without TTA, as ``train`` tunes) are predicted once; then the
post-processing is tuned on the tuning tiles and scored on the held-out tiles twice:

- ``centre``: the four channels as the model gives them (the centres seed, as ``train`` does);
- ``interior``: the centre channel added to the interior's (the three classes of the recipe), so the interior seeds.

Both tune against all three mark-ups (the recipe's ``--all-markups``) and are scored against each.

    python experiments/centre_markers.py --cv <CV folder> --folds 0 1 4

Writes ``<out>/centre_markers.json`` and ``<out>/centre_markers.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.folds import TILE_IDS, tiles_of_fold
from cryonuseg_hf.core.machine import machine_description
from cryonuseg_hf.core.markdown import table
from cryonuseg_hf.data.release import MARKUPS
from cryonuseg_hf.evaluation.metrics import score_tile
from cryonuseg_hf.model.postprocess import probabilities_to_instances, tune_params
from cryonuseg_hf.model.predict import open_predictor
from cryonuseg_hf.training.data import load_tiles, training_indices, tuning_tiles

VARIANTS = ("centre", "interior")


def as_variant(probabilities: np.ndarray, variant: str) -> np.ndarray:
    """The (C, H, W) probabilities a variant post-processes: as given, or the centre merged into the interior."""
    if variant == "centre":
        return probabilities
    merged = probabilities[:3].copy()
    merged[1] += probabilities[3]
    return merged


def fold_scores(cv: Path, fold: int, tiles: dict, threads: int) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> mark-up -> mean AJI / PQ / predicted nuclei over the fold's held-out tiles."""
    predictor = open_predictor(cv / "models" / f"fold_{fold}", "cpu", "torch", threads)
    tune = tuning_tiles(training_indices(fold), 9)
    held = [TILE_IDS.index(t) for t in tiles_of_fold(fold)]
    tune_probs = [predictor.probabilities(tiles["images"][i], tta=False) for i in tune]
    held_probs = [predictor.probabilities(tiles["images"][i], tta=True) for i in held]
    references = [[tiles["masks"][m][i] for m in MARKUPS] for i in tune]
    results = {}
    for variant in VARIANTS:
        params, _ = tune_params([as_variant(p, variant) for p in tune_probs], references, workers=1)
        labels = [probabilities_to_instances(as_variant(p, variant), params) for p in held_probs]
        results[variant] = {"params": params.to_dict()}
        for markup in MARKUPS:
            scores = [score_tile(tiles["masks"][markup][i], lab) for i, lab in zip(held, labels, strict=True)]
            results[variant][markup] = {
                "aji": float(np.mean([s["aji"] for s in scores])),
                "pq": float(np.mean([s["pq"] for s in scores])),
                "n_pred": int(sum(int(lab.max()) for lab in labels)),
            }
        print(fold, variant, {m: round(results[variant][m]["pq"], 4) for m in MARKUPS}, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cv", type=Path, required=True, help="a CV folder trained with --centre-fraction")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 4])
    parser.add_argument("--out", type=Path, default=Path("experiments/results/centre_markers"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    tiles = load_tiles()
    per_fold = {fold: fold_scores(args.cv, fold, tiles, args.threads) for fold in args.folds}
    mean = {
        v: {m: {k: float(np.mean([per_fold[f][v][m][k] for f in args.folds])) for k in ("aji", "pq")}
            for m in MARKUPS}
        for v in VARIANTS
    }  # fmt: skip
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_description("cpu"),
        "folds": args.folds,
        "mean": mean,
        "per_fold": per_fold,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "centre_markers.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = [
        [v, *(f"{mean[v][m]['aji']:.4f} / {mean[v][m]['pq']:.4f}" for m in MARKUPS),
         str(sum(per_fold[f][v][MARKUPS[0]]["n_pred"] for f in args.folds))]
        for v in VARIANTS
    ]  # fmt: skip
    text = (
        "# Seeding a centre-class model with its centres or its interior\n\n"
        f"Command: `{record['command']}`. Machine: {record['machine']}. Folds {args.folds}; mean over their "
        "held-out tiles (TTA), post-processing tuned per variant on each fold's 9 tuning tiles against all three "
        "mark-ups.\n\n"
        + "\n".join(table(["seeds", *(f"AJI / PQ vs {m}" for m in MARKUPS), "nuclei predicted"], rows))
        + "\n"
    )
    (args.out / "centre_markers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
