"""Each speed lever of prediction, measured in one run beside InstanSeg: CPU-seconds per mm² and accuracy.

Speed: a contiguous piece of tissue, 16 real CryoNuSeg tiles as a 2048 x 2048 mosaic (0.26 mm² at the model's
0.2505 µm/px), labelled by ``predict_instances`` with each set of options in turn (the model loaded and warmed up
first, not timed), and by InstanSeg's ``brightfield_nuclei`` at its documented 0.5 µm/px (the mosaic resized by
0.5, as ``bench_peers.py`` runs it). CPU time of the process (all threads) per mm² of tissue: on a shared machine
the wall clock includes waiting for a core, the CPU time does not.

Accuracy: the PQ and AJI of each backend setting against Annotator 1 round 2 on a few 512 px tiles (one window,
so blending does not apply), and each setting's PQ against the reference path's labels. The shipped checkpoint saw
these tiles in training: the numbers compare the levers with each other, not with the CV.

    .venv/bin/python benchmarks/bench_levers.py --threads 2      # writes results/predict_levers.json and .md
    .venv/bin/python benchmarks/bench_levers.py --one fast       # one setting on the mosaic, for whole-process timing

Settings: ``reference`` (the default path: onnxruntime, stock head, 512 px tiles owning their nuclei, 64 px margins),
``folded``, ``openvino_fp32``, ``openvino_bf16`` (folded head), ``blend`` (reference + blended windows overlapping
by 64 px; ``blend_overlap_128``: by 128), ``fast`` (openvino bf16, folded, blended; ``fast_batch_4``: four windows a
model call; ``fast_owned_tiles``: not blended), and ``instanseg``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS: dict[str, dict] = {
    "reference": {"load": {"backend": "onnx"}, "predict": {}},
    "folded": {"load": {"backend": "onnx", "head": "folded"}, "predict": {}},
    "openvino_fp32": {"load": {"backend": "openvino", "head": "folded"}, "predict": {}},
    "openvino_bf16": {"load": {"backend": "openvino", "head": "folded", "precision": "bf16"}, "predict": {}},
    "blend": {"load": {"backend": "onnx"}, "predict": {"blend": True, "overlap": 64}},
    "blend_overlap_128": {"load": {"backend": "onnx"}, "predict": {"blend": True, "overlap": 128}},
    "fast": {
        "load": {"backend": "openvino", "head": "folded", "precision": "bf16"},
        "predict": {"blend": True, "overlap": 64},
    },
    "fast_batch_4": {
        "load": {"backend": "openvino", "head": "folded", "precision": "bf16"},
        "predict": {"blend": True, "overlap": 64, "batch_size": 4},
    },
    "fast_owned_tiles": {
        "load": {"backend": "openvino", "head": "folded", "precision": "bf16"},
        "predict": {},
    },
}
MODEL_MPP = 0.2505
SCORED_TILES = 8


def mosaic(tiles: dict, side_tiles: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The first ``side_tiles``² tiles side by side: the (512 k, 512 k, 3) image and its Annotator 1 round 2
    instance labels (each tile's numbered after the previous tiles')."""
    count = side_tiles**2
    images = list(tiles["images"][:count])
    truths, offset = [], 0
    for mask in tiles["masks"]["annotator1_round2"][:count]:
        mask = mask.astype(np.int64)
        truths.append(np.where(mask > 0, mask + offset, 0))
        offset += int(mask.max())

    def join(parts: list[np.ndarray]) -> np.ndarray:
        rows = [np.concatenate(parts[i : i + side_tiles], 1) for i in range(0, count, side_tiles)]
        return np.ascontiguousarray(np.concatenate(rows, 0))

    return join(images), join(truths)


def mosaic_image() -> np.ndarray:
    """The image of :func:`mosaic`, read from the release's PNGs alone (quick, for ``--one``)."""
    from cryonuseg_hf.core.folds import TILE_IDS
    from cryonuseg_hf.data.release import default_source, open_release
    from cryonuseg_hf.model.images import read_image

    release = open_release(default_source())
    images = [read_image(release.images[t]) for t in TILE_IDS[:16]]
    return np.concatenate([np.concatenate(images[i : i + 4], 1) for i in range(0, 16, 4)], 0)


def labeller(name: str, threads: int):
    """A function image -> labels for a setting, loaded and ready."""
    if name == "instanseg":
        import torch
        from bench_peers import default_model_dir, load_model, segment

        torch.set_num_threads(threads)
        model = load_model(default_model_dir())
        return lambda image: segment(model, image, 0.5)[0]
    from cryonuseg_hf.model.predict import load_predictor, predict_instances

    setting = SETTINGS[name]
    predictor = load_predictor(None, device="cpu", threads=threads, **setting["load"])
    return lambda image: predict_instances(image, predictor, **setting["predict"])


def time_on(image: np.ndarray, label, truth: np.ndarray | None = None) -> dict:
    """CPU and wall seconds of one labelling of ``image``, after a warm-up on a 512 px corner; PQ and AJI against
    ``truth`` when given."""
    label(image[:512, :512])
    start, start_cpu = time.perf_counter(), time.process_time()
    labels = label(image)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    mm2 = image.shape[0] * image.shape[1] * (MODEL_MPP * 1e-3) ** 2
    record = {
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "cpu_s_per_mm2": round(cpu / mm2, 1),
        "nuclei": int(len(np.unique(labels)) - 1),
    }
    if truth is not None:
        from cryonuseg_hf.evaluation.metrics import score_tile

        scores = score_tile(truth, labels)
        record.update(mosaic_pq=round(scores["pq"], 4), mosaic_aji=round(scores["aji"], 4))
    return record


def accuracy(names: list[str], threads: int, tiles: dict) -> dict:
    """PQ/AJI against Annotator 1 round 2 on a few tiles, and PQ against the reference path's labels."""
    from cryonuseg_hf.evaluation.metrics import score_tile

    picked = list(range(0, 30, 30 // SCORED_TILES))[:SCORED_TILES]
    reference = None
    out = {}
    for name in names:
        label = labeller(name, threads)
        predictions = [label(tiles["images"][i]) for i in picked]
        truths = [tiles["masks"]["annotator1_round2"][i] for i in picked]
        scores = [score_tile(t, p) for t, p in zip(truths, predictions, strict=True)]
        reference = predictions if reference is None else reference
        out[name] = {
            "pq": round(float(np.mean([s["pq"] for s in scores])), 4),
            "aji": round(float(np.mean([s["aji"] for s in scores])), 4),
            "pq_vs_reference_path": round(
                float(np.mean([score_tile(r, p)["pq"] for r, p in zip(reference, predictions, strict=True)])),
                4,
            ),
        }
        print(name, out[name], flush=True)
    out["tiles"] = [tiles["tile_ids"][i] for i in picked]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=[*SETTINGS, "instanseg"])
    parser.add_argument(
        "--one", default=None, help="only label the mosaic with this setting (no output file)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "results" / "predict_levers")
    args = parser.parse_args()

    from cryonuseg_hf.core.machine import load_words, machine_description
    from cryonuseg_hf.training.data import load_tiles

    if args.one:
        print(json.dumps(time_on(mosaic_image(), labeller(args.one, args.threads))))
        return
    tiles = load_tiles(None, markups=("annotator1_round2",))
    image, truth = mosaic(tiles)
    load_before = os.getloadavg()[0]
    speed = {}
    for name in args.settings:
        speed[name] = time_on(image, labeller(name, args.threads), truth)
        print(name, speed[name], flush=True)
    load_after = os.getloadavg()[0]
    scored = accuracy(
        [n for n in args.settings if n in SETTINGS and not SETTINGS[n]["predict"]], args.threads, tiles
    )
    record = {
        "command": f"python benchmarks/bench_levers.py --threads {args.threads}",
        "machine": machine_description(),
        "load": load_words(load_before, load_after),
        "mosaic": f"{image.shape[1]} x {image.shape[0]} px of 16 CryoNuSeg tiles, "
        f"{image.shape[0] * image.shape[1] * (MODEL_MPP * 1e-3) ** 2:.3f} mm² at {MODEL_MPP} µm/px",
        "speed": speed,
        "accuracy": scored,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    base = speed.get("reference", {}).get("cpu_s_per_mm2")
    lines = [
        "# Prediction levers, one by one, beside InstanSeg",
        "",
        f"Made by `{record['command']}` on {record['machine']}, {record['load']}; {record['mosaic']}. CPU-seconds "
        "count all threads of the process; one labelling of the mosaic each, so read the ratios, not the seconds.",
        "",
        "| setting | CPU-s per mm² | vs reference | wall s | nuclei | mosaic PQ | mosaic AJI |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in speed.items():
        ratio = f"{s['cpu_s_per_mm2'] / base:.2f}" if base else ""
        lines.append(
            f"| {name} | {s['cpu_s_per_mm2']} | {ratio} | {s['wall_s']} | {s['nuclei']} | {s['mosaic_pq']} | "
            f"{s['mosaic_aji']} |"
        )
    lines += [
        "",
        "Mosaic PQ and AJI: the mosaic's labels against the 16 tiles' Annotator 1 round 2 mark-ups side by side "
        "(the shipped model trained on these tiles; InstanSeg never saw them).",
    ]
    lines += [
        "",
        f"Accuracy on {len(scored['tiles'])} tiles the shipped model trained on, against Annotator 1 round 2 "
        "(one 512 px window per tile):",
        "",
        "| setting | PQ | AJI | PQ against the reference path |",
        "|---|---|---|---|",
    ]
    for name, s in scored.items():
        if name != "tiles":
            lines.append(f"| {name} | {s['pq']} | {s['aji']} | {s['pq_vs_reference_path']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
