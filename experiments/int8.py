"""int8 inference, measured: onnxruntime static quantization of the checked exports beside float32 and bfloat16.

Each export (stock and folded decode head, :func:`cryonuseg_hf.model.onnx_backend.cached_onnx`) is quantized with
``onnxruntime.quantization.quantize_static``: QDQ format, per-channel int8 weights, uint8 activations, min-max
calibration on 8 CryoNuSeg tiles; two choices of nodes: the nodes with weights (linear layers and convolutions) or
those plus the attention's activation-by-activation products. Each is run by onnxruntime on 8 other tiles and
compared with the float32 export (mean absolute class-probability difference, fraction of pixels whose most likely
class changes), scored against Annotator 1 round 2 (PQ, AJI) and timed (median CPU-seconds per 512 px tile, all
threads). OpenVINO bfloat16 on the folded export runs beside for comparison. The shipped checkpoint saw every tile
in training: the numbers compare settings with each other.

    .venv/bin/python experiments/int8.py --threads 2    # writes experiments/results/int8.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = slice(0, 24, 3)
EVALUATION = slice(1, 25, 3)


def quantize(source: Path, target: Path, images: list[np.ndarray], with_attention: bool) -> Path:
    """The int8 QDQ model of ``source``, calibrated on ``images``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared))
    graph = onnx.load(str(prepared)).graph
    weights = {i.name for i in graph.initializer}
    nodes = [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Conv", "Gemm") and (with_attention or any(i in weights for i in n.input))
    ]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.ascontiguousarray(i.transpose(2, 0, 1)[None], np.float32) for i in images)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
    )
    return target


def ort_runner(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["probabilities"], {"images": batch})[0]


def evaluate(run, images, truths, reference, params) -> dict:
    """Timing, difference from ``reference`` probabilities (None: this is the reference) and scores."""
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.postprocess import probabilities_to_instances

    seconds, outputs, scores = [], [], []
    run(np.ascontiguousarray(images[0][:256, :256].transpose(2, 0, 1)[None], np.float32))  # warm-up
    for image, truth in zip(images, truths, strict=True):
        batch = np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32)
        start = time.process_time()
        probabilities = run(batch)[0]
        seconds.append(time.process_time() - start)
        outputs.append(probabilities)
        scores.append(score_tile(truth, probabilities_to_instances(probabilities, params)))
    record = {
        "cpu_s_per_tile": round(float(np.median(seconds)), 3),
        "pq": round(float(np.mean([s["pq"] for s in scores])), 4),
        "aji": round(float(np.mean([s["aji"] for s in scores])), 4),
    }
    if reference is not None:
        pairs = list(zip(outputs, reference, strict=True))
        record["mean_abs_probability_diff"] = round(
            float(np.mean([np.abs(a - b).mean() for a, b in pairs])), 4
        )
        record["class_changes"] = round(
            float(np.mean([(a.argmax(0) != b.argmax(0)).mean() for a, b in pairs])), 4
        )
    return record, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "int8")
    args = parser.parse_args()

    from cryonuseg_hf.core.machine import load_words, machine_description
    from cryonuseg_hf.core.paths import MODEL_PATH
    from cryonuseg_hf.model.onnx_backend import cached_onnx
    from cryonuseg_hf.model.openvino_backend import openvino_runner
    from cryonuseg_hf.model.postprocess import params_from_config
    from cryonuseg_hf.training.data import load_tiles

    tiles = load_tiles(None, markups=("annotator1_round2",))
    calibration = list(tiles["images"][CALIBRATION])
    images = list(tiles["images"][EVALUATION])
    truths = list(tiles["masks"]["annotator1_round2"][EVALUATION])
    params, _ = params_from_config(MODEL_PATH)
    load_before = os.getloadavg()[0]
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for head in ("stock", "folded"):
            source = cached_onnx(MODEL_PATH, head)
            rows[f"{head} fp32"], reference = evaluate(
                ort_runner(source, args.threads), images, truths, None, params
            )
            for with_attention in (False, True):
                name = f"{head} int8 ({'weights and attention' if with_attention else 'weights'})"
                target = Path(scratch) / f"{head}-{int(with_attention)}.onnx"
                quantized = quantize(source, target, calibration, with_attention)
                rows[name], _ = evaluate(
                    ort_runner(quantized, args.threads), images, truths, reference, params
                )
                print(name, rows[name], flush=True)
            if head == "folded":
                runner = openvino_runner(MODEL_PATH, threads=args.threads, head=head, precision="bf16")
                rows["folded bf16 (OpenVINO)"], _ = evaluate(runner, images, truths, reference, params)
    record = {
        "command": f"python experiments/int8.py --threads {args.threads}",
        "machine": machine_description(),
        "load": load_words(load_before, os.getloadavg()[0]),
        "calibration_tiles": list(tiles["tile_ids"][CALIBRATION]),
        "evaluation_tiles": list(tiles["tile_ids"][EVALUATION]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        "# int8 inference (onnxruntime static quantization) beside float32 and bfloat16",
        "",
        f"Made by `{record['command']}` on {record['machine']}, {record['load']}. onnxruntime rows run by "
        "onnxruntime; differences against the float32 export of the same head; 8 tiles, median CPU-s per 512 px "
        "tile (model only, all threads); PQ/AJI against Annotator 1 round 2 (tiles the shipped model trained on).",
        "",
        "| model | CPU-s per tile | mean abs. probability diff. | class changes | PQ | AJI |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        diff = r.get("mean_abs_probability_diff", "")
        changes = f"{100 * r['class_changes']:.2f} %" if "class_changes" in r else ""
        lines.append(f"| {name} | {r['cpu_s_per_tile']} | {diff} | {changes} | {r['pq']} | {r['aji']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
