"""Nuclei instances from any H&E image: read it, run the SegFormer (in tiles when large), post-process.

The data flow, one function each:

1. :func:`~cryonuseg_hf.model.images.read_image` / :func:`~cryonuseg_hf.model.images.as_rgb8`: a PNG, JPEG or TIFF file (or an array) -> (H, W, 3) uint8 RGB. Grey,
   RGBA, palette and 16-bit images are converted and the conversion is logged; anything else is an error that
   names the file. The size is checked from the file header before any pixel is decoded.
2. :func:`load_predictor`: a saved checkpoint (default ``cryonuseg_hf.MODEL_PATH``) -> a :class:`Predictor`
   that maps RGB tiles to (N, C, H, W) class probabilities, with torch, onnxruntime
   (:mod:`cryonuseg_hf.model.onnx_backend`) or OpenVINO (:mod:`cryonuseg_hf.model.openvino_backend`), the decode
   head as stored or folded (:mod:`cryonuseg_hf.model.folded_head`), and the post-processing parameters stored in
   the checkpoint.
3. :func:`predict_instances`: image -> (H, W) int32 instance labels; images larger than one tile go through
   :func:`cryonuseg_hf.model.tiling.predict_tiled`, which makes exactly one tile own each nucleus, or with
   ``blend`` through :func:`cryonuseg_hf.model.blending.blended_probabilities`, which blends the probabilities
   of overlapping windows and post-processes them once.
4. :func:`cryonuseg_hf.model.image_files.predict_files`: many files -> label TIFF, overlay PNG, GeoJSON, ImageJ
   ROI zip and CSV per image, one bad file reported without stopping the others.

:func:`instances_from_pipeline` turns the output of the stock ``pipeline("image-segmentation")`` into instances.

torch, transformers, onnxruntime and openvino are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SIZE
from cryonuseg_hf.model.images import as_rgb8, read_image
from cryonuseg_hf.model.segformer import resolve_device
from cryonuseg_hf.model.tissue import channel_order_problem

logger = logging.getLogger(__name__)

MARGIN = 64
"""Default context on each side of a tile's core, in image pixels: larger than any 40x nucleus."""
_PAD_MULTIPLE = 32  # SegFormer downsamples by 32 in its last stage
_MAX_GRID_STEP = 128  # tiles of 512 px with 64 px margins keep a core of 257 px or more
BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16")
MAX_PHASES = 8
"""The most phases a predictor averages. The logit grid repeats every 2.67 image pixels at input scale 1.5 (4 at
scale 1): offsets past that add model passes at phases close to ones already averaged."""
BLEND_OVERLAP = 64
"""Default least overlap of blended windows, image pixels (see :mod:`cryonuseg_hf.model.blending`). On a 2048 px
mosaic of 16 annotated tiles (``results/predict_levers.md``) 64 px scores as tiles that own their nuclei do, while
128 px loses 0.012 AJI: where two windows are averaged the map is smoother than the single-window maps the
post-processing was tuned on, and touching nuclei merge more often."""
BLEND_BLOCK = 2048
"""Blended images larger than this are blended in blocks of this side that own their nuclei, so memory holds one
block's probabilities (about 80 MB) and not the image's."""


# ------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Predictor:
    """A loaded checkpoint: RGB tile -> class probabilities, plus what the checkpoint says about using it.

    Attributes:
        model_path: the checkpoint folder.
        backend: ``torch``, ``onnx`` or ``openvino``.
        device: ``cpu`` or ``cuda``.
        input_scale: the tile is upsampled by this factor before the encoder (``cryonuseg_input_scale``).
        params: post-processing parameters (``cryonuseg_postprocess``), a ``PostprocessParams``.
        run: (N, 3, H, W) float32 RGB in 0..255 -> (N, C, H, W) float32 probabilities at the same size.
        head: the decode head run, ``stock`` or ``folded``.
        precision: ``fp32`` or ``bf16``.
        phases: views averaged at diagonal offsets of 0 .. ``phases`` - 1 pixels (1 = the image as it is). The
            logits lie on a grid of 4 model pixels (2.67 image pixels at input scale 1.5); averaging the grid's
            phases makes the probabilities, and the nuclei, depend less on where an image's edge falls
            (``experiments/results/phase_views/phase_views.md``). Costs ``phases`` model passes.
    """

    model_path: Path
    backend: str
    device: str
    input_scale: float
    params: Any
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    head: str = "stock"
    precision: str = "fp32"
    phases: int = 1

    def probabilities(self, image: np.ndarray, tta: bool = False) -> np.ndarray:
        """(C, H, W) float32 class probabilities of an (H, W, 3) uint8 image, at image resolution.

        The image is padded (mirrored) to a multiple of 32 pixels and at least 32 on each side, and the padding is
        cut off the result. ``tta`` averages over the 8 flips and rotations (8x slower), in each of the
        predictor's ``phases``.
        """
        return self.batch_probabilities(image[None], tta=tta)[0]

    def batch_probabilities(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, C, H, W) float32 class probabilities of (N, H, W, 3) uint8 images of one size, in one model call
        (``phases`` calls, eight times as many with ``tta``); padded as :meth:`probabilities` pads one image."""
        if self.phases == 1:
            return self._views(images, tta)
        n, (height, width) = self.phases - 1, images.shape[1:3]
        padded = np.pad(images, ((0, 0), (n, 0), (n, 0), (0, 0)), mode="symmetric")
        total, count = None, np.zeros((height, width), np.float32)
        for k in range(min(self.phases, height, width)):
            # the images k pixels down and right of the window's corner, their last k rows and columns cut: every
            # window has the images' size, and the pixels of the last rows and columns average fewer phases
            window = np.ascontiguousarray(padded[:, n - k : n - k + height, n - k : n - k + width])
            p = self._views(window, tta)[:, :, k:, k:]
            if total is None:
                total = np.zeros((*p.shape[:2], height, width), np.float32)
            total[:, :, : height - k, : width - k] += p
            count[: height - k, : width - k] += 1
        return total / count

    def _views(self, images: np.ndarray, tta: bool) -> np.ndarray:
        """The probabilities of one phase: the model's on the padded images, or the mean of its 8 views."""
        height, width = images.shape[1:3]
        pad_h = max(_PAD_MULTIPLE, -(-height // _PAD_MULTIPLE) * _PAD_MULTIPLE) - height
        pad_w = max(_PAD_MULTIPLE, -(-width // _PAD_MULTIPLE) * _PAD_MULTIPLE) - width
        padded = _mirror_pad(images, pad_h, pad_w)
        x = np.ascontiguousarray(padded.transpose(0, 3, 1, 2), dtype=np.float32)
        if not tta:
            return self.run(x)[:, :, :height, :width]
        total = np.zeros((1, 0, 0, 0), np.float32)
        for k in range(4):
            for flip in (False, True):
                view = np.rot90(x, k, axes=(2, 3))
                view = view[..., ::-1] if flip else view
                p = self.run(np.ascontiguousarray(view))
                p = np.rot90(p[..., ::-1] if flip else p, -k, axes=(2, 3))
                total = total + p if total.size else p
        return np.ascontiguousarray(total[:, :, :height, :width] / 8.0)


def _mirror_pad(images: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """(N, H, W, 3) images padded at the bottom and right by mirroring."""
    if pad_h == 0 and pad_w == 0:
        return images
    # "symmetric" repeats the image as often as needed, so even a 1x1 image pads to 32x32
    return np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


def _checkpoint_path(model: str | os.PathLike | None) -> Path:
    from cryonuseg_hf.core.paths import MODEL_PATH

    path = Path(model) if model is not None else MODEL_PATH
    if not (path / "config.json").is_file():
        where = "the shipped checkpoint " if model is None else ""
        raise FileNotFoundError(f"{where}{path}: not a saved SegFormer checkpoint (no config.json there)")
    return path


def _torch_runner(
    model_path: Path, device: str, head: str = "stock", precision: str = "fp32"
) -> Callable[[np.ndarray], np.ndarray]:
    """The torch backend; ``bf16`` runs under ``torch.autocast`` (pays on GPUs with bfloat16 units)."""
    import contextlib

    import torch

    from cryonuseg_hf.model.folded_head import with_head
    from cryonuseg_hf.model.segformer import load_torch_module

    module = with_head(load_torch_module(model_path, device)[0], head)

    def run(batch: np.ndarray) -> np.ndarray:
        autocast = (
            torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            probabilities, _ = module(torch.from_numpy(batch).to(device))
        return probabilities.float().cpu().numpy()

    return run


def load_predictor(
    model: str | os.PathLike | None = None,
    device: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    head: str = "stock",
    precision: str = "fp32",
    phases: int = 1,
) -> Predictor:
    """Load a checkpoint for prediction (cached: loading the same one again is free).

    Args:
        model: a ``save_pretrained`` SegFormer folder; default the shipped ``cryonuseg_hf.MODEL_PATH``.
        device: ``auto`` (CUDA when torch sees a GPU), ``cpu`` or ``cuda``.
        backend: ``torch``, ``onnx`` (onnxruntime; the model is exported once, checked against torch on real
            tiles and cached, see :mod:`cryonuseg_hf.model.onnx_backend`), ``openvino`` (the same export run by
            OpenVINO on the CPU, :mod:`cryonuseg_hf.model.openvino_backend`), or ``auto``: onnx on the CPU (torch,
            with a warning, if the export fails or cannot be cached), torch on a GPU.
        threads: CPU threads for torch, onnxruntime and OpenVINO (default: their own choice).
        head: ``stock`` (the checkpoint's decode head) or ``folded`` (:mod:`cryonuseg_hf.model.folded_head`: the
            same function with its fuse layer folded away, about a quarter less CPU time).
        precision: ``fp32``, or ``bf16`` (openvino and torch: bfloat16 matrix products; checked against torch with
            the tolerance of :mod:`cryonuseg_hf.model.openvino_backend`).
        phases: 1 to 8 views averaged at diagonal offsets of 0 .. ``phases`` - 1 pixels (:class:`Predictor`);
            3 costs three model passes and is far steadier when the image moves by a pixel.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: unknown backend, device, head, precision or phases; bf16 on onnxruntime; CUDA asked for
            without a GPU.
        ImportError: openvino asked for but not installed.
        cryonuseg_hf.model.onnx_backend.OnnxMismatchError: the exported model disagrees with torch.
    """
    from cryonuseg_hf.model.folded_head import HEADS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if isinstance(phases, bool) or not (isinstance(phases, int) and 1 <= phases <= MAX_PHASES):
        raise ValueError(f"phases must be a whole number from 1 to {MAX_PHASES}, got {phases!r}")
    if precision == "bf16" and backend in ("onnx", "auto"):
        raise ValueError(
            f"precision bf16 needs backend openvino (CPU) or torch (GPU), not {backend}: onnxruntime runs fp32"
        )
    path = _checkpoint_path(model).resolve()
    device = resolve_device(device)
    if backend == "openvino" and device != "cpu":
        raise ValueError("the openvino backend runs on the CPU; use --backend torch on a GPU")
    try:
        return replace(_load_predictor(path, device, backend, threads, head, precision), phases=phases)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as error:  # transformers, safetensors and json raise many types for a damaged checkpoint
        from cryonuseg_hf.model.onnx_backend import OnnxMismatchError

        if isinstance(error, (OnnxMismatchError, ImportError)) or str(path) in str(
            error
        ):  # says what is wrong
            raise
        raise ValueError(
            f"{_damaged_file(path)}: cannot load the checkpoint ({type(error).__name__}: {error}); the file is "
            "damaged: save or copy the checkpoint again, or pass another --model"
        ) from None


def _damaged_file(folder: Path) -> Path:
    """The file of a checkpoint that failed to load: a JSON file that does not parse, else the weights."""
    import json

    for name in ("config.json", "preprocessor_config.json"):
        try:
            json.loads((folder / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except ValueError:
            return folder / name
    return folder / "model.safetensors"


def open_predictor(
    path: Path,
    device: str,
    backend: str,
    threads: int | None,
    head: str = "stock",
    precision: str = "fp32",
) -> Predictor:
    """:func:`load_predictor` without its cache and argument checks: read the checkpoint now."""
    from cryonuseg_hf.model.postprocess import params_from_config

    path = Path(path)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    params, input_scale = params_from_config(path)
    run = None
    if backend == "auto" and device == "cpu":
        from cryonuseg_hf.model.onnx_backend import onnx_runner

        try:
            run, backend = onnx_runner(path, device=device, threads=threads, head=head), "onnx"
        except (OSError, ValueError) as error:  # OnnxMismatchError is a ValueError
            logger.warning("ONNX backend unavailable, using torch (%s)", error)
    elif backend == "onnx":
        from cryonuseg_hf.model.onnx_backend import onnx_runner

        run = onnx_runner(path, device=device, threads=threads, head=head)
    elif backend == "openvino":
        from cryonuseg_hf.model.openvino_backend import openvino_runner

        run = openvino_runner(path, threads=threads, head=head, precision=precision)
    if run is None:
        backend, run = "torch", _torch_runner(path, device, head, precision)
    logger.info(
        "loaded %s (%s on %s, %s head, %s, input scale %g)",
        path,
        backend,
        device,
        head,
        precision,
        input_scale,
    )
    return Predictor(path, backend, device, input_scale, params, run, head, precision)


_load_predictor = functools.lru_cache(maxsize=4)(open_predictor)


# ---------------------------------------------------------------------------------------------- instances


def predict_instances(
    image: np.ndarray | str | os.PathLike,
    model: str | os.PathLike | Predictor | None = None,
    *,
    device: str = "auto",
    backend: str = "auto",
    params: Any = None,
    tile_size: int = TILE_SIZE,
    margin: int = MARGIN,
    tta: bool = False,
    threads: int | None = None,
    progress: bool = False,
    blend: bool = False,
    overlap: int = BLEND_OVERLAP,
    batch_size: int = 1,
    head: str = "stock",
    precision: str = "fp32",
    allow_non_tissue: bool = False,
) -> np.ndarray:
    """Nuclei instance labels of an H&E image at 40x.

    Refused before any work: an image whose colours look channel-reversed (BGR,
    :func:`~cryonuseg_hf.model.tissue.channel_order_problem`), and tiles or blended windows whose stride makes each
    pixel run through the model more than ``MAX_PASSES`` times (:func:`~cryonuseg_hf.model.tiling.check_window_work`).

    Args:
        image: an (H, W, 3) uint8 RGB array (grey, RGBA and 16-bit are converted), or a PNG/JPEG/TIFF path.
        model: a checkpoint folder, a :class:`Predictor` from :func:`load_predictor` (fastest for many images),
            or None for the shipped ``cryonuseg_hf.MODEL_PATH``.
        device: ``auto``, ``cpu`` or ``cuda`` (ignored when ``model`` is a Predictor).
        backend: ``auto``, ``torch`` or ``onnx`` (ignored when ``model`` is a Predictor).
        params: post-processing parameters (``PostprocessParams`` or dict); default those in the checkpoint.
        tile_size: images larger than this (either side) are predicted in tiles (windows) of this side ...
        margin: ... each owning the nuclei whose centroid lies in its core, ``margin`` pixels in from its edges
            (with ``blend``: the context of the blocks of an image larger than ``BLEND_BLOCK``).
        tta: average the probabilities over the 8 flips and rotations (8x slower).
        threads: CPU threads (ignored when ``model`` is a Predictor).
        progress: show a progress bar over tiles.
        blend: blend the class probabilities of windows overlapping by ``overlap`` pixels and post-process them
            once (:mod:`cryonuseg_hf.model.blending`), instead of letting each tile own its nuclei.
        overlap: least overlap of blended windows, pixels.
        batch_size: blended windows of one size run through the model together.
        head, precision: as in :func:`load_predictor` (ignored when ``model`` is a Predictor).
        allow_non_tissue: predict an image whose colours look channel-reversed instead of refusing it.

    Returns:
        (H, W) int32 labels, 0 = background, 1..N one per nucleus.

    Raises:
        ValueError: the image looks channel-reversed, or the tiling is refused (the message says the fix).

    Example:
        >>> import cryonuseg_hf
        >>> labels = cryonuseg_hf.predict_instances("tile.png")  # doctest: +SKIP
    """
    from cryonuseg_hf.model.postprocess import probabilities_to_instances
    from cryonuseg_hf.model.tiling import check_blend, predict_tiled

    rgb = read_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb8(image)
    problem = None if allow_non_tissue else channel_order_problem(rgb)
    if problem:
        raise ValueError(f"not an RGB H&E image: {problem}, or pass allow_non_tissue=True if it is one")
    if isinstance(model, Predictor):
        predictor = model
    else:
        predictor = load_predictor(model, device, backend, threads, head=head, precision=precision)
    params = predictor.params if params is None else params
    # windows start on the model's sampling grid (stride 32 at its input), as the whole image would
    align = grid_step(predictor.input_scale)
    if blend:
        check_blend(rgb.shape[:2], tile_size, overlap, align)
        label_block = blended_labeller(predictor, params, tile_size, overlap, batch_size, tta)
        return predict_tiled(rgb, label_block, tile_size=BLEND_BLOCK, margin=margin, align=align)

    def predict_tile(tile: np.ndarray) -> np.ndarray:
        return probabilities_to_instances(predictor.probabilities(tile, tta=tta), params)

    return predict_tiled(
        rgb, predict_tile, tile_size=tile_size, margin=margin, align=align, progress=progress
    )


def blended_labeller(
    predictor: Predictor,
    params: Any = None,
    window: int = TILE_SIZE,
    overlap: int = BLEND_OVERLAP,
    batch_size: int = 1,
    tta: bool = False,
    skip: Callable[[np.ndarray], bool] | None = None,
    stats: dict | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function (H, W, 3) uint8 image -> (H, W) int32 instance labels that blends the probabilities of windows
    of side ``window`` overlapping by ``overlap`` (:func:`cryonuseg_hf.model.blending.blended_probabilities`) and
    post-processes the blend once with ``params`` (default the predictor's); ``skip`` and ``stats`` as there."""
    from cryonuseg_hf.model.blending import blended_probabilities
    from cryonuseg_hf.model.postprocess import probabilities_to_instances

    params = predictor.params if params is None else params
    align = grid_step(predictor.input_scale)

    def label(image: np.ndarray) -> np.ndarray:
        probabilities = blended_probabilities(
            image,
            functools.partial(predictor.batch_probabilities, tta=tta),
            window=window,
            overlap=overlap,
            align=align,
            batch_size=batch_size,
            skip=skip,
            stats=stats,
        )
        return probabilities_to_instances(probabilities, params)

    return label


def grid_step(input_scale: float) -> int:
    """The smallest shift in image pixels that moves the model's input by a whole multiple of its 32 px grid.

    A window that starts at a multiple of it is resized and sampled exactly as the same pixels inside the whole
    image are (bilinear resizing included), so tiled and untiled predictions differ only by what the model sees
    around them. Scales without such a step of at most 128 px get the nearest one (a sub-pixel offset).

    >>> grid_step(1.0), grid_step(2.0), grid_step(1.5), grid_step(1.25)
    (32, 16, 64, 128)
    """
    for step in range(1, _MAX_GRID_STEP + 1):
        at_input = step * input_scale / _PAD_MULTIPLE
        if abs(at_input - round(at_input)) < 1e-9:
            return step
    return max(1, round(_PAD_MULTIPLE / input_scale))  # no exact step small enough: the nearest grid


def instances_from_pipeline(segments: Sequence[dict], config: Any, params: Any = None) -> np.ndarray:
    """Instances from the output of the stock ``transformers`` ``pipeline("image-segmentation")``.

    The stock pipeline returns one binary mask per semantic class (the argmax of the upsampled logits), not
    nuclei. This turns those masks into one-hot class probabilities and runs this package's post-processing,
    so the result is the same as :func:`predict_instances` up to the soft probabilities it cannot see (every
    nucleus pixel has probability 1 here, so ``min_confidence`` drops nothing). The pipeline's image processor
    resizes every image to the fixed training size (``512 * input_scale``), so this path is right for 512x512
    tiles at 40x only; use :func:`predict_instances` for other sizes.

    Args:
        segments: the pipeline's list of ``{"label": class name, "mask": PIL image}``.
        config: the model config (``pipe.model.config``), a dict or a checkpoint folder; gives ``label2id``
            and the post-processing parameters.
        params: override the post-processing parameters.

    Returns:
        (H, W) int32 instance labels.

    Example:
        >>> from transformers import pipeline  # doctest: +SKIP
        >>> pipe = pipeline("image-segmentation", model=str(cryonuseg_hf.MODEL_PATH))  # doctest: +SKIP
        >>> labels = instances_from_pipeline(pipe("tile.png"), pipe.model.config)  # doctest: +SKIP
    """
    from cryonuseg_hf.model.postprocess import config_values, params_from_config, probabilities_to_instances

    values = config_values(config)
    label2id = {str(k): int(v) for k, v in values["label2id"].items()}
    if not segments:
        raise ValueError("the pipeline returned no segment")
    first = np.asarray(segments[0]["mask"])
    probabilities = np.zeros((len(label2id), *first.shape[:2]), np.float32)
    for segment in segments:
        if segment["label"] not in label2id:
            raise ValueError(
                f"pipeline label {segment['label']!r} is not in the config's label2id {label2id}"
            )
        mask = np.asarray(segment["mask"])
        if mask.shape[:2] != first.shape[:2]:
            raise ValueError(f"pipeline masks differ in size: {mask.shape} vs {first.shape}")
        probabilities[label2id[segment["label"]]] = mask > 0
    if params is None:
        params, _ = params_from_config(values)
    return probabilities_to_instances(probabilities, params)


def block_labeller(
    predictor: Predictor,
    window: int = TILE_SIZE,
    overlap: int = BLEND_OVERLAP,
    batch_size: int = 1,
    tta: bool = False,
) -> Callable[[np.ndarray, Callable[[np.ndarray], bool], dict], np.ndarray]:
    """A labeller of a slide's blocks (:data:`cryonuseg_hf.model.slides.blocks.BlockLabeller`): the block's windows
    blended as in :func:`blended_labeller`, windows without tissue not run."""

    def label(image: np.ndarray, blank: Callable[[np.ndarray], bool], counts: dict) -> np.ndarray:
        labeller = blended_labeller(
            predictor, None, window, overlap, batch_size, tta, skip=blank, stats=counts
        )
        return labeller(image)

    return label


# -------------------------------------------------------------------------------------------------- files
