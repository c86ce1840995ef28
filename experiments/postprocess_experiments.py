"""How the post-processing choices move the CV score, on the fold models of a finished CV run.

Each fold model's class probabilities (with and without TTA) of its tuning tiles and its three held-out tiles are
computed once and cached; then each variant tunes its thresholds on the fold's tuning tiles (training tiles only,
as ``train --cv`` does; against annotator1_round2, or all three mark-ups where the variant says so) and is scored
on the held-out tiles against every mark-up. The fold protocol holds:
nothing about a held-out tile reaches the choice of its thresholds. Some variants also predict at another input
scale than the checkpoint's. Last, it measures how the size of the CV's matched nuclei compares with the reference.

    python experiments/postprocess_experiments.py --folds 0 1 4 --threads 2

Writes ``<out>/postprocess.json`` and ``<out>/postprocess.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cryonuseg_hf.core.folds import N_FOLDS, TILE_IDS, tiles_of_fold
from cryonuseg_hf.core.machine import machine_description
from cryonuseg_hf.core.markdown import table
from cryonuseg_hf.data.release import MARKUPS
from cryonuseg_hf.evaluation.nuclei_instance_metric.nuclei_metrics import score_tile
from cryonuseg_hf.model.postprocess import (
    CONFIDENCE_GRID,
    param_grid,
    params_from_config,
    probabilities_to_instances,
    tune_params,
)
from cryonuseg_hf.model.predict import open_predictor
from cryonuseg_hf.training.data import load_tiles, training_indices, tuning_tiles

MARKUP = "annotator1_round2"
SPLIT_DEPTHS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
MARKER_SIZES = (1, 6, 10, 20, 40)


def predictor_at(model: Path, scale: float | None, threads: int):
    """The fold checkpoint's predictor, its input scale replaced by ``scale`` (None: the checkpoint's own)."""
    import torch

    from cryonuseg_hf.model.predict import Predictor
    from cryonuseg_hf.model.segformer import image_statistics, load_checkpoint, probability_module

    params, own_scale = params_from_config(model)
    if scale is None or scale == own_scale:
        return open_predictor(model, "cpu", "torch", threads)
    network, _ = load_checkpoint(model, device="cpu")
    module = probability_module(network, scale, *image_statistics(model))

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch))[0].float().numpy()

    return Predictor(model, "torch", "cpu", scale, params, run)


def cached_probabilities(cv, fold, tiles, cache, tune_n, threads, scale, which, kind) -> np.ndarray:
    """(N, C, H, W) float16 probabilities of the fold's tuning (``which="tune"``) or held-out tiles, plain or
    TTA (``kind``), at input ``scale`` (None: the checkpoint's); cached per fold model, scale, tiles and kind."""
    model = cv / "models" / f"fold_{fold}"
    weights = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()[:12]
    which_n = f"tune{tune_n}" if which == "tune" else which  # tune_n 0 = all training tiles
    path = cache / f"fold_{fold}_{weights}_scale{scale or 'own'}_{which_n}_{kind}.npy"
    if path.is_file():  # a retrained fold model has other weights, hence another file
        return np.load(path)
    predictor = predictor_at(model, scale, threads)
    indices = fold_indices(fold, tune_n)[which]
    probs = np.stack(
        [predictor.probabilities(tiles["images"][i], tta=kind == "tta") for i in indices]
    ).astype(np.float16)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, probs)
    return probs


def fold_indices(fold: int, tune_n: int) -> dict[str, list[int]]:
    return {
        "tune": tuning_tiles(training_indices(fold), tune_n),
        "held": [TILE_IDS.index(t) for t in tiles_of_fold(fold)],
    }


def smooth(probs: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return probs
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(probs, sigma=(0, sigma, sigma))


class Variant(NamedTuple):
    """One way to tune the post-processing on a fold's tuning tiles and predict its held-out tiles."""

    tune: str = "plain"
    """Probabilities tuned on: "plain" or "tta"."""
    held: str = "tta"
    """Probabilities of the held-out tiles: "plain" or "tta"."""
    sigma: float = 0.0
    """Gaussian smoothing of the probabilities, in pixels (0: none)."""
    scale: float | None = None
    """Input scale at prediction (None: the checkpoint's own, 1.5 for the fold models of results/cv)."""
    mask_thresholds: tuple[float, ...] | None = None
    """Mask thresholds of the grid (None: param_grid's)."""
    confidences: tuple[float, ...] = ()
    """min_confidence values searched after the grid, with the minimum size (empty: no second search)."""
    tune_markups: tuple[str, ...] = (MARKUP,)
    """The mark-ups tuned against (the mean objective over them)."""
    after_grid: tuple[tuple[str, tuple], ...] = ()
    """(PostprocessParams field, values) searched after the grid, a field at a time (tune_params' after_grid)."""
    objective: str | None = None
    """The metric of ``score_tile`` the tuning maximises (None: tune_params' default, the mean of AJI and PQ)."""


VARIANTS = {
    "grid only (tune plain, predict TTA)": Variant(),
    "as in train --cv: grid, then min_size x min_confidence": Variant(confidences=CONFIDENCE_GRID),
    "as in train --all-markups: grid, then min_size x min_confidence, tuned on all three mark-ups": Variant(
        confidences=CONFIDENCE_GRID, tune_markups=MARKUPS
    ),
    "as in train --all-markups, with a search of split_depth after the grid": Variant(
        confidences=CONFIDENCE_GRID, tune_markups=MARKUPS, after_grid=(("split_depth", SPLIT_DEPTHS),)
    ),
    "as in train --all-markups, with a search of min_marker_size after the grid": Variant(
        confidences=CONFIDENCE_GRID, tune_markups=MARKUPS, after_grid=(("min_marker_size", MARKER_SIZES),)
    ),
    "as in train --all-markups, tuned for PQ alone": Variant(
        confidences=CONFIDENCE_GRID, tune_markups=MARKUPS, objective="pq"
    ),
    "tune TTA, predict TTA": Variant(tune="tta"),
    "tune TTA, predict TTA, smoothing 1 px": Variant(tune="tta", sigma=1.0),
    "grid only, predicted at input scale 1.75": Variant(scale=1.75),
    "grid only, predicted at input scale 2.0": Variant(scale=2.0),
    "grid only, mask thresholds up to 0.9": Variant(mask_thresholds=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
}


def _metric(metric: str, truth: np.ndarray, prediction: np.ndarray) -> float:
    """One metric of ``score_tile``: a tuning objective once ``metric`` is bound."""
    return float(score_tile(truth, prediction)[metric])


def run_variant(probabilities, folds, tune_n, masks, variant: Variant):
    """Per held-out tile scores against every mark-up in ``masks`` and per fold chosen parameters;
    ``probabilities(fold, scale, which, kind)``."""
    grid = param_grid(mask_thresholds=variant.mask_thresholds) if variant.mask_thresholds else param_grid()
    per_tile, chosen = {}, {}
    for fold in folds:
        indices = fold_indices(fold, tune_n)
        tune = probabilities(fold, variant.scale, "tune", variant.tune)
        tune_probs = [smooth(p.astype(np.float32), variant.sigma) for p in tune]
        refs = [[masks[m][i] for m in variant.tune_markups] for i in indices["tune"]]
        # objective: mean of AJI and PQ unless the variant names one metric (mean over the tune mark-ups)
        best, _ = tune_params(
            tune_probs,
            refs,
            candidates=grid,
            confidences=variant.confidences,
            after_grid=dict(variant.after_grid),
            objective=partial(_metric, variant.objective) if variant.objective else None,
        )
        chosen[fold] = best.to_dict()
        held = probabilities(fold, variant.scale, "held", variant.held)
        for i, p in zip(indices["held"], held, strict=True):
            labels = probabilities_to_instances(smooth(p.astype(np.float32), variant.sigma), best)
            per_tile[TILE_IDS[i]] = {m: score_tile(masks[m][i], labels) for m in masks}
    return per_tile, chosen


def size_bias(cv: Path, masks) -> dict[str, float]:
    """Of the CV's held-out predictions (``cv/predictions``), the nuclei matched at IoU > 0.5 (the metric's own
    contingency table; such matches are one to one): the median and mean area ratio prediction / reference, the
    share of predictions larger, and the mean IoU (the SQ of all tiles pooled)."""
    from cryonuseg_hf.evaluation.nuclei_instance_metric.nuclei_metrics import overlap_table
    from cryonuseg_hf.evaluation.predictions import match_files, read_predictions

    predictions = read_predictions(match_files(cv / "predictions", "*.png"))
    ratios, ious = [], []
    for i, tile in enumerate(TILE_IDS):
        t_index, p_index, inter, _, t_area, _, p_area = overlap_table(masks[i], predictions[tile])
        iou = inter / (t_area[t_index] + p_area[p_index] - inter)
        matched = iou > 0.5
        ratios.append(p_area[p_index[matched]] / t_area[t_index[matched]])
        ious.append(iou[matched])
    ratios, ious = np.concatenate(ratios), np.concatenate(ious)
    return {
        "matched_nuclei": int(ratios.size),
        "median_area_ratio": float(np.median(ratios)),
        "mean_area_ratio": float(ratios.mean()),
        "share_larger": float((ratios > 1).mean()),
        "mean_iou": float(ious.mean()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cv", type=Path, default=Path("results/cv"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pp_cache"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/postprocess"))
    parser.add_argument(
        "--data", default=None, help="raw release, build folder or .npz (default: the release)"
    )
    parser.add_argument("--folds", type=int, nargs="*", default=list(range(N_FOLDS)))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tune-tiles",
        type=int,
        default=None,
        help="training tiles each fold tunes on (0 = all 27; default: the CV's own)",
    )
    args = parser.parse_args(argv)

    tiles = load_tiles(args.data, markups=MARKUPS)
    masks = tiles["masks"]
    tune_n = args.tune_tiles
    if tune_n is None:
        config = json.loads((args.cv / "folds" / f"fold_{args.folds[0]}.json").read_text())["config"]
        tune_n = config["tune_tiles"]

    def probabilities(fold, scale, which, kind):
        return cached_probabilities(
            args.cv, fold, tiles, args.cache, tune_n, args.threads, scale, which, kind
        )

    results = {}
    for name in args.variants:
        t0 = time.perf_counter()
        per_tile, chosen = run_variant(probabilities, args.folds, tune_n, masks, VARIANTS[name])
        means = {
            m: {k: float(np.mean([s[m][k] for s in per_tile.values()])) for k in ("aji", "pq", "dice")}
            for m in MARKUPS
        }
        results[name] = {"mean": means[MARKUP], "means": means, "per_tile": per_tile, "params": chosen}
        print(
            f"{name}: AJI {means[MARKUP]['aji']:.4f} PQ {means[MARKUP]['pq']:.4f} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    bias = size_bias(args.cv, masks[MARKUP])
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "experiments/postprocess_experiments.py", *sys.argv[1:]])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = {"command": command, "machine": machine_description("cpu"), "cv": str(args.cv), "commit": commit,
              "folds": args.folds, "tune_tiles_per_fold": tune_n, "results": results, "size_bias": bias}  # fmt: skip
    (args.out / "postprocess.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    rows = [[name, *(f"{r['means'][m]['aji']:.4f} / {r['means'][m]['pq']:.4f}" for m in MARKUPS),
             f"{r['mean']['dice']:.4f}", ", ".join(f"{p['min_confidence']:g}" for p in r["params"].values()),
             ", ".join(f"{p.get('split_depth', 0):g}" for p in r["params"].values()),
             ", ".join(f"{p['min_marker_size']}" for p in r["params"].values())]
            for name, r in results.items()]  # fmt: skip
    header = [
        "variant",
        *(f"AJI / PQ vs {m}" for m in MARKUPS),
        f"Dice vs {MARKUP}",
        "min_confidence per fold",
        "split_depth per fold",
        "min_marker_size per fold",
    ]
    text = (
        "# Post-processing variants on the fold models of a CV run\n\n"
        f"Produced by `{command}` on {record['machine']}, from the fold models of `{args.cv}` at commit "
        f"{commit or '(unknown)'}. Thresholds tuned per "
        f"fold on {f'its {tune_n}' if tune_n else 'all its'} tuning tiles (training tiles only); scores are the mean over the held-out tiles of "
        f"folds {args.folds} against each mark-up. Unless a variant says otherwise, it tunes against {MARKUP}.\n\n"
        + "\n".join(table(header, rows))
        + "\n\nSize of the nuclei the CV's held-out predictions (`predictions/`, all 30 tiles) match at IoU > 0.5: "
        f"{bias['matched_nuclei']} matched, predicted area / reference area median {bias['median_area_ratio']:.3f}, "
        f"mean {bias['mean_area_ratio']:.3f}; {100 * bias['share_larger']:.0f} % of the predictions are larger; mean "
        f"IoU {bias['mean_iou']:.3f}. A 1 px erosion would take about a fifth of a 250 px nucleus.\n"
    )
    (args.out / "postprocess.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
