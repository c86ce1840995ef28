"""Nuclei instances from any H&E image: read it, run the SegFormer (in tiles when large), post-process.

The data flow, one function each:

1. :func:`read_image` / :func:`as_rgb8`: a PNG, JPEG or TIFF file (or an array) -> (H, W, 3) uint8 RGB. Grey,
   RGBA, palette and 16-bit images are converted and the conversion is logged; anything else is an error that
   names the file. The size is checked from the file header before any pixel is decoded.
2. :func:`load_predictor`: a saved checkpoint (default ``cryonuseg_hf.MODEL_PATH``) -> a :class:`Predictor`
   that maps an RGB tile to (C, H, W) class probabilities, with torch or onnxruntime
   (:mod:`cryonuseg_hf.onnx_backend`) and the post-processing parameters stored in the checkpoint.
3. :func:`predict_instances`: image -> (H, W) int32 instance labels; images larger than one tile go through
   :func:`cryonuseg_hf.tiling.predict_tiled`, which makes exactly one tile own each nucleus.
4. :func:`predict_files`: many files -> label TIFF, overlay PNG, GeoJSON, ImageJ ROI zip and CSV per image
   (:mod:`cryonuseg_hf.export`), one bad file reported without stopping the others.

:func:`instances_from_pipeline` turns the output of the stock ``pipeline("image-segmentation")`` into instances.

torch, transformers and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_PIXELS = 2**28
"""Largest image accepted (16384 x 16384): beyond it, cut the image first (whole slides need a slide reader)."""
MIN_TISSUE_FRACTION = 0.25
"""Below this fraction of content (or stained) pixels an image is not treated as a tissue image."""
TILE_SIZE = 512
"""Default tile side in image pixels: the size of a CryoNuSeg tile, which the model was trained on."""
MARGIN = 64
"""Default context on each side of a tile's core, in image pixels: larger than any 40x nucleus."""
_PAD_MULTIPLE = 32  # SegFormer downsamples by 32 in its last stage
_MAX_GRID_STEP = 128  # tiles of 512 px with 64 px margins keep a core of 257 px or more
BACKENDS = ("auto", "torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")


# ---------------------------------------------------------------------------------------------------- reading


def as_rgb8(image: Any, name: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 RGB copy of ``image``, converting grey, RGBA and 16-bit images (and saying so).

    Args:
        image: (H, W) grey, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8, or uint16 (scaled by 255/65535).
        name: how log messages and errors call the image (a file name).

    Returns:
        (H, W, 3) uint8, C-contiguous.

    Raises:
        ValueError: other dtypes (float images are ambiguous: 0..1 or 0..255?), shapes or an empty image.

    >>> as_rgb8(np.zeros((2, 3), np.uint8)).shape
    (2, 3, 3)
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(
            f"{name}: expected an (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA image, got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {array.shape}")
    if array.dtype == np.uint16:
        logger.warning(
            "%s: 16-bit image (values %d..%d) scaled to 8 bits by 255/65535",
            name,
            int(array.min()),
            int(array.max()),
        )
        array = np.round(array.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(
            f"{name}: pixel type {array.dtype} is not supported; give uint8 (or uint16) RGB "
            "(float images are ambiguous: convert them to uint8 first)"
        )
    if array.ndim == 2:
        logger.warning("%s: grey image converted to RGB (the model expects H&E colour)", name)
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        if (alpha < 1).any():
            logger.warning("%s: RGBA image with transparency; composited onto white", name)
        else:
            logger.warning("%s: RGBA image converted to RGB (alpha is opaque everywhere)", name)
        array = np.round(array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array)


def _check_size(path: Path, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ValueError(
            f"{path}: image of {width}x{height} pixels is larger than the limit of {max_pixels} pixels; "
            "cut it into pieces (or raise max_pixels / --max-pixels if the memory allows)"
        )
    if height == 0 or width == 0:
        raise ValueError(f"{path}: empty image ({width}x{height})")


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            if "Y" not in axes or "X" not in axes:
                raise ValueError(f"{path}: TIFF without image axes (axes {axes!r})")
            _check_size(path, shape[axes.index("Y")], shape[axes.index("X")], max_pixels)
            extra = {a: n for a, n in zip(axes, shape, strict=True) if a not in "YXS" and n > 1}
            if extra:
                raise ValueError(
                    f"{path}: TIFF holds a stack ({dict(extra)} besides the image plane, axes {axes!r}); "
                    "save one RGB plane per file"
                )
            page = series.pages[0] if series.pages else tif.pages.first
            colour = _tiff_colour(path, page)
            array = series.asarray()
    except ValueError:
        raise
    except Exception as error:  # tifffile raises TiffFileError, struct.error, OSError on damaged files
        raise ValueError(f"{path}: unreadable TIFF ({type(error).__name__}: {error})") from None
    kept = "".join(a for a, n in zip(axes, shape, strict=True) if a in "YXS" or n > 1)
    array = array.reshape([n for a, n in zip(axes, shape, strict=True) if a in kept])
    if "S" in kept and kept.index("S") < kept.index("Y"):
        array = np.moveaxis(array, kept.index("S"), -1)  # planar RGB -> (H, W, S)
    return _orient(_tiff_to_rgb(path, array, colour), colour["orientation"], path)


def _tiff_colour(path: Path, page) -> dict[str, Any]:
    """What the pixels of a TIFF page mean: photometric interpretation, colour map, extra samples, orientation.

    Raises:
        ValueError: an interpretation this reader cannot turn into RGB faithfully (CIELab, YCbCr stored raw, ...).
    """
    from tifffile import PHOTOMETRIC

    photometric = PHOTOMETRIC(page.photometric)
    tags = page.tags
    extra = tags["ExtraSamples"].value if "ExtraSamples" in tags else ()
    extrasamples = (extra,) if isinstance(extra, int) else tuple(extra)
    known = (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE, PHOTOMETRIC.RGB, PHOTOMETRIC.PALETTE)
    if photometric == PHOTOMETRIC.SEPARATED:
        inkset = tags["InkSet"].value if "InkSet" in tags else 1
        if inkset != 1 or page.samplesperpixel - len(extrasamples) != 4:
            raise ValueError(
                f"{path}: TIFF with {page.samplesperpixel} separated ink channels (InkSet {inkset}) cannot be "
                "turned into RGB; save it as RGB"
            )
    elif photometric == PHOTOMETRIC.YCBCR:
        if page.compression not in (6, 7):  # tifffile decodes JPEG-compressed YCbCr to RGB itself
            raise ValueError(f"{path}: TIFF stores raw YCbCr samples; save it as RGB")
    elif photometric not in known:
        raise ValueError(
            f"{path}: TIFF photometric interpretation {photometric.name} is not supported; save it as RGB"
        )
    orientation = int(tags["Orientation"].value) if "Orientation" in tags else 1
    return {
        "photometric": photometric.name,
        "colormap": page.colormap if photometric == PHOTOMETRIC.PALETTE else None,
        "extrasamples": extrasamples,
        "orientation": orientation,
    }


def _tiff_to_rgb(path: Path, array: np.ndarray, colour: dict[str, Any]) -> np.ndarray:
    """Decoded TIFF samples -> what :func:`as_rgb8` takes (grey, RGB or RGBA), by the photometric interpretation."""
    photometric, extrasamples = colour["photometric"], colour["extrasamples"]
    if photometric == "PALETTE":
        colormap = colour["colormap"]
        if colormap is None or array.ndim != 2:
            raise ValueError(f"{path}: palette TIFF without a usable colour map; save it as RGB")
        logger.warning("%s: palette TIFF converted to RGB through its colour map", path)
        lookup = np.round(np.asarray(colormap, np.float64).T / 257.0) if colormap.max() > 255 else colormap.T
        return np.asarray(lookup, np.uint8)[np.clip(array, 0, len(lookup) - 1)]
    if photometric == "MINISWHITE":
        logger.warning("%s: TIFF stored with white as zero (MINISWHITE); inverted", path)
        if array.dtype.kind != "u":
            raise ValueError(
                f"{path}: MINISWHITE TIFF of {array.dtype} samples is not supported; save it as RGB"
            )
        array = np.iinfo(array.dtype).max - array
    if photometric == "SEPARATED":
        if array.dtype != np.uint8:
            raise ValueError(
                f"{path}: CMYK TIFF of {array.dtype} samples is not supported; save it as 8-bit RGB"
            )
        logger.warning(
            "%s: CMYK TIFF converted to RGB (no colour profile: R = (255 - C)(255 - K) / 255 ...)", path
        )
        ink = array[..., :4].astype(np.float64)
        rgb = np.round((255.0 - ink[..., :3]) * (255.0 - ink[..., 3:4]) / 255.0).astype(np.uint8)
        return rgb if array.shape[-1] == 4 else np.concatenate([rgb, array[..., 4:5]], axis=-1)
    if array.ndim == 3 and extrasamples:
        colours = array.shape[2] - len(extrasamples)
        kind = extrasamples[0]
        if kind == 1:  # associated (premultiplied) alpha: composite onto white directly
            alpha = array[..., colours : colours + 1].astype(np.float64) / np.iinfo(array.dtype).max
            top = float(np.iinfo(array.dtype).max)
            logger.warning("%s: TIFF with premultiplied alpha composited onto white", path)
            array = np.round(array[..., :colours] + top * (1.0 - alpha)).astype(array.dtype)
        elif kind == 2:  # unassociated alpha: as_rgb8 composites it
            array = array[..., : colours + 1]
        else:  # unspecified extra samples are not alpha
            logger.warning("%s: TIFF extra sample(s) without a meaning dropped", path)
            array = array[..., :colours]
        if array.ndim == 3 and array.shape[2] == 2:  # grey + alpha
            array = array[..., [0, 0, 0, 1]]
    return array


def _orient(array: np.ndarray, orientation: int, path: Path) -> np.ndarray:
    """Turn pixels stored in TIFF/EXIF ``orientation`` 1..8 into the upright image."""
    if orientation == 1:
        return array
    if orientation not in range(2, 9):
        raise ValueError(f"{path}: orientation tag {orientation} is not one of 1..8")
    logger.warning("%s: stored with orientation %d; turned upright", path, orientation)
    turns = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(turns[orientation](array))


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as handle:
        head = handle.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26:
        return head[24]
    return None


def _read_pil(path: Path, max_pixels: int) -> np.ndarray:
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check is replaced by _check_size against max_pixels
    try:
        return _decode_pil(path, max_pixels)
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _decode_pil(path: Path, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        handle = Image.open(path)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image (PNG, JPEG or TIFF expected)") from None
    with handle:
        if handle.format not in ("PNG", "JPEG", "MPO", "TIFF"):
            raise ValueError(
                f"{path}: {handle.format} images are not supported; convert to PNG, JPEG or TIFF"
            )
        width, height = handle.size
        _check_size(path, height, width, max_pixels)
        mode = handle.mode
        if mode not in ("RGB", "RGBA", "L", "LA", "P", "PA", "I;16", "I;16B", "I"):
            raise ValueError(f"{path}: image mode {mode!r} is not supported; save it as 8-bit RGB")
        if mode in ("RGB", "RGBA") and _png_bit_depth(path) == 16:
            logger.warning("%s: 16-bit colour PNG scaled to 8 bits (the high byte of each sample)", path)
        try:
            orientation = int(handle.getexif().get(0x0112, 1) or 1)  # EXIF Orientation; may read to the end
            if mode in ("P", "PA"):
                logger.warning("%s: palette image converted to RGB", path)
                handle = handle.convert("RGBA" if "transparency" in handle.info or mode == "PA" else "RGB")
            elif mode == "LA":
                logger.warning("%s: grey+alpha image converted to RGBA", path)
                handle = handle.convert("RGBA")
            array = np.asarray(handle)
        except Exception as error:  # truncated or corrupt data: OSError, SyntaxError, zlib.error ...
            raise ValueError(
                f"{path}: unreadable {handle.format} ({type(error).__name__}: {error})"
            ) from None
    if mode == "I":
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"{path}: 32-bit integer image is not supported; save it as 8-bit RGB")
        array = array.astype(np.uint16)
    return _orient(array, orientation, path)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a PNG, JPEG or TIFF file as (H, W, 3) uint8 RGB (see :func:`as_rgb8` for conversions).

    Args:
        path: the image file.
        max_pixels: refuse larger images; checked from the header, before decoding.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an image, unsupported format or pixel type, unreadable data, too large.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    try:
        array = _read_tiff(path, max_pixels) if _is_tiff(path) else _read_pil(path, max_pixels)
    except PermissionError:
        raise PermissionError(f"{path}: no permission to read it") from None
    return as_rgb8(array, name=str(path))


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named in ``inputs``, folders expanded to their images (sorted; not recursive).

    Files are kept whatever their suffix (reading them says what is wrong); missing paths are kept too, so
    that the caller reports them among the results. In a folder, the label TIFF and overlay PNG that
    :func:`predict_files` wrote for another image of that folder are skipped: predictions are never read as
    new images (``-o`` may be the input folder).
    """
    from cryonuseg_hf.export import output_paths

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            ours = {out for p in files for out in output_paths(path, p.stem).values()}
            skipped = sorted(p for p in files if p in ours)
            if skipped:
                logger.info("%s: skipped %d earlier prediction output(s)", path, len(skipped))
            images = sorted(p for p in files if p not in ours)
            if not images:
                logger.warning("%s: folder holds no %s file", path, "/".join(IMAGE_SUFFIXES))
            found.extend(images)
        else:
            found.append(path)
    return found


# ------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Predictor:
    """A loaded checkpoint: RGB tile -> class probabilities, plus what the checkpoint says about using it.

    Attributes:
        model_path: the checkpoint folder.
        backend: ``torch`` or ``onnx``.
        device: ``cpu`` or ``cuda``.
        input_scale: the tile is upsampled by this factor before the encoder (``cryonuseg_input_scale``).
        params: post-processing parameters (``cryonuseg_postprocess``), a ``PostprocessParams``.
        run: (N, 3, H, W) float32 RGB in 0..255 -> (N, C, H, W) float32 probabilities at the same size.
    """

    model_path: Path
    backend: str
    device: str
    input_scale: float
    params: Any
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    def probabilities(self, image: np.ndarray, tta: bool = False) -> np.ndarray:
        """(C, H, W) float32 class probabilities of an (H, W, 3) uint8 image, at image resolution.

        The image is padded (mirrored) to a multiple of 32 pixels and at least 32 on each side, and the padding is
        cut off the result. ``tta`` averages over the 8 flips and rotations (8x slower).
        """
        height, width = image.shape[:2]
        pad_h = max(_PAD_MULTIPLE, -(-height // _PAD_MULTIPLE) * _PAD_MULTIPLE) - height
        pad_w = max(_PAD_MULTIPLE, -(-width // _PAD_MULTIPLE) * _PAD_MULTIPLE) - width
        padded = _mirror_pad(image, pad_h, pad_w)
        x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        if not tta:
            return self.run(x)[0, :, :height, :width]
        total = np.zeros((1, 0, 0, 0), np.float32)
        for k in range(4):
            for flip in (False, True):
                view = np.rot90(x, k, axes=(2, 3))
                view = view[..., ::-1] if flip else view
                p = self.run(np.ascontiguousarray(view))
                p = np.rot90(p[..., ::-1] if flip else p, -k, axes=(2, 3))
                total = total + p if total.size else p
        return np.ascontiguousarray(total[0, :, :height, :width] / 8.0)


def _mirror_pad(image: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    if pad_h == 0 and pad_w == 0:
        return image
    # "symmetric" repeats the image as often as needed, so even a 1x1 image pads to 32x32
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


def _resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def _checkpoint_path(model: str | os.PathLike | None) -> Path:
    from cryonuseg_hf import MODEL_PATH

    path = Path(model) if model is not None else MODEL_PATH
    if not (path / "config.json").is_file():
        where = "the shipped checkpoint " if model is None else ""
        raise FileNotFoundError(f"{where}{path}: not a saved SegFormer checkpoint (no config.json there)")
    return path


def image_statistics(model_path: Path) -> tuple[list[float], list[float]]:
    """(mean, std) of the checkpoint's image processor (``preprocessor_config.json``), ImageNet if absent."""
    import json

    from cryonuseg_hf.model import IMAGE_MEAN, IMAGE_STD

    config_path = model_path / "preprocessor_config.json"
    if not config_path.is_file():
        logger.warning("%s: no preprocessor_config.json; using ImageNet mean and std", model_path)
        return list(IMAGE_MEAN), list(IMAGE_STD)
    config = json.loads(config_path.read_text())
    if not config.get("do_normalize", True):
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return list(config.get("image_mean", IMAGE_MEAN)), list(config.get("image_std", IMAGE_STD))


def load_torch_module(model_path: Path, device: str = "cpu"):
    """``(probability_module on device, input_scale)`` for a checkpoint folder, in float32 and eval mode."""
    from cryonuseg_hf.model import load_checkpoint, probability_module
    from cryonuseg_hf.postprocess import params_from_config

    model, config = load_checkpoint(model_path, device=device)
    _, input_scale = params_from_config(config)
    mean, std = image_statistics(model_path)
    return probability_module(model, input_scale, mean, std).to(device), input_scale


def _torch_runner(model_path: Path, device: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    module, _ = load_torch_module(model_path, device)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            probabilities, _ = module(torch.from_numpy(batch).to(device))
        return probabilities.float().cpu().numpy()

    return run


def load_predictor(
    model: str | os.PathLike | None = None,
    device: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
) -> Predictor:
    """Load a checkpoint for prediction (cached: loading the same one again is free).

    Args:
        model: a ``save_pretrained`` SegFormer folder; default the shipped ``cryonuseg_hf.MODEL_PATH``.
        device: ``auto`` (CUDA when torch sees a GPU), ``cpu`` or ``cuda``.
        backend: ``torch``, ``onnx`` (onnxruntime; the model is exported once, checked against torch on real
            tiles and cached, see :mod:`cryonuseg_hf.onnx_backend`), or ``auto``: onnx on the CPU (torch, with a
            warning, if the export fails or cannot be cached), torch on a GPU.
        threads: CPU threads for torch and onnxruntime (default: their own choice).

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: unknown backend or device, or CUDA asked for without a GPU.
        cryonuseg_hf.onnx_backend.OnnxMismatchError: the exported model disagrees with torch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = _checkpoint_path(model).resolve()
    device = _resolve_device(device)
    try:
        return _load_predictor(path, device, backend, threads)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as error:  # transformers, safetensors and json raise many types for a damaged checkpoint
        from cryonuseg_hf.onnx_backend import OnnxMismatchError

        if isinstance(error, OnnxMismatchError) or str(path) in str(error):  # already says what is wrong
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


def open_predictor(path: Path, device: str, backend: str, threads: int | None) -> Predictor:
    """:func:`load_predictor` without its cache and argument checks: read the checkpoint now."""
    from cryonuseg_hf.postprocess import params_from_config

    path = Path(path)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    params, input_scale = params_from_config(path)
    run = None
    if backend == "auto" and device == "cpu":
        from cryonuseg_hf.onnx_backend import onnx_runner

        try:
            run, backend = onnx_runner(path, device=device, threads=threads), "onnx"
        except (OSError, ValueError) as error:  # OnnxMismatchError is a ValueError
            logger.warning("ONNX backend unavailable, using torch (%s)", error)
    elif backend == "onnx":
        from cryonuseg_hf.onnx_backend import onnx_runner

        run = onnx_runner(path, device=device, threads=threads)
    if run is None:
        backend, run = "torch", _torch_runner(path, device)
    logger.info("loaded %s (%s on %s, input scale %g)", path, backend, device, input_scale)
    return Predictor(path, backend, device, input_scale, params, run)


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
) -> np.ndarray:
    """Nuclei instance labels of an H&E image at 40x.

    Args:
        image: an (H, W, 3) uint8 RGB array (grey, RGBA and 16-bit are converted), or a PNG/JPEG/TIFF path.
        model: a checkpoint folder, a :class:`Predictor` from :func:`load_predictor` (fastest for many images),
            or None for the shipped ``cryonuseg_hf.MODEL_PATH``.
        device: ``auto``, ``cpu`` or ``cuda`` (ignored when ``model`` is a Predictor).
        backend: ``auto``, ``torch`` or ``onnx`` (ignored when ``model`` is a Predictor).
        params: post-processing parameters (``PostprocessParams`` or dict); default those in the checkpoint.
        tile_size: images larger than this (either side) are predicted in tiles of this side ...
        margin: ... each owning the nuclei whose centroid lies in its core, ``margin`` pixels in from its edges.
        tta: average the probabilities over the 8 flips and rotations (8x slower).
        threads: CPU threads (ignored when ``model`` is a Predictor).
        progress: show a progress bar over tiles.

    Returns:
        (H, W) int32 labels, 0 = background, 1..N one per nucleus.

    Example:
        >>> import cryonuseg_hf
        >>> labels = cryonuseg_hf.predict_instances("tile.png")  # doctest: +SKIP
    """
    from cryonuseg_hf.postprocess import probabilities_to_instances
    from cryonuseg_hf.tiling import predict_tiled

    predictor = model if isinstance(model, Predictor) else load_predictor(model, device, backend, threads)
    if isinstance(image, (str, os.PathLike)):
        rgb = read_image(image)
    else:
        rgb = as_rgb8(image)
    params = predictor.params if params is None else params

    def predict_tile(tile: np.ndarray) -> np.ndarray:
        return probabilities_to_instances(predictor.probabilities(tile, tta=tta), params)

    # windows start on the model's sampling grid (stride 32 at its input), as the whole image would
    align = grid_step(predictor.input_scale)
    return predict_tiled(
        rgb, predict_tile, tile_size=tile_size, margin=margin, align=align, progress=progress
    )


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
    so the result is the same as :func:`predict_instances` up to the soft probabilities it cannot see.
    The pipeline's image processor resizes every image to the fixed training size (``512 * input_scale``), so
    this path is right for 512x512 tiles at 40x only; use :func:`predict_instances` for other sizes.

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
    import json

    from cryonuseg_hf.postprocess import params_from_config, probabilities_to_instances

    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    values = config if isinstance(config, dict) else config.to_dict()
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


# -------------------------------------------------------------------------------------------------- files


def predict_files(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    predictor: Predictor,
    *,
    overwrite: bool = False,
    tile_size: int = TILE_SIZE,
    margin: int = MARGIN,
    tta: bool = False,
    max_pixels: int = MAX_PIXELS,
    progress: bool = True,
    allow_non_tissue: bool = False,
) -> tuple[dict[Path, dict[str, Path]], dict[Path, str]]:
    """Predict every image and write its outputs (see :func:`cryonuseg_hf.export.write_outputs`).

    A file that fails (missing, unreadable, not an image, too large, not a tissue image, outputs already there
    without ``overwrite``) is reported in the second result, nothing is written for it, and the others go on.
    The five outputs of an image are written as one set (all or none).

    Args:
        inputs: image files and folders of images.
        out_dir: output folder (created); must be writable.
        predictor: from :func:`load_predictor`.
        overwrite: replace existing outputs; otherwise an image whose outputs exist fails.
        tile_size, margin, tta: as in :func:`predict_instances`.
        max_pixels: as in :func:`read_image`.
        progress: show a progress bar (tqdm) over images.
        allow_non_tissue: predict images that :func:`tissue_problem` refuses (black, blank, grey, unstained),
            with a logged warning, instead of failing them.

    Returns:
        ``(written, failures)``: input path -> {output kind -> path}, and input path -> error message.

    Raises:
        PermissionError, FileExistsError: the output folder cannot be created or written, or is a file.
    """
    from tqdm.auto import tqdm

    from cryonuseg_hf.export import output_paths, write_outputs

    out_dir = ensure_writable_folder(out_dir)
    paths = find_images(inputs)
    written: dict[Path, dict[str, Path]] = {}
    failures: dict[Path, str] = {}
    seen_stems: dict[str, Path] = {}
    for path in tqdm(paths, desc="predict", unit="image", disable=not progress or len(paths) < 2):
        try:
            if path.stem in seen_stems:
                raise ValueError(f"{path}: same name as {seen_stems[path.stem]}; its outputs would collide")
            seen_stems[path.stem] = path
            targets = output_paths(out_dir, path.stem)
            existing = [str(p) for p in targets.values() if p.exists()]
            if existing and not overwrite:
                raise FileExistsError(
                    f"{path}: outputs exist already ({', '.join(existing)}); pass --overwrite to replace them"
                )
            image = read_image(path, max_pixels=max_pixels)
            problem = tissue_problem(image)
            if problem and not allow_non_tissue:
                raise ValueError(
                    f"{path}: not an H&E tissue image: {problem}; nothing predicted (pass --allow-non-tissue "
                    "to predict it anyway)"
                )
            if problem:
                logger.warning("%s: not an H&E tissue image (%s); predicted anyway", path, problem)
            labels = predict_instances(
                image, predictor, tile_size=tile_size, margin=margin, tta=tta, progress=progress
            )
            written[path] = write_outputs(image, labels, out_dir, path.stem, overwrite=overwrite)
        except (OSError, ValueError) as error:
            failures[path] = str(error)
            logger.info("failed: %s", error)
    return written, failures


def tissue_problem(image: np.ndarray) -> str | None:
    """Why an image is not an H&E tissue image the model can read, or None when it looks like one.

    The model turns anything into "nuclei", so a black, blank, grey or unstained image yields plausible
    nonsense (an all-black tile gave one nucleus covering a third of it). Thresholds, measured on the 30
    CryoNuSeg tiles (the same as :mod:`cryonuseg_hf.app` warns with): a pixel is content when the mean of its
    R, G, B is below 220 (71 % to 100 % of each tile) and stained when max - min of R, G, B is above 15 as well
    (67.5 % to 100 %); the darkest tile's mean brightness is 89; the least coloured tile's median max - min
    over its content is 36.

    >>> tissue_problem(np.zeros((64, 64, 3), np.uint8))
    'almost black (mean brightness 0 of 255; the darkest CryoNuSeg tile has 89)'
    >>> tissue_problem(np.full((64, 64, 3), 250, np.uint8))
    'blank: 100 % of it is white background or glass (at most 29 % in the CryoNuSeg tiles)'
    """
    rgb = image.astype(np.int16)
    luminance = rgb.mean(axis=2)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    content = luminance < 220
    if luminance.mean() < 60:
        return (
            f"almost black (mean brightness {luminance.mean():.0f} of 255; the darkest CryoNuSeg tile has 89)"
        )
    if content.mean() < MIN_TISSUE_FRACTION:
        return (
            f"blank: {100 * (1 - content.mean()):.0f} % of it is white background or glass "
            "(at most 29 % in the CryoNuSeg tiles)"
        )
    if np.median(chroma[content]) < 5:
        return (
            "grey: it has almost no colour, and the model reads H&E staining (purple nuclei on pink tissue)"
        )
    stained = (content & (chroma > 15)).mean()
    if stained < MIN_TISSUE_FRACTION:
        return f"unstained: only {100 * stained:.0f} % of it looks like stained tissue (at least 67 % in every tile)"
    return None


def ensure_writable_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there, before any work is done."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: output path exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(
            f"{path}: cannot write to the output folder ({error.strerror or error})"
        ) from None
    return path
