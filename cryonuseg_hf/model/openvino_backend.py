"""OpenVINO on the CPU: the checked ONNX export run by OpenVINO, in float32 or in bfloat16.

OpenVINO reads the export of :func:`cryonuseg_hf.model.onnx_backend.cached_onnx` as it is. On a CPU with AMX or
AVX-512 BF16 units (Intel Xeon since Sapphire Rapids) ``precision="bf16"`` runs the matrix products in bfloat16,
which is where this precision pays; elsewhere OpenVINO computes in float32 whatever is asked.

bfloat16 keeps 8 bits of mantissa, so its probabilities are not those of torch within the 1e-3 the float32
exports are held to. Its own check, on the same real tiles (:func:`cryonuseg_hf.model.onnx_backend.check_images`)
against the stock torch model: the mean absolute difference of the class probabilities, over every class and
pixel, at most ``BF16_MEAN_PROBABILITY_TOLERANCE``, and the fraction of pixels whose most likely class changes at
most ``BF16_CLASS_CHANGE_TOLERANCE``. Measured for the shipped checkpoint on a 512 px tile: 0.0009 and 0.13 %, and
the PQ and AJI of the decoded nuclei are in ``results/predict_speed.json``. float32 is held to the logit tolerance
of the ONNX export. A passed check is remembered beside the export (a JSON file named for the precision and the
OpenVINO version), so it runs once per checkpoint, head and precision.

``openvino`` is an optional dependency (``pip install 'cryonuseg_hf[openvino]'``), imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.files import staged_files
from cryonuseg_hf.model.onnx_backend import (
    LOGIT_TOLERANCE,
    OnnxMismatchError,
    cached_onnx,
    check_images,
    compare_with_torch,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
BF16_MEAN_PROBABILITY_TOLERANCE = 0.005
"""Largest accepted mean absolute class-probability difference of bfloat16 from the torch model (five times the
measured 0.0009)."""
BF16_CLASS_CHANGE_TOLERANCE = 0.01
"""Largest accepted fraction of pixels whose most likely class differs from the torch model's (measured 0.13 %)."""
_HINTS = {"fp32": "f32", "bf16": "bf16"}


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ImportError(
            "the openvino backend needs OpenVINO: pip install 'cryonuseg_hf[openvino]' (or use --backend onnx)"
        ) from None
    return openvino


def check_passes(report: dict, precision: str) -> bool:
    """Whether a :func:`~cryonuseg_hf.model.onnx_backend.compare_with_torch` report is within this precision's
    tolerance (see the module docstring).

    >>> check_passes({"max_abs_logit_diff": 0.2, "mean_abs_probability_diff": 0.001, "argmax_disagreement": 0.002}, "bf16")
    True
    >>> check_passes({"max_abs_logit_diff": 0.2, "mean_abs_probability_diff": 0.001, "argmax_disagreement": 0.002}, "fp32")
    False
    """
    if precision == "fp32":
        return report["max_abs_logit_diff"] <= LOGIT_TOLERANCE
    return (
        report["mean_abs_probability_diff"] <= BF16_MEAN_PROBABILITY_TOLERANCE
        and report["argmax_disagreement"] <= BF16_CLASS_CHANGE_TOLERANCE
    )


def openvino_runner(
    model_path: str | os.PathLike,
    threads: int | None = None,
    head: str = "stock",
    precision: str = "fp32",
) -> Callable[[np.ndarray], np.ndarray]:
    """(N, 3, H, W) float32 RGB 0..255 -> (N, C, H, W) probabilities, by OpenVINO on the CPU.

    Args:
        model_path: checkpoint folder.
        threads: CPU threads (default: OpenVINO's choice).
        head: decode head of the export (``stock`` or ``folded``).
        precision: ``fp32`` or ``bf16``.

    Raises:
        ImportError: OpenVINO is not installed.
        OnnxMismatchError: the compiled model is outside this precision's tolerance.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    openvino = _openvino()
    onnx_path = cached_onnx(model_path, head)
    config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(str(onnx_path), "CPU", config)
    outputs = {name: compiled.output(name) for name in ("probabilities", "logits")}
    local = threading.local()  # an infer request serves one thread at a time: one per thread

    def infer(batch: np.ndarray) -> Any:
        if not hasattr(local, "request"):
            local.request = compiled.create_infer_request()
        return local.request.infer({"images": batch})

    def run_both(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = infer(batch)
        return result[outputs["probabilities"]].copy(), result[outputs["logits"]].copy()

    _check_once(model_path, onnx_path, run_both, precision, openvino.__version__.split("-")[0])

    def run(batch: np.ndarray) -> np.ndarray:
        return infer(batch)[outputs["probabilities"]].copy()

    return run


def _check_once(model_path, onnx_path: Path, run_both, precision: str, version: str) -> None:
    """Compare with the stock torch model unless this export already passed at this precision and version."""
    from cryonuseg_hf.model.segformer import load_torch_module

    record = onnx_path.with_name(f"{onnx_path.stem}.openvino-{version}-{precision}.check.json")
    if record.is_file():
        return
    reference, _ = load_torch_module(Path(model_path), "cpu")
    report = compare_with_torch(reference, run_both, check_images())
    if not check_passes(report, precision):
        raise OnnxMismatchError(
            f"{model_path}: OpenVINO at {precision} differs from torch beyond its tolerance ({report}); use "
            "--precision fp32 or --backend onnx"
        )
    logger.info("OpenVINO %s check of %s passed: %s", precision, model_path, report)
    with staged_files({"check": record}) as staged:
        staged["check"].write_text(json.dumps(report, indent=1) + "\n")
