"""The fast CPU path: the checkpoint exported to ONNX once, checked against torch, cached, run by onnxruntime.

What is exported is :func:`cryonuseg_hf.model.segformer.probability_module`: RGB 0..255 in, (probabilities, logits) out,
with normalisation, the input upsampling, the SegFormer and the upsampled softmax in one graph, and dynamic batch,
height and width. The torch backend runs the very same module, so the two backends differ only in kernels.

Every export is checked before it is used: both backends run on real H&E tiles (the package's example tiles,
as square crops and a non-square crop, to exercise the dynamic axes) and the export is refused with
:class:`OnnxMismatchError` when any logit differs by more than ``LOGIT_TOLERANCE``. The reason for the check: an
export made while this package was planned differed from torch by up to 0.86 in the logits. The tolerance: both
backends compute the same float32 graph, so they differ only by rounding (about 1e-7 relative per operation; for
the shipped checkpoint on three whole real tiles and a crop, the largest logit difference measured was 7e-6 and
no pixel changed class). 1e-3 leaves over a hundred times that room, yet keeps every class probability within 1e-3
of torch's (softmax moves by at most the largest change of its inputs), so the post-processing, which thresholds
probabilities, can only decide differently for pixels within 1e-3 of a threshold.

With ``head="folded"`` the graph uses the decode head of :mod:`cryonuseg_hf.model.folded_head` (the same function,
a third of the work) and is checked against the stock torch model with the same tolerance.

The ONNX file lives in the user's cache (``$CRYONUSEG_HF_CACHE``, else ``$XDG_CACHE_HOME/cryonuseg_hf``, else
``~/.cache/cryonuseg_hf``), named by the SHA-256 of the checkpoint files and the head, so a changed checkpoint gets a new
export and nothing is written into the installed package.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

OPSET = 17
LOGIT_TOLERANCE = 1e-3
CACHE_ENV = "CRYONUSEG_HF_CACHE"
_HASHED_FILES = ("config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin")


class OnnxMismatchError(ValueError):
    """The ONNX export computes something else than the torch model (beyond ``LOGIT_TOLERANCE``)."""


def cache_dir() -> Path:
    """The folder for exported models (see the module docstring); not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cryonuseg_hf"


def checkpoint_hash(model_path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the checkpoint's config, image processor config and weights, names included."""
    model_path = Path(model_path)
    digest = hashlib.sha256()
    found = False
    for name in _HASHED_FILES:
        path = model_path / name
        if path.is_file():
            found = True
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    if not found:
        raise FileNotFoundError(f"{model_path}: no checkpoint files ({', '.join(_HASHED_FILES)}) to hash")
    return digest.hexdigest()


def check_images() -> list[np.ndarray]:
    """Real H&E tiles for the export check: 256x256 crops of the package's example tiles and a 200x320 crop.

    Crops, not whole tiles, keep the memory of the check (torch and onnxruntime side by side) low; the graph and
    its kernels are the same at every size.
    """
    from cryonuseg_hf.core.paths import EXAMPLES_PATH
    from cryonuseg_hf.model.images import read_image

    tiles = [read_image(p) for p in sorted(Path(EXAMPLES_PATH).glob("*.png"))[:2]]
    if not tiles:
        raise FileNotFoundError(f"{EXAMPLES_PATH}: no example tiles to check the ONNX export on")
    return [*(t[:256, :256] for t in tiles), tiles[0][100:300, 50:370]]


def export_onnx(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    images: Sequence[np.ndarray] | None = None,
    tolerance: float = LOGIT_TOLERANCE,
    head: str = "stock",
) -> dict:
    """Export a checkpoint to ONNX with ``torch.onnx.export`` and check it against torch.

    Args:
        model_path: checkpoint folder.
        out_path: the ``.onnx`` file to write; it appears only if the check passes.
        images: (H, W, 3) uint8 tiles to compare on; default :func:`check_images`.
        tolerance: largest accepted absolute logit difference.
        head: ``stock`` or ``folded`` (:data:`cryonuseg_hf.model.folded_head.HEADS`); either is compared with
            the stock torch model.

    Returns:
        the check: ``{"max_abs_logit_diff", "max_abs_probability_diff", "argmax_disagreement", "images"}``.

    Raises:
        OnnxMismatchError: a logit differs by more than ``tolerance``.
    """
    import warnings

    import torch

    from cryonuseg_hf.model.folded_head import with_head
    from cryonuseg_hf.model.segformer import load_torch_module

    model_path, out_path = Path(model_path), Path(out_path)
    reference, _ = load_torch_module(model_path, "cpu")
    module = with_head(reference, head)
    images = list(images) if images is not None else check_images()
    example = torch.from_numpy(_to_batch(images[0]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(suffix=".onnx.partial", dir=out_path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic; the check below decides
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=["images"],
                output_names=["probabilities", "logits"],
                dynamic_axes={
                    "images": {0: "batch", 2: "height", 3: "width"},
                    "probabilities": {0: "batch", 2: "height", 3: "width"},
                    "logits": {0: "batch", 2: "logit_height", 3: "logit_width"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        session = _session(Path(tmp), "cpu", None)
        report = compare_with_torch(reference, _session_runner(session), images)
        if report["max_abs_logit_diff"] > tolerance:
            raise OnnxMismatchError(
                f"{model_path}: the ONNX export differs from torch by up to {report['max_abs_logit_diff']:.3g} "
                f"in the logits (tolerance {tolerance:g}); use --backend torch"
            )
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("exported %s -> %s (check: %s)", model_path, out_path, report)
    return report


def _to_batch(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def _session_runner(session) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return lambda batch: tuple(session.run(["probabilities", "logits"], {"images": batch}))


def compare_with_torch(
    module, run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], images: Sequence[np.ndarray]
) -> dict:
    """Largest differences between the torch module and another runtime on ``images``.

    Args:
        module: the reference, a torch probability module.
        run: (1, 3, H, W) float32 batch -> (probabilities, logits) as numpy arrays.
        images: (H, W, 3) uint8 images.

    Returns:
        ``max_abs_logit_diff``, ``max_abs_probability_diff``, ``mean_abs_probability_diff`` (over every class and
        pixel), ``argmax_disagreement`` (fraction of pixels whose most likely class differs) and ``images``.
    """
    import torch

    logit_diff = probability_diff = probability_sum = 0.0
    disagree = total = values = 0
    for image in images:
        batch = _to_batch(image)
        with torch.inference_mode():
            p_torch, l_torch = (t.numpy() for t in module(torch.from_numpy(batch)))
        p_onnx, l_onnx = run(batch)
        if p_onnx.shape != p_torch.shape or l_onnx.shape != l_torch.shape:
            raise OnnxMismatchError(
                f"ONNX output shapes {p_onnx.shape}, {l_onnx.shape} differ from torch's {p_torch.shape}, "
                f"{l_torch.shape} for a {image.shape} image"
            )
        logit_diff = max(logit_diff, float(np.abs(l_onnx - l_torch).max()))
        probability_diff = max(probability_diff, float(np.abs(p_onnx - p_torch).max()))
        probability_sum += float(np.abs(p_onnx - p_torch).astype(np.float64).sum())
        values += p_torch.size
        disagree += int((p_onnx.argmax(1) != p_torch.argmax(1)).sum())
        total += p_torch[:, 0].size
    return {
        "max_abs_logit_diff": logit_diff,
        "max_abs_probability_diff": probability_diff,
        "mean_abs_probability_diff": probability_sum / max(values, 1),
        "argmax_disagreement": disagree / max(total, 1),
        "images": [list(image.shape) for image in images],
    }


def cached_onnx(model_path: str | os.PathLike, head: str = "stock") -> Path:
    """The checked ONNX export of a checkpoint with decode head ``head``, exported on first use into
    :func:`cache_dir`."""
    import torch

    key = checkpoint_hash(model_path)[:20]
    suffix = "" if head == "stock" else f"-{head}"
    path = cache_dir() / f"segformer-{key}{suffix}-opset{OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    if not path.is_file():
        logger.warning("exporting %s to ONNX (once per checkpoint and head): %s", model_path, path)
        export_onnx(model_path, path, head=head)
    return path


def _session(path: Path, device: str, threads: int | None, arena: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    # idle worker threads sleep instead of spinning: on a shared CPU spinning burns the cores the other threads
    # need (measured here, 2 threads, one 512 px tile: 0.42 s spinning, 0.31 s not)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("onnxruntime here has no CUDA provider; use --backend torch on a GPU")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def onnx_runner(
    model_path: str | os.PathLike, device: str = "cpu", threads: int | None = None, head: str = "stock"
) -> Callable[[np.ndarray], np.ndarray]:
    """(N, 3, H, W) float32 RGB 0..255 -> (N, C, H, W) probabilities, by onnxruntime on the cached export.

    The CPU memory arena (faster: about 20% here at 512 px) keeps the peak of every run. The peak is the
    first-stage attention, which grows with the square of the model input's area: about 1.7 GB with the arena
    at 1024 px (a 512 px tile at input scale 2) against 1.1 GB without. So the arena is on only for models
    that see 512 px tiles at their own size (input scale <= 1), which keeps large images within 3 GB.
    """
    from cryonuseg_hf.model.postprocess import params_from_config

    _, input_scale = params_from_config(model_path)
    session = _session(cached_onnx(model_path, head), device, threads, arena=input_scale <= 1.0)

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {"images": batch})[0]

    return run
