"""Views of a tile averaged before the post-processing: accuracy and shift stability of each, on fold models.

SegFormer's logits lie on a grid of 4 model pixels, 2.67 image pixels at input scale 1.5, so a tile moved by one
pixel is sampled at another phase of that grid and its probabilities change: the post-processing turns that
into nuclei split, merged or dropped differently. Averaging views at several phases makes the result depend less
on where the tile falls. Each view set is scored here, per fold model:

- its post-processing is tuned on the fold's tuning tiles (training tiles only, against the three mark-ups, as
  ``train --all-markups`` tunes), then it labels the fold's held-out tiles, scored against every mark-up;
- each held-out tile is labelled again shifted by (1, 1), (1, 0) and (0, 1) pixels (cropped at the top and left),
  and PQ compares the two labellings on the pixels they share (1 = perfectly stable).

    .venv/bin/python experiments/phase_views.py --run logs/recipe_base --folds 0 1 4

``--run`` is a ``train --fold``/``--cv`` folder that kept its fold models (``models/fold_K``). Probabilities are
cached per fold model in ``--cache``, so a killed run resumes. Writes ``<out>/phase_views.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.folds import TILE_IDS, tiles_of_fold
from cryonuseg_hf.core.machine import machine_description
from cryonuseg_hf.core.markdown import table
from cryonuseg_hf.data.release import MARKUPS
from cryonuseg_hf.evaluation.metrics import score_tile
from cryonuseg_hf.model.postprocess import PostprocessParams, probabilities_to_instances, tune_params
from cryonuseg_hf.model.predict import open_predictor
from cryonuseg_hf.training.data import load_tiles, training_indices, tuning_tiles

SHIFTS = ((1, 1), (1, 0), (0, 1))


def shifted_views(predictor, image: np.ndarray, offsets) -> np.ndarray:
    """Mean probabilities of ``image`` placed at each (dy, dx) offset inside a mirrored border, moved back."""
    pad = max(max(o) for o in offsets)
    big = np.pad(image, ((pad, 0), (pad, 0), (0, 0)), mode="symmetric")
    total = None
    for dy, dx in offsets:
        p = predictor.probabilities(np.ascontiguousarray(big[pad - dy :, pad - dx :]))[:, dy:, dx:]
        total = p if total is None else total + p
    return total / len(offsets)


def flipped_views(predictor, image: np.ndarray, flips) -> np.ndarray:
    """Mean probabilities of ``image`` flipped along each tuple of axes in ``flips`` (() = as it is)."""
    total = None
    for axes in flips:
        view = np.ascontiguousarray(np.flip(image, axes) if axes else image)
        p = predictor.probabilities(view)
        p = np.flip(p, tuple(a + 1 for a in axes)) if axes else p
        total = p if total is None else total + p
    return total / len(flips)


def smoothed(probabilities: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(probabilities, sigma=(0, sigma, sigma))


VIEWS: dict[str, tuple[int, Callable]] = {
    "one pass (default path)": (1, lambda pr, im: pr.probabilities(im)),
    "one pass, smoothed 1 px": (1, lambda pr, im: smoothed(pr.probabilities(im), 1.0)),
    "2 views: as is + both axes flipped": (2, lambda pr, im: flipped_views(pr, im, [(), (0, 1)])),
    "4 views: as is, each axis flipped, both": (
        4,
        lambda pr, im: flipped_views(pr, im, [(), (0,), (1,), (0, 1)]),
    ),
    "2 phases: offsets (0, 0), (1, 1)": (2, lambda pr, im: shifted_views(pr, im, [(0, 0), (1, 1)])),
    "3 phases: offsets (0, 0), (1, 1), (2, 2)": (
        3,
        lambda pr, im: shifted_views(pr, im, [(0, 0), (1, 1), (2, 2)]),
    ),
    "predict --phases 3 (the package's)": (3, lambda pr, im: replace(pr, phases=3).probabilities(im)),
    "4 phases: offsets {0, 1} x {0, 1}": (
        4,
        lambda pr, im: shifted_views(pr, im, [(0, 0), (0, 1), (1, 0), (1, 1)]),
    ),
    "8 flips/rotations (the CV's TTA)": (8, lambda pr, im: pr.probabilities(im, tta=True)),
    "8 flips/rotations x 3 phases (predict --tta --phases 3)": (
        24,
        lambda pr, im: replace(pr, phases=3).probabilities(im, tta=True),
    ),
}


BORROWED = {
    "2 views, the one pass's thresholds": ("2 views: as is + both axes flipped", "one pass (default path)"),
    "3 phases, the one pass's thresholds": (
        "3 phases: offsets (0, 0), (1, 1), (2, 2)",
        "one pass (default path)",
    ),
    "predict --phases 3, the one pass's thresholds (as the checkpoint carries them)": (
        "predict --phases 3 (the package's)",
        "one pass (default path)",
    ),
    "8 flips/rotations x 3 phases, the one pass's thresholds": (
        "8 flips/rotations x 3 phases (predict --tta --phases 3)",
        "one pass (default path)",
    ),
    "8 flips/rotations, the one pass's thresholds (as train --cv predicts)": (
        "8 flips/rotations (the CV's TTA)",
        "one pass (default path)",
    ),
}
"""View sets scored with the thresholds tuned on another's probabilities: (views, thresholds from). A checkpoint
carries thresholds tuned on one pass (``train``), and ``predict --tta`` applies them to averaged views."""


def cached(cache: Path, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    path = cache / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".npy")
    if path.is_file():
        return np.load(path).astype(np.float32)
    probabilities = compute()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, probabilities.astype(np.float16))
    return probabilities.astype(np.float16).astype(np.float32)


def tuned(cache: Path, key: str, compute: Callable[[], PostprocessParams]) -> PostprocessParams:
    path = cache / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".params.json")
    if path.is_file():
        return PostprocessParams.from_dict(json.loads(path.read_text()))
    params = compute()
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(params.to_dict()))
    return params


def run_fold(run: Path, fold: int, tiles, views, cache: Path, threads: int, tune_n: int) -> dict:
    model = run / "models" / f"fold_{fold}"
    weights = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()[:12]
    predictor = open_predictor(model, "cpu", "onnx", threads, head="folded")
    tune = tuning_tiles(training_indices(fold), tune_n)
    held = [TILE_IDS.index(t) for t in tiles_of_fold(fold)]
    out = {}

    def probs(view: str, i: int, dy: int = 0, dx: int = 0, end: bool = False) -> np.ndarray:
        """``view``'s probabilities of tile ``i`` cropped by (dy, dx) at the top and left, or with ``end`` at the
        bottom and right."""
        image = tiles["images"][i]
        crop = image[: len(image) - dy, : image.shape[1] - dx] if end else image[dy:, dx:]
        key = f"{weights}|{view}|{TILE_IDS[i]}|{dy},{dx}" + ("|end" if end else "")
        return cached(cache, key, lambda: VIEWS[view][1](predictor, crop))

    def params_of(view: str) -> PostprocessParams:
        references = [[tiles["masks"][m][i] for m in MARKUPS] for i in tune]
        return tuned(cache, f"{weights}|{view}|tune{tune_n}",
                     lambda: tune_params([probs(view, i) for i in tune], references)[0])  # fmt: skip

    for name in views:
        view, thresholds = BORROWED.get(name, (name, name))
        t0 = time.perf_counter()
        params = params_of(thresholds)
        per_tile = {}
        for i in held:
            labels = probabilities_to_instances(probs(view, i), params)
            scores = {m: score_tile(tiles["masks"][m][i], labels) for m in MARKUPS}
            row = {m: {k: float(s[k]) for k in ("aji", "pq")} for m, s in scores.items()}
            row["nuclei"] = int(labels.max())
            row["shift_pq"], row["window_shift_pq"] = {}, {}
            for dy, dx in SHIFTS:
                moved = probabilities_to_instances(probs(view, i, dy, dx), params)
                row["shift_pq"][f"{dy},{dx}"] = float(score_tile(labels[dy:, dx:], moved)["pq"])
                first = probabilities_to_instances(probs(view, i, dy, dx, end=True), params)
                height, width = first.shape
                row["window_shift_pq"][f"{dy},{dx}"] = float(
                    score_tile(first[dy:, dx:], moved[: height - dy, : width - dx])["pq"]
                )
            per_tile[TILE_IDS[i]] = row
        out[name] = {"params": params.to_dict(), "per_tile": per_tile}
        print(f"fold {fold} {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 4])
    parser.add_argument("--views", nargs="*", default=[*VIEWS, *BORROWED])
    parser.add_argument("--cache", type=Path, default=Path("logs/phase_views_cache"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/phase_views"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune-tiles", type=int, default=9)
    args = parser.parse_args(argv)

    tiles = load_tiles(markups=MARKUPS)
    folds = {
        f: run_fold(args.run, f, tiles, args.views, args.cache, args.threads, args.tune_tiles)
        for f in args.folds
    }
    results = {}
    for name in args.views:
        rows = [r for f in args.folds for r in folds[f][name]["per_tile"].values()]
        results[name] = {
            "passes": VIEWS[BORROWED.get(name, (name,))[0]][0],
            "mean": {m: {k: float(np.mean([r[m][k] for r in rows])) for k in ("aji", "pq")} for m in MARKUPS},
            **{
                kind: {s: float(np.mean([r[kind][s] for r in rows])) for s in rows[0][kind]}
                for kind in ("shift_pq", "window_shift_pq")
            },
            "nuclei": int(sum(r["nuclei"] for r in rows)),
            "folds": {f: folds[f][name] for f in args.folds},
        }
    command = shlex.join(["python", "experiments/phase_views.py", *sys.argv[1:]])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = {"command": command, "machine": machine_description("cpu"), "commit": commit, "run": str(args.run),
              "folds": args.folds, "results": results}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "phase_views.json").write_text(json.dumps(record, indent=1) + "\n")
    header = ["views", "model passes", *(f"AJI / PQ vs {m}" for m in MARKUPS), "nuclei",
              *(f"PQ, window moved ({s})" for s in ("1, 1", "1, 0", "0, 1")), "PQ, tile cropped (1, 1)"]  # fmt: skip
    rows = [[name, str(r["passes"]), *(f"{r['mean'][m]['aji']:.4f} / {r['mean'][m]['pq']:.4f}" for m in MARKUPS),
             str(r["nuclei"]), *(f"{r['window_shift_pq'][s]:.3f}" for s in ("1,1", "1,0", "0,1")),
             f"{r['shift_pq']['1,1']:.3f}"]
            for name, r in results.items()]  # fmt: skip
    text = (
        "# Views averaged before the post-processing: accuracy and shift stability\n\n"
        f"Produced by `{command}` on {record['machine']}, at commit {commit}, from the fold models of "
        f"`{args.run}` (onnxruntime, folded head). Each view set's post-processing is tuned per fold on "
        f"{args.tune_tiles} training tiles against the three mark-ups; scores are means over the held-out tiles "
        f"of folds {args.folds}. Window moved: PQ between the labels of two windows of a held-out tile of one size, "
        "the second (dy, dx) pixels below and right of the first (the tile cropped by (dy, dx) at the bottom and "
        "right, and at the top and left), on the pixels they share. Tile cropped: the whole tile against the tile "
        "cropped at the top and left (`benchmarks/bench_predict.py`'s measure); its bottom and right edges do not "
        "move, so a flipped view of the two sees the same grid phase there and that column flatters flips.\n\n"
        + "\n".join(table(header, rows))
        + "\n"
    )
    (args.out / "phase_views.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
