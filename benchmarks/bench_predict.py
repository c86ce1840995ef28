"""Prediction speed on the CPU: one real 512x512 CryoNuSeg tile end to end, and large images in tiles.

End to end means decoded RGB array in, instance label image out: model, post-processing and labels. Side by side,
in one run, on one checkpoint, with the same post-processing (``cryonuseg_hf.model.postprocess``):

- ``stock_pipeline``: ``transformers.pipeline("image-segmentation")`` (its own image processor, which resizes
  to the checkpoint's ``512 * input_scale``) followed by ``predict.instances_from_pipeline``;
- ``torch``: ``predict_instances`` with the torch backend;
- ``onnxruntime``: ``predict_instances`` with the ONNX backend (export checked against torch, cached);
- ``openvino_bf16_folded``: ``predict_instances`` with ``--backend openvino --precision bf16 --head folded``
  (needs ``pip install 'cryonuseg_hf[openvino]'``);
- ``onnxruntime_phases_3`` and ``openvino_bf16_folded_phases_3``: the same with ``--phases 3`` (three model passes
  at diagonal offsets of 0, 1 and 2 pixels, averaged).

The tiling and shift agreement (``tiling_agreement``) is measured with and without ``--phases 3``. A 1 px shift is
measured two ways: the tile against the tile cropped by 1 px at the top and left (its bottom and right edges stay
where they were), and two windows of one size, 1 px apart (both edges move, as when a slide is cut elsewhere).

With ``--large 2048 4096 8192`` each side is also run end to end (prediction in tiles plus writing every output
file) in a fresh process, on a mosaic of real tiles, recording wall time and peak RSS.

Run (writes ``results/predict_speed.json``)::

    .venv/bin/python benchmarks/bench_predict.py --threads 2
    .venv/bin/python benchmarks/bench_predict.py --model path/to/checkpoint --large 2048 4096 8192

``--random-variant b0`` times a randomly initialised SegFormer of that size instead of a checkpoint (speed only;
its nuclei are meaningless), for use before a trained checkpoint exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TILES = ("Human_Skin_01", "Human_Larynx_02", "Human_Thymus_01", "Human_Pleura_03")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def real_tiles() -> list[np.ndarray]:
    from cryonuseg_hf.data.release import default_source, open_release
    from cryonuseg_hf.model.images import read_image

    release = open_release(default_source())
    return [read_image(release.images[t]) for t in TILES]


def interleaved(functions: dict, repeats: int) -> dict[str, dict]:
    """Time each function ``repeats`` times, taking turns (one call of each per round, after a warm-up call of
    each), so that a load change on a shared machine hits every contestant alike.

    Returns:
        name -> median wall seconds ``s``, median CPU seconds of the process ``cpu_s`` (all threads: on a busy
        machine the wall time includes waiting for a core, the CPU time does not), all wall times, last result.
    """
    results = {name: function() for name, function in functions.items()}
    walls: dict[str, list[float]] = {name: [] for name in functions}
    cpus: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = function()
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "s": round(float(np.median(walls[name])), 4),
            "cpu_s": round(float(np.median(cpus[name])), 4),
            "all_s": [round(t, 4) for t in walls[name]],
            "result": results[name],
        }
        for name in functions
    }


def dark_blobs(window: np.ndarray) -> np.ndarray:
    """A model stand-in for memory and time of tiling and export at scale: dark blobs under 40 px, labelled."""
    from scipy import ndimage as ndi

    dark = ndi.binary_opening(window.mean(axis=2) < 120, structure=np.ones((3, 3)))
    labels, _ = ndi.label(dark)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None and max(s.stop - s.start for s in box) > 40:
            labels[box][labels[box] == index] = 0
    return labels


def model_description(path: Path) -> dict:
    config = json.loads((path / "config.json").read_text())
    from cryonuseg_hf import MODEL_PATH
    from cryonuseg_hf.model.onnx_backend import checkpoint_hash

    return {
        "path": str(path),
        "shipped_checkpoint": path.resolve() == MODEL_PATH.resolve(),
        "sha256": checkpoint_hash(path),
        "hidden_sizes": config.get("hidden_sizes"),
        "depths": config.get("depths"),
        "input_scale": config.get("cryonuseg_input_scale", 1.0),
        "model_input_side_for_512_tile": int(round(512 * config.get("cryonuseg_input_scale", 1.0))),
    }


def bench_tile(model: Path, threads: int, repeats: int) -> dict:
    import torch
    from PIL import Image
    from transformers import pipeline

    from cryonuseg_hf.model.postprocess import probabilities_to_instances
    from cryonuseg_hf.model.predict import instances_from_pipeline, load_predictor, predict_instances

    torch.set_num_threads(threads)
    tile = real_tiles()[0]
    pil_tile = Image.fromarray(tile)
    pipe = pipeline("image-segmentation", model=str(model), device="cpu")
    by_torch = load_predictor(model, device="cpu", backend="torch", threads=threads)
    by_onnx = load_predictor(model, device="cpu", backend="onnx", threads=threads)
    fast = {"backend": "openvino", "head": "folded", "precision": "bf16"}
    by_fast = load_predictor(model, device="cpu", threads=threads, **fast)
    three_onnx = load_predictor(model, device="cpu", backend="onnx", threads=threads, phases=3)
    three_fast = load_predictor(model, device="cpu", threads=threads, phases=3, **fast)
    probabilities = by_onnx.probabilities(tile)
    timings = interleaved(
        {
            "stock_pipeline": lambda: instances_from_pipeline(pipe(pil_tile), pipe.model.config),
            "torch": lambda: predict_instances(tile, by_torch),
            "onnxruntime": lambda: predict_instances(tile, by_onnx),
            "stock_pipeline_model": lambda: pipe(pil_tile),
            "torch_model": lambda: by_torch.probabilities(tile),
            "onnxruntime_model": lambda: by_onnx.probabilities(tile),
            "openvino_bf16_folded": lambda: predict_instances(tile, by_fast),
            "openvino_bf16_folded_model": lambda: by_fast.probabilities(tile),
            "onnxruntime_phases_3": lambda: predict_instances(tile, three_onnx),
            "onnxruntime_phases_3_model": lambda: three_onnx.probabilities(tile),
            "openvino_bf16_folded_phases_3": lambda: predict_instances(tile, three_fast),
            "openvino_bf16_folded_phases_3_model": lambda: three_fast.probabilities(tile),
            "postprocess": lambda: probabilities_to_instances(probabilities, by_onnx.params),
        },
        repeats,
    )
    results: dict = {}
    names = (
        "torch",
        "onnxruntime",
        "openvino_bf16_folded",
        "onnxruntime_phases_3",
        "openvino_bf16_folded_phases_3",
    )
    for name in ("stock_pipeline", *names):
        end = timings[name]
        results[name] = {
            "end_to_end_s": end["s"],
            "end_to_end_cpu_s": end["cpu_s"],
            "end_to_end_all_s": end["all_s"],
            "model_only_s": timings[f"{name}_model"]["s"],
            "n_nuclei": int(end["result"].max()),
        }
    results["postprocess_s"] = timings["postprocess"]["s"]
    stock = results["stock_pipeline"]["end_to_end_s"]
    for name in names:
        results[name]["speedup_vs_stock_pipeline"] = round(stock / results[name]["end_to_end_s"], 2)
    return results


def bench_agreement(model: Path, threads: int) -> dict:
    """PQ between tiled and untiled prediction of a 2x2 mosaic of real tiles, and how stable the model is.

    ``tiled_vs_untiled`` is the issue's criterion. The other numbers say how much of any disagreement is the
    model's: the same tile predicted alone and inside the mosaic, the tile shifted by 1 and by 32 pixels and by one
    step of the model's sampling grid (``predict.grid_step``: 32 px at input scale 1, 64 at 1.5), and the tiling rule with a strictly local stand-in for the model (which must give 1.0).
    """
    from dataclasses import replace

    from cryonuseg_hf.core.tiles import TILE_SIZE
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.predict import BLEND_OVERLAP, grid_step, load_predictor, predict_instances
    from cryonuseg_hf.model.tiling import predict_tiled

    predictor = load_predictor(model, device="cpu", backend="torch", threads=threads)
    step = grid_step(predictor.input_scale)
    tiles = real_tiles()
    side = int(512 / max(predictor.input_scale, 1.0))  # untiled pass of the mosaic at <= 1024 px model input
    tiles = [t[:side, :side] for t in tiles]
    mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    window = TILE_SIZE  # predict's default: 3x3 windows on a 1024 mosaic, 2x2 on a smaller one
    whole = predict_instances(mosaic, predictor, tile_size=2 * side)
    stats: dict = {}
    tiled = predict_instances(mosaic, predictor, tile_size=window, margin=64)
    blended = predict_instances(mosaic, predictor, tile_size=window, blend=True, overlap=BLEND_OVERLAP)
    alone = predict_instances(tiles[0], predictor)
    shifted_1 = predict_instances(tiles[0][1:, 1:], predictor)
    shifted_32 = predict_instances(tiles[0][32:, 32:], predictor)
    shifted_grid = predict_instances(tiles[0][step:, step:], predictor)
    three = replace(predictor, phases=3)
    three_alone = predict_instances(tiles[0], three)
    three_shifted_1 = predict_instances(tiles[0][1:, 1:], three)
    three_whole = predict_instances(mosaic, three, tile_size=2 * side)
    three_blended = predict_instances(mosaic, three, tile_size=window, blend=True, overlap=BLEND_OVERLAP)
    first, second = tiles[0][:-1, :-1], tiles[0][1:, 1:]  # two windows of one size, 1 px apart

    def window_shift(labeller) -> float:
        return round(score_tile(labeller(first)[1:, 1:], labeller(second)[:-1, :-1])["pq"], 4)

    local_whole = predict_tiled(mosaic, dark_blobs, tile_size=4 * side)
    local_tiled = predict_tiled(
        mosaic, dark_blobs, tile_size=min(512, side), margin=64, align=32, stats=stats
    )
    return {
        "mosaic": f"2x2 of {', '.join(TILES)} cropped to {side}x{side}",
        "tiling": f"windows of {window} px, margin 64 px, starts on the model's grid (every {step} px)",
        "tiled_vs_untiled_pq": round(score_tile(whole, tiled)["pq"], 4),
        "blended_vs_untiled_pq": round(score_tile(whole, blended)["pq"], 4),
        "blended": f"windows of {window} px overlapping by {BLEND_OVERLAP} px or more, probabilities blended "
        "(predict --blend); a 512 px tile is one window, so the shifts below are the same blended or not",
        "nuclei_untiled_tiled": [int(whole.max()), int(tiled.max())],
        "tile_alone_vs_inside_untiled_mosaic_pq": round(score_tile(whole[:side, :side], alone)["pq"], 4),
        "tile_vs_tile_shifted_1px_pq": round(score_tile(alone[1:, 1:], shifted_1)["pq"], 4),
        "tile_vs_tile_shifted_32px_pq": round(score_tile(alone[32:, 32:], shifted_32)["pq"], 4),
        f"tile_vs_tile_shifted_{step}px_grid_step_pq": round(
            score_tile(alone[step:, step:], shifted_grid)["pq"], 4
        ),
        "window_vs_window_1px_apart_pq": window_shift(lambda im: predict_instances(im, predictor)),
        "phases_3": {
            "what": "the same with --phases 3 (three passes at diagonal offsets 0, 1, 2 px, averaged)",
            "blended_vs_untiled_pq": round(score_tile(three_whole, three_blended)["pq"], 4),
            "tile_vs_tile_shifted_1px_pq": round(score_tile(three_alone[1:, 1:], three_shifted_1)["pq"], 4),
            "window_vs_window_1px_apart_pq": window_shift(lambda im: predict_instances(im, three)),
        },
        "local_stand_in_tiled_vs_untiled_pq": round(score_tile(local_whole, local_tiled)["pq"], 4),
        "local_stand_in_tiling_stats": stats,
    }


def large_child(side: int, model: str, threads: int, backend: str) -> None:
    """Run in a fresh process: one side x side mosaic end to end; print one JSON line.

    ``backend`` ``stand-in`` replaces the model and post-processing by :func:`dark_blobs`.
    """
    from cryonuseg_hf.model.export import write_outputs
    from cryonuseg_hf.model.predict import load_predictor, predict_instances
    from cryonuseg_hf.model.tiling import predict_tiled

    tiles = real_tiles()
    block = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    reps = -(-side // block.shape[0])
    image = np.ascontiguousarray(np.tile(block, (reps, reps, 1))[:side, :side])
    start = time.perf_counter()
    if backend == "stand-in":
        labels = predict_tiled(image, dark_blobs)
    else:
        labels = predict_instances(
            image, load_predictor(model, device="cpu", backend=backend, threads=threads)
        )
    predicted = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        write_outputs(image, labels, out, "large")
    written = time.perf_counter()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "side": side,
                "megapixels": side * side / 1e6,
                "n_nuclei": int(labels.max()),
                "predict_s": round(predicted - start, 2),
                "write_outputs_s": round(written - predicted, 2),
                "total_s": round(written - start, 2),
                "s_per_megapixel": round((written - start) / (side * side / 1e6), 3),
                "peak_rss_gib": round(peak_kib / 2**20, 3),
            }
        )
    )


def bench_large(sides: list[int], model: Path, threads: int, backend: str) -> list[dict]:
    if backend == "onnx":
        from cryonuseg_hf.model.onnx_backend import cached_onnx

        cached_onnx(model)  # export once here: the children time prediction, not the one-off export
    rows = []
    for side in sides:
        command = [sys.executable, __file__, "--large-child", str(side), "--model", str(model)]
        command += ["--threads", str(threads), "--backend", backend]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
        if done.returncode != 0:
            raise RuntimeError(f"large image {side}: child failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"large {side}x{side}: {rows[-1]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from cryonuseg_hf import MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_PATH, help="checkpoint folder (default: shipped)")
    parser.add_argument("--random-variant", default=None, help="time a random SegFormer of this size instead")
    parser.add_argument("--random-scale", type=float, default=2.0, help="input scale of the random model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--large", type=int, nargs="*", default=[], help="also run these square image sides")
    parser.add_argument(
        "--large-backend",
        default="onnx",
        choices=("torch", "onnx", "stand-in"),
        help="stand-in: a thresholding stand-in for the model, to time tiling and export at scale",
    )
    parser.add_argument("--skip-tile", action="store_true", help="only the large images")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "predict_speed.json")
    parser.add_argument("--large-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="onnx", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.large_child is not None:
        large_child(args.large_child, str(args.model), args.threads, args.backend)
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("CRYONUSEG_HF_CACHE", str(Path(scratch) / "onnx-cache"))
        model = args.model
        weights = "trained checkpoint"
        if args.random_variant:
            from cryonuseg_hf.model.segformer import build_model, save_checkpoint

            model = save_checkpoint(
                build_model(args.random_variant, input_scale=args.random_scale, seed=0),
                Path(scratch) / "random",
            )
            weights = f"random SegFormer-{args.random_variant} (speed only)"
        if not (model / "config.json").is_file():
            parser.error(f"{model}: no checkpoint there; pass --model or --random-variant")
        record = {
            "command": "python benchmarks/bench_predict.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": {"cpu": cpu_model(), "cores_visible": os.cpu_count(), "gpu": None},
            "threads": args.threads,
            "repeats": args.repeats,
            "weights": weights,
            "model": model_description(model),
            "tile": f"{TILES[0]} (512x512, decoded RGB array in, instance labels out)",
            "load_average_1_5_15_min_at_start": [round(x, 2) for x in os.getloadavg()],
        }
        import onnxruntime
        import torch
        import transformers

        record["versions"] = {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__,
        }
        if not args.skip_tile:
            record["tile_512"] = bench_tile(model, args.threads, args.repeats)
            fast = record["tile_512"]["onnxruntime"]
            record["targets"] = {
                "end_to_end_at_most_0.6_s": fast["end_to_end_s"] <= 0.6,
                "at_least_2x_faster_than_stock_pipeline": fast["speedup_vs_stock_pipeline"] >= 2.0,
            }
            print(json.dumps(record["tile_512"], indent=1), flush=True)
            record["tiling_agreement"] = bench_agreement(model, args.threads)
            agreement = record["tiling_agreement"]
            record["targets"]["shifted_1px_pq_at_least_0.90"] = (
                agreement["tile_vs_tile_shifted_1px_pq"] >= 0.90
            )
            record["targets"]["tiled_vs_untiled_pq_at_least_0.95"] = agreement["tiled_vs_untiled_pq"] >= 0.95
            for name in ("onnxruntime_phases_3", "openvino_bf16_folded_phases_3"):
                three = record["tile_512"][name]
                record[f"targets_{name}"] = {
                    "end_to_end_at_most_0.6_s": three["end_to_end_s"] <= 0.6,
                    "at_least_2x_faster_than_stock_pipeline": three["speedup_vs_stock_pipeline"] >= 2.0,
                    "shifted_1px_pq_at_least_0.90": agreement["phases_3"]["tile_vs_tile_shifted_1px_pq"]
                    >= 0.90,
                    "tiled_vs_untiled_pq_at_least_0.95": agreement["phases_3"]["blended_vs_untiled_pq"]
                    >= 0.95,
                }
            print(json.dumps(record["tiling_agreement"], indent=1), flush=True)
        if args.large:
            record["large_images"] = {
                "backend": args.large_backend,
                "what": "mosaic of real tiles, predicted in 512 px tiles (64 px margin) and every output file written",
                "rows": bench_large(args.large, model, args.threads, args.large_backend),
            }
    record["load_average_1_5_15_min_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists() and args.skip_tile:
        previous = json.loads(args.out.read_text())
        previous.setdefault("large_images_runs", []).append(record)
        record = previous
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
