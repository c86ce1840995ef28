"""Opening a whole-slide image and reading it in the model's frame.

:func:`open_slide`: an Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF or pyramidal TIFF -> a :class:`Slide`.
The reader is ``tiffslide`` (a pure-Python reader on ``tifffile``, the TIFF engine the package already writes and
reads with; it reads pyramids stored as SubIFDs, which OpenSlide's generic-TIFF driver does not, and needs no
native library). The slide's µm/px comes from its metadata (or ``mpp``); the level read for the model is the one
closest to the model's ``MODEL_MPP``, used as it is when within ``MPP_TOLERANCE`` and resampled to ``MODEL_MPP``
otherwise (:func:`read_model_region`). A slide of one level (no pyramid) is read when it is no larger than a plain
image may be. Truncated or damaged files, larger one-level files, slides without µm/px or with one outside
``MPP_RANGE``, slides larger than a glass slide, and unsupported formats are errors that name the file and the way
out.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.model.images import MAX_PIXELS, as_rgb8

logger = logging.getLogger(__name__)

MODEL_MPP = 0.2505
"""µm per pixel the model was trained at: the median over the TCGA slides the CryoNuSeg tiles were cut from
(``microns_per_pixel`` in ``Selected_WSIs.xlsx``: 29 slides, 0.2265..0.254; Human_Testes_01's is missing)."""
MPP_TOLERANCE = 0.1
"""A level within 10 % of ``MODEL_MPP`` is read as it is; otherwise it is resampled to ``MODEL_MPP``."""
MPP_RANGE = (0.1, 2.0)
"""µm per level-0 pixel a brightfield slide scanner plausibly gives: 0.1 is finer than light resolves (about
0.2 µm with an oil objective; 40x scanners give 0.22 to 0.27, 80x about 0.12), 2.0 a 5x scan, where a nucleus is
3 or 4 pixels wide and the model, trained at 0.25, would have to upsample it 8x. Outside it, the metadata is wrong
(a file tagged 25 or 0.001 µm/px) or the scan holds nothing the model can read; ``--mpp`` overrides a wrong tag."""
MAX_SLIDE_MM = 80.0
"""Longest side, in mm, of a slide's level 0 at its µm/px: a glass slide is 75 x 25 mm (75 x 50 for a double one),
so a larger extent means a wrong µm/px."""
SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif")
"""Always slides; a ``.tif``/``.tiff`` is a slide when it holds a pyramid (see :func:`is_slide`)."""
UNSUPPORTED_SUFFIXES = {
    ".mrxs": "3DHISTECH MIRAX",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".czi": "Zeiss CZI",
    ".isyntax": "Philips iSyntax",
}
_CONVERT_HINT = (
    "convert it to a pyramidal TIFF, e.g. `vips tiffsave in out.tif --tile --pyramid --compression jpeg`"
)


@dataclass(frozen=True)
class Slide:
    """An open slide and the frame the model sees it in.

    Attributes:
        path: the slide file.
        reader: the ``tiffslide.TiffSlide``.
        mpp: µm per level-0 pixel (x, y).
        level: the level read for the model.
        scale: model pixels per pixel of that level (1.0: read as it is).
        shape: (rows, cols) of the slide in model pixels.
        per_level0: model pixels per level-0 pixel (x, y).
    """

    path: Path
    reader: Any = field(repr=False)
    mpp: tuple[float, float]
    level: int
    scale: float
    shape: tuple[int, int]
    per_level0: tuple[float, float]

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return tuple(self.reader.dimensions)

    @property
    def model_mpp(self) -> float:
        """µm per model pixel (the mean of x and y)."""
        return (self.mpp[0] / self.per_level0[0] + self.mpp[1] / self.per_level0[1]) / 2


def is_slide(path: str | os.PathLike) -> bool:
    """Whether :func:`open_slide` (not :func:`cryonuseg_hf.model.images.read_image`) should read ``path``.

    Slide formats by suffix (also those tiffslide cannot read, so that they get its clear error), and TIFF
    files that hold more than one resolution level, or whose first page points to reduced-resolution pages
    (SubIFDs, as ``vips`` and :func:`~cryonuseg_hf.model.slides.pyramid.write_pyramid` store a pyramid), so that
    a truncated pyramidal TIFF is reported as a damaged slide. A missing file is not a slide.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES or suffix in UNSUPPORTED_SUFFIXES:
        return True
    if suffix not in (".tif", ".tiff") or not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if "SubIFDs" in tif.pages.first.tags:  # read before the series, which a truncated file breaks
                return True
            return len(tif.series[0].levels) > 1
    except Exception:  # unreadable TIFFs are reported by read_image, which reads them as plain images
        return False


def _damage(path: Path) -> str | None:
    """Why a TIFF-based file is damaged (its pages do not parse, or point past its end), or None."""
    import tifffile

    with open(path, "rb") as handle:
        if handle.read(2) not in (b"II", b"MM"):
            return None  # not a TIFF at all: not damaged, another format
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            ends = [int(np.add(p.dataoffsets, p.databytecounts).max(initial=0)) for p in tif.pages]
    except Exception as error:  # tifffile raises many kinds for a damaged file
        return f"its TIFF structure does not parse ({type(error).__name__}: {error})"
    if max(ends, default=0) > size:
        return f"its pixels need {max(ends)} bytes, the file has {size}"
    return None


def open_slide(path: str | os.PathLike, mpp: float | None = None, max_pixels: int = MAX_PIXELS) -> Slide:
    """Open a whole-slide image and choose the level and scale the model reads it at.

    A slide of one level (no pyramid, such as a small Aperio region) is read whole at full resolution to find
    its tissue, so it is accepted up to ``max_pixels``, the limit of a plain image.

    Args:
        path: the slide file.
        mpp: µm per level-0 pixel, overriding (or standing in for) the slide's metadata.
        max_pixels: largest slide of one level accepted.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported format, truncated file, one level larger than ``max_pixels``, no µm/px (and
            no ``mpp``).
    """
    import tiffslide

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in UNSUPPORTED_SUFFIXES:
        raise ValueError(
            f"{path}: {UNSUPPORTED_SUFFIXES[path.suffix.lower()]} slides are not supported (the reader, "
            f"tiffslide, reads SVS, NDPI, SCN, BIF and pyramidal TIFF); {_CONVERT_HINT}"
        )
    try:
        with warnings.catch_warnings():
            # tiffslide warns on every NDPI; the size, levels and µm/px read here are parsed in full
            warnings.filterwarnings("ignore", "hamamatsu-format metadata parsing only partially implemented")
            reader = tiffslide.TiffSlide(path)
            dimensions = reader.level_dimensions
            properties = reader.properties
    except Exception as error:  # tifffile raises TiffFileError, tiffslide its own types, numcodecs others
        damage = _damage(path)
        if damage:
            raise ValueError(
                f"{path}: truncated or damaged slide file: {damage}; download or copy it again"
            ) from None
        raise ValueError(
            f"{path}: not a slide tiffslide can read ({type(error).__name__}: {error}); {_CONVERT_HINT}"
        ) from None
    _check_complete(path, reader)
    if len(dimensions) < 2 and dimensions[0][0] * dimensions[0][1] > max_pixels:
        width, height = dimensions[0]
        raise ValueError(
            f"{path}: one resolution level only (no pyramid) of {width}x{height} pixels, more than the limit of "
            f"{max_pixels} (--max-pixels) for finding its tissue at full resolution; {_CONVERT_HINT}, or raise "
            "--max-pixels"
        )
    if mpp is not None:
        if not mpp > 0:
            raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp}")
        mpp_xy = (float(mpp), float(mpp))
    else:
        mpp_xy = (properties.get("tiffslide.mpp-x"), properties.get("tiffslide.mpp-y"))
        if not mpp_xy[0] or not mpp_xy[1]:
            raise ValueError(
                f"{path}: the slide does not say its µm per pixel (no resolution in its metadata); pass "
                "--mpp (mpp=...) with the scanner's µm per level-0 pixel, e.g. 0.25 for a 40x scan, 0.5 for 20x"
            )
        mpp_xy = (float(mpp_xy[0]), float(mpp_xy[1]))
    check_mpp(path, mpp_xy, dimensions[0], given=mpp is not None)
    return _choose_level(path, reader, mpp_xy)


def check_mpp(path: Path, mpp: tuple[float, float], size: tuple[int, int], given: bool = False) -> None:
    """Refuse a µm/px outside ``MPP_RANGE``, or one that makes level 0 (``size``, width x height) larger than a
    glass slide (``MAX_SLIDE_MM``), before any pixel is read.

    Args:
        path: the slide, for the message.
        mpp: µm per level-0 pixel (x, y).
        size: (width, height) of level 0.
        given: ``mpp`` came from the caller (``--mpp``), not from the slide's metadata.

    >>> check_mpp(Path("a.svs"), (25.0, 25.0), (1024, 1024))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: a.svs: its metadata says 25 µm per pixel, outside the 0.1 to 2 µm/px of brightfield scanners ...
    """
    low, high = MPP_RANGE
    source = "--mpp gives" if given else "its metadata says"
    way_out = (
        "pass the scanner's µm per level-0 pixel as --mpp (mpp=...)" if given else
        "if the file is wrong, pass the scanner's µm per level-0 pixel with --mpp (mpp=...), e.g. 0.25 for a "
        "40x scan, 0.5 for 20x"
    )  # fmt: skip
    for value in mpp:
        if not low <= value <= high:
            raise ValueError(
                f"{path}: {source} {value:.4g} µm per pixel, outside the {low:g} to {high:g} µm/px of brightfield "
                f"scanners (finer than light resolves, or too coarse to show nuclei: the model reads "
                f"{MODEL_MPP} µm/px, and this would resample the slide {value / MODEL_MPP:.3g}x); {way_out}"
            )
    width_mm, height_mm = size[0] * mpp[0] / 1000, size[1] * mpp[1] / 1000
    if max(width_mm, height_mm) > MAX_SLIDE_MM:
        raise ValueError(
            f"{path}: {size[0]}x{size[1]} pixels at {mpp[0]:.4g} µm/px would be {width_mm:.0f} x {height_mm:.0f} mm, "
            f"larger than a glass slide ({MAX_SLIDE_MM:g} mm at most); {way_out}"
        )


def _check_complete(path: Path, reader: Any) -> None:
    """Every tile or strip of every level lies inside the file (a truncated download does not)."""
    size = path.stat().st_size
    try:
        levels = reader.ts_tifffile.series[0].levels
    except (AttributeError, IndexError):
        return
    for index, level in enumerate(levels):
        page = level.keyframe
        offsets, counts = np.asarray(page.dataoffsets), np.asarray(page.databytecounts)
        if offsets.size and int((offsets + counts).max()) > size:
            raise ValueError(
                f"{path}: truncated: level {index} needs {int((offsets + counts).max())} bytes, the file has "
                f"{size}; download or copy it again"
            )


def _choose_level(path: Path, reader: Any, mpp: tuple[float, float]) -> Slide:
    width0, height0 = reader.dimensions
    level_mpp = [(mpp[0] * width0 / w + mpp[1] * height0 / h) / 2 for w, h in reader.level_dimensions]
    level = int(np.argmin([abs(math.log(m / MODEL_MPP)) for m in level_mpp]))
    ratio = level_mpp[level] / MODEL_MPP
    scale = 1.0 if abs(ratio - 1.0) <= MPP_TOLERANCE else ratio
    if scale > 1.0 + MPP_TOLERANCE:
        logger.warning(
            "%s: the finest level is %.3f µm/px, coarser than the model's %.4f: upsampled %.2fx (nuclei are "
            "less sharp than the model learned them)",
            path,
            level_mpp[level],
            MODEL_MPP,
            scale,
        )
    width, height = reader.level_dimensions[level]
    shape = (round(height * scale), round(width * scale))
    per_level0 = (shape[1] / width0, shape[0] / height0)
    logger.info(
        "%s: %dx%d px at %.4f µm/px; model reads level %d at scale %.3f (%.4f µm/px)",
        path,
        width0,
        height0,
        mpp[0],
        level,
        scale,
        level_mpp[level] / scale,
    )
    return Slide(path, reader, mpp, level, scale, shape, per_level0)


def level_pixels(slide: Slide, level: int, rows: slice, cols: slice) -> np.ndarray:
    """RGB pixels ``[rows, cols]`` of a level (clipped to it), as (h, w, 3) uint8."""

    try:
        array = slide.reader.zarr_group[str(level)]
        pixels = np.asarray(array[rows, cols])
    except Exception as error:  # codec errors of a corrupt tile come from imagecodecs, numcodecs, zarr
        way_out = (
            "install it: pip install imagecodecs"  # JPEG 2000, JPEG XR ... tiles need it
            if "imagecodecs" in str(error)
            else "is the file truncated or corrupt?"
        )
        raise ValueError(
            f"{slide.path}: cannot read level {level} rows {rows.start}:{rows.stop} cols {cols.start}:"
            f"{cols.stop} ({type(error).__name__}: {error}); {way_out}"
        ) from None
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"{slide.path}: level {level} has pixels of shape {pixels.shape}; expected RGB")
    return as_rgb8(pixels, name=str(slide.path))


def read_model_region(slide: Slide, rows: slice, cols: slice) -> np.ndarray:
    """The slide in the model's frame: pixels ``[rows, cols]`` of a ``slide.shape`` image, (h, w, 3) uint8."""
    if slide.scale == 1.0:
        return level_pixels(slide, slide.level, rows, cols)
    from PIL import Image

    height, width = slide.reader.level_dimensions[slide.level][::-1]
    s = slide.scale
    r0, c0 = max(math.floor(rows.start / s) - 1, 0), max(math.floor(cols.start / s) - 1, 0)
    r1, c1 = min(math.ceil(rows.stop / s) + 1, height), min(math.ceil(cols.stop / s) + 1, width)
    pixels = level_pixels(slide, slide.level, slice(r0, r1), slice(c0, c1))
    # the last model pixels may reach up to half a level pixel past the level's edge: repeat its edge pixels
    below, right = max(math.ceil(rows.stop / s) - r1, 0), max(math.ceil(cols.stop / s) - c1, 0)
    source = Image.fromarray(np.pad(pixels, ((0, below), (0, right), (0, 0)), mode="edge"))
    box = (cols.start / s - c0, rows.start / s - r0, cols.stop / s - c0, rows.stop / s - r0)
    size = (cols.stop - cols.start, rows.stop - rows.start)
    return np.asarray(source.resize(size, Image.Resampling.BILINEAR, box=box))
