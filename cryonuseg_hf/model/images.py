"""Reading H&E images: a PNG, JPEG or TIFF file (or an array) -> (H, W, 3) uint8 RGB.

Grey, RGBA, palette and 16-bit images are converted and the conversion is logged; anything else is an error that
names the file. The size is checked from the file header before any pixel is decoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_PIXELS = 2**28
"""Largest image accepted (16384 x 16384): beyond it, cut the image first (whole slides need a slide reader)."""


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
            try:
                array = series.asarray()
            except ValueError as error:  # tifffile's errors for damaged or cut data are ValueErrors
                raise ValueError(f"{path}: damaged or truncated TIFF ({error})") from None
    except ValueError:
        raise
    except Exception as error:  # tifffile raises TiffFileError, struct.error, OSError on damaged files
        raise ValueError(f"{path}: unreadable TIFF ({type(error).__name__}: {error})") from None
    kept = "".join(a for a, n in zip(axes, shape, strict=True) if a in "YXS" or n > 1)
    if array.size != np.prod(
        shape, dtype=np.int64
    ):  # tifffile returns what it could decode of a damaged file
        raise ValueError(
            f"{path}: damaged or truncated TIFF (its header declares {tuple(shape)}, {array.size} values decoded)"
        )
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
    :func:`~cryonuseg_hf.model.image_files.predict_files` wrote for another image of that folder are skipped: predictions are never read as
    new images (``-o`` may be the input folder).
    """
    from cryonuseg_hf.model.export import output_paths

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
