"""Whole-slide images: the nuclei of a pyramidal slide, streamed in blocks, written in level-0 coordinates.

The data flow, one function each:

1. :func:`open_slide`: an Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF or pyramidal TIFF -> a
   :class:`Slide`. The reader is ``tiffslide`` (a pure-Python reader on ``tifffile``, the TIFF engine the
   package already writes and reads with; it reads pyramids stored as SubIFDs, which OpenSlide's generic-TIFF
   driver does not, and needs no native library). The slide's µm/px comes from its metadata (or ``mpp``);
   the level read for the model is the one closest to the model's ``MODEL_MPP``, used as it is when within
   ``MPP_TOLERANCE`` and resampled to ``MODEL_MPP`` otherwise. Truncated files, one-level files, slides
   without µm/px and unsupported formats are errors that name the file and the way out.
2. :func:`tissue_map`: the tissue mask and an RGB overview at about ``TISSUE_MPP`` µm/px, read from the
   coarsest level fine enough, in strips. The rule (:func:`tissue_pixels`): a pixel of the overview (the mean
   colour of its block) is tissue when its saturation, ``max(R, G, B) - min(R, G, B)``, is at least
   ``TISSUE_SATURATION`` of 255: glass is white or grey (saturation near 0), H&E is pink and purple. Holes are
   filled, specks under ``TISSUE_MIN_PIXELS`` dropped, and the mask grown by one overview pixel.
3. :func:`slide_nuclei`: the slide is cut into blocks with :func:`cryonuseg_hf.model.tiling.tile_grid` (blocks of
   ``block_size`` whose windows add ``margin`` pixels of context); each block whose core holds tissue is read
   and labelled by :func:`cryonuseg_hf.model.tiling.predict_tiled` (tiles without tissue pixels skip the model), and
   keeps the nuclei whose centroid lies in its core (:func:`cryonuseg_hf.model.tiling.owned_nuclei`): the same
   ownership rule one level up, so nuclei are neither cut nor duplicated at block edges, and memory holds one
   block, not the slide.
4. :func:`predict_slide`: writes QuPath GeoJSON (detections with measurements), a CSV of nuclei, an overview
   PNG (thumbnail, tissue outline, nuclei density), a JSON summary, and a label pyramid when asked, each first
   to a ``.partial`` file renamed at the end, so an interrupted run (Ctrl-C) leaves no half-written output.

Coordinates follow :mod:`cryonuseg_hf.model.export` (label pixel ``[i, j]`` of level 0 has its centre at
``(x, y) = (j + 1, i + 1)``), in level-0 pixels of the slide whatever level was read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.model.export import MEASUREMENTS, XY_OFFSET

logger = logging.getLogger(__name__)

MODEL_MPP = 0.2505
"""µm per pixel the model was trained at: the median over the TCGA slides the CryoNuSeg tiles were cut from
(``microns_per_pixel`` in ``Selected_WSIs.xlsx``: 29 slides, 0.2265..0.254; Human_Testes_01's is missing)."""
MPP_TOLERANCE = 0.1
"""A level within 10 % of ``MODEL_MPP`` is read as it is; otherwise it is resampled to ``MODEL_MPP``."""
TISSUE_MPP = 4.0
"""µm per pixel of the tissue mask and the overview (16 pixels of a 40x level 0)."""
TISSUE_SATURATION = 20
"""Least saturation (max - min of R, G, B, of 255) of a tissue pixel of the overview."""
TISSUE_MAX_SIDE = 4096
"""Longest side of the tissue mask in pixels: larger slides get a coarser mask (memory stays bounded)."""
TISSUE_MIN_PIXELS = 16
"""Tissue pieces smaller than this many overview pixels (256 µm² at 4 µm/px) are dropped as specks."""
BLOCK_SIZE = 2048
"""Side of a block in model pixels: memory holds one block window (~50 MB) and its labels."""
OVERVIEW_SIZE = 2048
"""Longest side of the overview PNG in pixels."""
SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif")
"""Always slides; a ``.tif``/``.tiff`` is a slide when it holds a pyramid (see :func:`is_slide`)."""
UNSUPPORTED_SUFFIXES = {
    ".mrxs": "3DHISTECH MIRAX",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".czi": "Zeiss CZI",
    ".isyntax": "Philips iSyntax",
}
SLIDE_OUTPUT_KINDS = ("geojson", "csv", "overview", "summary", "labels")
SLIDE_COLUMNS = (*MEASUREMENTS, "area_um2")
"""CSV columns: those of :data:`cryonuseg_hf.model.export.MEASUREMENTS` in level-0 pixels, plus the area in µm²."""
_LABEL_TILE = 256
_CONVERT_HINT = (
    "convert it to a pyramidal TIFF, e.g. `vips tiffsave in out.tif --tile --pyramid --compression jpeg`"
)


# ------------------------------------------------------------------------------------------------- the slide


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
    files that hold more than one resolution level. A missing file is not a slide.
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
            return len(tif.series[0].levels) > 1
    except Exception:  # unreadable TIFFs are reported by read_image, which reads them as plain images
        return False


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> Slide:
    """Open a whole-slide image and choose the level and scale the model reads it at.

    Args:
        path: the slide file.
        mpp: µm per level-0 pixel, overriding (or standing in for) the slide's metadata.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported format, truncated file, no pyramid, no µm/px (and no ``mpp``).
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
        reader = tiffslide.TiffSlide(path)
        dimensions = reader.level_dimensions
        properties = reader.properties
    except Exception as error:  # tifffile raises TiffFileError, tiffslide its own types, numcodecs others
        raise ValueError(
            f"{path}: not a slide tiffslide can read ({type(error).__name__}: {error}); {_CONVERT_HINT}"
        ) from None
    _check_complete(path, reader)
    if len(dimensions) < 2:
        raise ValueError(
            f"{path}: one resolution level only (no pyramid), so the tissue cannot be found at a low "
            f"resolution; give an image up to 16384 px a side a plain-image name (PNG), or {_CONVERT_HINT}"
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
                "--mpp (mpp=...) with the scanner's value, e.g. 0.25 for a 40x scan"
            )
        mpp_xy = (float(mpp_xy[0]), float(mpp_xy[1]))
    return _choose_level(path, reader, mpp_xy)


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


def _level_pixels(slide: Slide, level: int, rows: slice, cols: slice) -> np.ndarray:
    """RGB pixels ``[rows, cols]`` of a level (clipped to it), as (h, w, 3) uint8."""
    from cryonuseg_hf.model.images import as_rgb8

    try:
        array = slide.reader.zarr_group[str(level)]
        pixels = np.asarray(array[rows, cols])
    except Exception as error:  # codec errors of a corrupt tile come from imagecodecs, numcodecs, zarr
        raise ValueError(
            f"{slide.path}: cannot read level {level} rows {rows.start}:{rows.stop} cols {cols.start}:"
            f"{cols.stop} ({type(error).__name__}: {error}); is the file truncated or corrupt?"
        ) from None
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"{slide.path}: level {level} has pixels of shape {pixels.shape}; expected RGB")
    return as_rgb8(pixels, name=str(slide.path))


def read_model_region(slide: Slide, rows: slice, cols: slice) -> np.ndarray:
    """The slide in the model's frame: pixels ``[rows, cols]`` of a ``slide.shape`` image, (h, w, 3) uint8."""
    if slide.scale == 1.0:
        return _level_pixels(slide, slide.level, rows, cols)
    from PIL import Image

    height, width = slide.reader.level_dimensions[slide.level][::-1]
    s = slide.scale
    r0, c0 = max(math.floor(rows.start / s) - 1, 0), max(math.floor(cols.start / s) - 1, 0)
    r1, c1 = min(math.ceil(rows.stop / s) + 1, height), min(math.ceil(cols.stop / s) + 1, width)
    source = Image.fromarray(_level_pixels(slide, slide.level, slice(r0, r1), slice(c0, c1)))
    box = (cols.start / s - c0, rows.start / s - r0, cols.stop / s - c0, rows.stop / s - r0)
    size = (cols.stop - cols.start, rows.stop - rows.start)
    return np.asarray(source.resize(size, Image.Resampling.BILINEAR, box=box))


# ---------------------------------------------------------------------------------------------------- tissue


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """The colour rule: (H, W) bool, True where ``max - min`` of R, G, B is at least ``TISSUE_SATURATION``.

    >>> tissue_pixels(np.array([[[255, 255, 255], [200, 120, 180], [40, 40, 40]]], np.uint8)).tolist()
    [[False, True, False]]
    """
    rgb = np.asarray(rgb)
    return (rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)) >= TISSUE_SATURATION


def _block_mean(rgb: np.ndarray, k: int) -> np.ndarray:
    """Mean colour of each k x k block (the last row and column of blocks may be partial), uint8."""
    if k == 1:
        return rgb
    height, width = rgb.shape[:2]
    pad_h, pad_w = -height % k, -width % k
    total = np.pad(rgb.astype(np.float32), ((0, pad_h), (0, pad_w), (0, 0)))
    total = total.reshape(total.shape[0] // k, k, total.shape[1] // k, k, 3).sum(axis=(1, 3))
    count = np.pad(np.ones((height, width), np.float32), ((0, pad_h), (0, pad_w)))
    count = count.reshape(count.shape[0] // k, k, count.shape[1] // k, k).sum(axis=(1, 3))
    return np.round(total / count[:, :, None]).astype(np.uint8)


def has_tissue(rgb: np.ndarray, mpp: float = MODEL_MPP) -> bool:
    """Whether an image at ``mpp`` µm/px holds tissue by the rule of :func:`tissue_pixels` at ``TISSUE_MPP``."""
    return bool(tissue_pixels(_block_mean(rgb, max(1, round(TISSUE_MPP / mpp)))).any())


@dataclass(frozen=True)
class TissueMap:
    """The tissue mask and the overview it was found on.

    Attributes:
        mask: (h, w) bool, True on tissue.
        overview: (h, w, 3) uint8, the mean colour of each overview pixel.
        per_level0: overview pixels per level-0 pixel (x, y).
        mpp: µm per overview pixel (x, y).
    """

    mask: np.ndarray
    overview: np.ndarray
    per_level0: tuple[float, float]
    mpp: tuple[float, float]

    @property
    def area_mm2(self) -> float:
        """Tissue area in mm²."""
        return float(self.mask.sum()) * self.mpp[0] * self.mpp[1] * 1e-6


def tissue_map(
    slide: Slide, roi: tuple[int, int, int, int] | None = None, strip_bytes: int = 64 * 2**20
) -> TissueMap:
    """Find the tissue at ``TISSUE_MPP`` (coarser where the mask would exceed ``TISSUE_MAX_SIDE``).

    The coarsest level fine enough is read in strips of about ``strip_bytes`` and averaged over blocks, so
    memory holds one strip and the mask, whatever the slide's size and pyramid.

    Args:
        slide: from :func:`open_slide`.
        roi: (x, y, width, height) in level-0 pixels: tissue outside it is left out.
        strip_bytes: size of one read.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_objects

    width0, height0 = slide.dimensions
    target = max(TISSUE_MPP, max(width0 * slide.mpp[0], height0 * slide.mpp[1]) / TISSUE_MAX_SIDE)
    level_mpp = [slide.mpp[0] * width0 / w for w, _ in slide.reader.level_dimensions]
    fine_enough = [i for i, m in enumerate(level_mpp) if m <= target * 1.01]
    level = fine_enough[-1] if fine_enough else 0
    width, height = slide.reader.level_dimensions[level]
    k = max(1, math.floor(target * 1.01 / level_mpp[level]), -(-max(width, height) // TISSUE_MAX_SIDE))
    rows = k * max(1, strip_bytes // (k * width * 3))
    parts = []
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        parts.append(_block_mean(_level_pixels(slide, level, slice(start, stop), slice(0, width)), k))
    overview = np.concatenate(parts, axis=0)
    per_level0 = (width / width0 / k, height / height0 / k)
    mask = ndi.binary_fill_holes(tissue_pixels(overview))
    mask = remove_small_objects(mask, max_size=TISSUE_MIN_PIXELS - 1)
    mask = ndi.binary_dilation(mask, structure=np.ones((3, 3), bool))
    if roi is not None:
        mask &= _roi_mask(roi, mask.shape, per_level0)
    mpp = (slide.mpp[0] / per_level0[0], slide.mpp[1] / per_level0[1])
    return TissueMap(mask, overview, per_level0, mpp)


def _roi_mask(roi: tuple[int, int, int, int], shape: tuple[int, int], per_level0: tuple[float, float]):
    x, y, w, h = roi
    mask = np.zeros(shape, bool)
    mask[
        math.floor(y * per_level0[1]) : math.ceil((y + h) * per_level0[1]),
        math.floor(x * per_level0[0]) : math.ceil((x + w) * per_level0[0]),
    ] = True
    return mask


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """``"x,y,w,h"`` (level-0 pixels) -> a tuple, with an error that says the format.

    >>> parse_roi("100, 200,3000,4000")
    (100, 200, 3000, 4000)
    """
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0 or min(values[:2]) < 0:
        raise ValueError(
            f"--roi {text!r}: expected x,y,width,height in level-0 pixels, e.g. 20000,8000,4096,4096"
        )
    return values


# ------------------------------------------------------------------------------------------------------ nuclei


@dataclass
class SlideStats:
    """What :func:`slide_nuclei` did, filled in as it goes."""

    blocks: int = 0
    blocks_with_tissue: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    nuclei: int = 0
    duplicates_dropped: int = 0
    shared_pixels: int = 0
    touching_cut_edge: int = 0


@dataclass(frozen=True)
class BlockNuclei:
    """The nuclei one block owns, ready to write.

    Attributes:
        records: one dict per nucleus with the ``SLIDE_COLUMNS`` (level-0 pixels, global ``label``).
        features: the QuPath GeoJSON features, in the same order.
        window: (rows, cols) slices of the block's window in model pixels.
        labels: the window's labels of the owned nuclei, global ids (0 elsewhere).
    """

    records: list[dict]
    features: list[dict]
    window: tuple[slice, slice]
    labels: np.ndarray = field(repr=False)


def slide_nuclei(
    slide: Slide,
    predict_tile: Callable[[np.ndarray], np.ndarray],
    tissue: TissueMap,
    *,
    tile_size: int = 512,
    margin: int = 64,
    align: int = 1,
    block_size: int = BLOCK_SIZE,
    roi: tuple[int, int, int, int] | None = None,
    stats: SlideStats | None = None,
    progress: bool = False,
) -> Iterator[BlockNuclei]:
    """Stream the nuclei of a slide, block by block, each nucleus exactly once.

    Args:
        slide: from :func:`open_slide`.
        predict_tile: RGB window (model pixels) -> (h, w) integer instance labels.
        tissue: from :func:`tissue_map`; blocks whose core holds none are not read.
        tile_size, margin, align: as in :func:`cryonuseg_hf.model.tiling.predict_tiled`, for the tiles of a block.
        block_size: side of a block in model pixels (a multiple of ``align`` keeps blocks on the grid).
        roi: (x, y, width, height) in level-0 pixels: only nuclei whose centroid lies inside are kept.
        stats: filled in as blocks are done.
        progress: a progress bar over blocks, with the nuclei found so far.

    Yields:
        :class:`BlockNuclei` for every block with tissue.
    """
    from tqdm.auto import tqdm

    from cryonuseg_hf.model.tiling import owned_nuclei, predict_tiled, tile_grid

    stats = stats if stats is not None else SlideStats()
    blocks = tile_grid(slide.shape, tile_size=block_size, margin=margin, align=align)
    per_tissue = (tissue.per_level0[0] / slide.per_level0[0], tissue.per_level0[1] / slide.per_level0[1])
    todo = [b for b in blocks if _core_has_tissue(b.core, tissue.mask, per_tissue)]
    stats.blocks, stats.blocks_with_tissue = len(blocks), len(todo)
    model_mpp = slide.model_mpp

    def predict_or_skip(window: np.ndarray) -> np.ndarray:
        if not has_tissue(window, model_mpp):
            stats.tiles_skipped += 1
            return np.zeros(window.shape[:2], np.int32)
        stats.tiles_run += 1
        return predict_tile(window)

    bar = tqdm(todo, desc=f"{slide.path.name}", unit="block", disable=not progress)
    for block in bar:
        rows, cols = block.window
        image = read_model_region(slide, rows, cols)
        tiled: dict = {}
        labels = predict_tiled(
            image, predict_or_skip, tile_size=tile_size, margin=margin, align=align, stats=tiled
        )
        for key in ("duplicates_dropped", "shared_pixels", "touching_cut_edge"):
            setattr(stats, key, getattr(stats, key) + tiled.get(key, 0))
        owned = owned_nuclei(labels, (rows.start, cols.start), block.core)
        records, features, global_labels = _block_records(
            slide, image, labels, owned, block.window, roi, stats
        )
        bar.set_postfix(nuclei=stats.nuclei, refresh=False)
        if records:
            yield BlockNuclei(records, features, block.window, global_labels)
    bar.close()


def _core_has_tissue(core: tuple[slice, slice], mask: np.ndarray, per_model: tuple[float, float]) -> bool:
    rows, cols = core
    return bool(
        mask[
            math.floor(rows.start * per_model[1]) : math.ceil(rows.stop * per_model[1]),
            math.floor(cols.start * per_model[0]) : math.ceil(cols.stop * per_model[0]),
        ].any()
    )


def _to_level0(value: np.ndarray | float, origin: int, per_level0: float) -> np.ndarray | float:
    """A coordinate of a window (export convention) -> the same point in level-0 coordinates.

    The model pixel ``j`` covers level-0 ``[j / f, (j + 1) / f)``; in the export convention a point ``p`` lies
    at ``p - XY_OFFSET + 0.5`` of the continuous frame, in both frames.
    """
    return (value + origin - XY_OFFSET + 0.5) / per_level0 + XY_OFFSET - 0.5


def _block_records(slide, image, labels, owned, window, roi, stats):
    from cryonuseg_hf.model.export import geojson_features, instance_polygons, nucleus_measurements, roi_names

    if owned.size == 0:
        return [], [], None
    mine = np.where(np.isin(labels, owned), labels, 0)
    measurements = nucleus_measurements(mine, image)
    polygons = instance_polygons(mine)
    (r0, c0), (fx, fy) = (window[0].start, window[1].start), slide.per_level0
    length, area = 1.0 / math.sqrt(fx * fy), 1.0 / (fx * fy)
    records, rings, relabel = [], {}, np.zeros(int(labels.max()) + 1, np.int64)
    for record in measurements:
        x, y = _to_level0(record["centroid_x"], c0, fx), _to_level0(record["centroid_y"], r0, fy)
        if roi is not None and not (
            roi[0] <= x - XY_OFFSET + 0.5 < roi[0] + roi[2]
            and roi[1] <= y - XY_OFFSET + 0.5 < roi[1] + roi[3]
        ):
            continue
        stats.nuclei += 1
        out = dict(record, label=stats.nuclei, centroid_x=round(x, 3), centroid_y=round(y, 3))
        relabel[record["label"]] = stats.nuclei
        out["bbox_x"] = round(_to_level0(record["bbox_x"], c0, fx), 3)
        out["bbox_y"] = round(_to_level0(record["bbox_y"], r0, fy), 3)
        if (fx, fy) != (1.0, 1.0):
            out["bbox_width"] = round(record["bbox_width"] / fx, 3)
            out["bbox_height"] = round(record["bbox_height"] / fy, 3)
            out["area_px"] = round(record["area_px"] * area, 3)
            for key in ("perimeter_px", "equivalent_diameter_px", "major_axis_px", "minor_axis_px"):
                out[key] = round(record[key] * length, 3)
        out["area_um2"] = round(out["area_px"] * slide.mpp[0] * slide.mpp[1], 3)
        if record["label"] in polygons:
            ring = polygons[record["label"]]
            rings[stats.nuclei] = np.stack(
                [_to_level0(ring[:, 0], c0, fx), _to_level0(ring[:, 1], r0, fy)], axis=1
            )
        records.append(out)
    for record, name in zip(records, roi_names(records), strict=True):
        record["roi_name"] = name
    return records, geojson_features(rings, records), relabel[mine].astype(np.uint32)


# ------------------------------------------------------------------------------------------------------ files


def slide_output_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Where :func:`predict_slide` puts each file for a slide named ``stem``."""
    out_dir = Path(out_dir)
    return {
        "geojson": out_dir / f"{stem}.geojson",
        "csv": out_dir / f"{stem}_nuclei.csv",
        "overview": out_dir / f"{stem}_overview.png",
        "summary": out_dir / f"{stem}_summary.json",
        "labels": out_dir / f"{stem}_labels.tif",
    }


@contextlib.contextmanager
def _staged(paths: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """``.partial`` twins of ``paths``, renamed onto them on success and deleted on any exit by an exception."""
    partial = {kind: path.with_name(path.name + ".partial") for kind, path in paths.items()}
    try:
        yield partial
    except BaseException:  # Ctrl-C included: leave nothing half-written behind
        for path in partial.values():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    for kind, path in partial.items():
        os.replace(path, paths[kind])


def predict_slide(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: Any = None,
    *,
    mpp: float | None = None,
    roi: tuple[int, int, int, int] | None = None,
    labels: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    tta: bool = False,
    tile_size: int = 512,
    margin: int = 64,
    block_size: int = BLOCK_SIZE,
    align: int | None = None,
    progress: bool = False,
) -> dict:
    """Predict every nucleus of a whole slide and write its outputs (see :func:`slide_output_paths`).

    Args:
        path: the slide (see :func:`open_slide`).
        out_dir: output folder (created).
        model: a checkpoint folder, a :class:`cryonuseg_hf.model.predict.Predictor`, None for the shipped one, or a
            function RGB window -> instance labels (a stand-in model).
        mpp: µm per level-0 pixel, overriding the slide's metadata.
        roi: (x, y, width, height) in level-0 pixels: predict only there.
        labels: also write a pyramidal label TIFF (uint32, the model's frame; built from a chunked store on
            disk, so memory stays bounded).
        overwrite: replace existing outputs.
        device, backend, threads, tta: as in :func:`cryonuseg_hf.model.predict.predict_instances`.
        tile_size, margin: the model's tiles and their context, in model pixels.
        block_size: side of a block held in memory, model pixels.
        align: window starts are multiples of this (default: the model's grid step; 1 for a function).
        progress: progress bar with the nuclei found so far.

    Returns:
        the summary also written to ``<stem>_summary.json``.

    Raises:
        FileNotFoundError, ValueError: see :func:`open_slide`; FileExistsError: outputs exist.
    """
    from cryonuseg_hf.model.predict import Predictor, ensure_writable_folder, grid_step, load_predictor

    path = Path(path)
    out_dir = ensure_writable_folder(out_dir)
    paths = slide_output_paths(out_dir, path.stem)
    if not labels:
        paths.pop("labels")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{path}: outputs exist already ({', '.join(existing)}); pass --overwrite")
    slide = open_slide(path, mpp=mpp)
    if callable(model) and not isinstance(model, Predictor):
        predict_tile, backend_name, align = model, "function", align or 1
    else:
        from cryonuseg_hf.model.postprocess import probabilities_to_instances

        predictor = model if isinstance(model, Predictor) else load_predictor(model, device, backend, threads)
        backend_name, align = (
            f"{predictor.backend} on {predictor.device}",
            align or grid_step(predictor.input_scale),
        )

        def predict_tile(window: np.ndarray) -> np.ndarray:
            return probabilities_to_instances(predictor.probabilities(window, tta=tta), predictor.params)

    started = (time.perf_counter(), time.process_time())  # the model is loaded: time the slide's own work
    tissue = tissue_map(slide, roi=roi)
    times = {"tissue_search_seconds": time.perf_counter() - started[0]}
    times["tissue_search_cpu_seconds"] = time.process_time() - started[1]
    stats = SlideStats()
    density = np.zeros(tissue.mask.shape, np.int32)
    with _staged(paths) as partial:
        canvas = _label_store(partial["labels"].with_suffix(".zarr"), slide.shape) if labels else None
        try:
            with open(partial["geojson"], "w") as geojson, open(partial["csv"], "w", newline="") as table:
                import csv

                writer = csv.DictWriter(table, fieldnames=SLIDE_COLUMNS)
                writer.writeheader()
                geojson.write('{"type":"FeatureCollection","features":[')
                first = True
                for block in slide_nuclei(
                    slide,
                    predict_tile,
                    tissue,
                    tile_size=tile_size,
                    margin=margin,
                    align=align,
                    block_size=block_size,
                    roi=roi,
                    stats=stats,
                    progress=progress,
                ):
                    writer.writerows(block.records)
                    for feature in block.features:
                        geojson.write(("" if first else ",") + json.dumps(feature, separators=(",", ":")))
                        first = False
                    _count_centroids(density, block.records, tissue.per_level0)
                    if canvas is not None:
                        _paste_labels(canvas, block)
                geojson.write("]}")
            if canvas is not None:
                write_pyramid(partial["labels"], canvas, slide.model_mpp)
        finally:
            if canvas is not None:
                shutil.rmtree(partial["labels"].with_suffix(".zarr"), ignore_errors=True)
        times["seconds"] = time.perf_counter() - started[0]
        times["cpu_seconds"] = time.process_time() - started[1]  # all threads of this process
        summary = _summary(
            slide, tissue, stats, roi, backend_name, times, {k: str(p) for k, p in paths.items()}
        )
        write_overview(partial["overview"], tissue, density, summary)
        partial["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(slide, tissue, stats, roi, backend, times, outputs) -> dict:
    tissue_mpx = tissue.area_mm2 / (slide.model_mpp * 1e-3) ** 2 / 1e6
    return {
        "slide": str(slide.path),
        "level0_size": list(slide.dimensions),
        "level0_mpp": [round(m, 5) for m in slide.mpp],
        "level_read": slide.level,
        "scale": round(slide.scale, 5),
        "model_mpp": round(slide.model_mpp, 5),
        "roi": list(roi) if roi else None,
        "tissue_mm2": round(tissue.area_mm2, 4),
        "tissue_megapixels": round(tissue_mpx, 3),
        "backend": backend,
        "nuclei": stats.nuclei,
        "nuclei_per_mm2": round(stats.nuclei / tissue.area_mm2, 1) if tissue.area_mm2 else None,
        "blocks": stats.blocks,
        "blocks_with_tissue": stats.blocks_with_tissue,
        "tiles_run": stats.tiles_run,
        "tiles_skipped_blank": stats.tiles_skipped,
        "duplicates_dropped": stats.duplicates_dropped,
        "shared_pixels": stats.shared_pixels,
        "touching_cut_edge": stats.touching_cut_edge,
        **{key: round(value, 2) for key, value in times.items()},
        "tissue_megapixels_per_second": round(tissue_mpx / times["seconds"], 4) if times["seconds"] else None,
        "outputs": outputs,
    }


def _count_centroids(density: np.ndarray, records: list[dict], per_level0: tuple[float, float]) -> None:
    x = np.array([r["centroid_x"] - XY_OFFSET + 0.5 for r in records]) * per_level0[0]
    y = np.array([r["centroid_y"] - XY_OFFSET + 0.5 for r in records]) * per_level0[1]
    rows = np.clip(y.astype(int), 0, density.shape[0] - 1)
    cols = np.clip(x.astype(int), 0, density.shape[1] - 1)
    np.add.at(density, (rows, cols), 1)


def write_overview(path: Path, tissue: TissueMap, density: np.ndarray, summary: dict) -> Path:
    """The overview PNG: thumbnail, tissue outline (blue) and nuclei per mm² (yellow to red), with a caption.

    Everything is first reduced to at most ``OVERVIEW_SIZE`` pixels a side (small slides are enlarged instead).
    ``density`` counts nucleus centroids per pixel of the tissue mask; it is smoothed over about 50 µm.
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    f = -(-max(tissue.mask.shape) // OVERVIEW_SIZE)
    overview, mask, counts = _block_mean(tissue.overview, f), tissue.mask, density.astype(np.float32)
    if f > 1:
        pad = ((0, -mask.shape[0] % f), (0, -mask.shape[1] % f))
        mask = np.pad(mask, pad).reshape(overview.shape[0], f, overview.shape[1], f).any(axis=(1, 3))
        counts = np.pad(counts, pad).reshape(overview.shape[0], f, overview.shape[1], f).sum(axis=(1, 3))
    mpp = (tissue.mpp[0] * f, tissue.mpp[1] * f)
    per_mm2 = ndi.gaussian_filter(counts, 50.0 / ((mpp[0] + mpp[1]) / 2)) / (mpp[0] * mpp[1] * 1e-6)
    peak = float(per_mm2.max())
    image = overview.astype(np.float32)
    if peak > 0:
        level = np.clip(per_mm2 / peak, 0, 1)[:, :, None]
        heat = np.concatenate([np.full_like(level, 255), 255 * (1 - level), np.zeros_like(level)], axis=2)
        alpha = 0.65 * level * ((level > 0.02) & mask[:, :, None])
        image = image * (1 - alpha) + heat * alpha
    image = image.astype(np.uint8)
    image[find_boundaries(mask, mode="inner")] = (0, 90, 255)
    picture = Image.fromarray(image)
    longest = max(picture.size)
    if longest < OVERVIEW_SIZE // 4:  # a small slide or ROI: enlarge, keeping pixels sharp
        factor = OVERVIEW_SIZE // 4 // longest
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    caption = (
        f"{summary['nuclei']} nuclei in {summary['tissue_mm2']:.2f} mm2 of tissue (blue outline); "
        f"density yellow->red, peak {peak:.0f}/mm2 over 50 um"
    )
    text_width = math.ceil(ImageDraw.Draw(picture).textlength(caption)) + 8
    canvas = Image.new("RGB", (max(picture.width, text_width), picture.height + 16), "white")
    canvas.paste(picture, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), caption, fill=(0, 0, 0))
    canvas.save(path, format="PNG", compress_level=3)
    return path


# ------------------------------------------------------------------------------------------------ label pyramid


def _label_store(path: Path, shape: tuple[int, int]):
    import zarr

    return zarr.open_array(
        store=str(path), mode="w", shape=shape, chunks=(1024, 1024), dtype="uint32", fill_value=0
    )


def _paste_labels(canvas: Any, block: BlockNuclei) -> None:
    """Owned nuclei into the on-disk label store; pixels another block already took stay its."""
    rows, cols = block.window
    region = np.asarray(canvas[rows, cols])
    free = (region == 0) & (block.labels > 0)
    region[free] = block.labels[free]
    canvas[rows, cols] = region


def write_pyramid(
    path: str | os.PathLike,
    image: Any,
    mpp: float | None,
    steps: tuple[int, ...] | None = None,
    min_side: int = 1024,
    compression: str = "zlib",
) -> Path:
    """A tiled pyramidal TIFF of labels or an RGB image, the way slide readers expect one.

    Levels are nearest-neighbour subsamples (labels must not blend), stored as SubIFDs of level 0 with their
    µm/px in the resolution tags. Tiles are read from ``image`` one at a time, so ``image`` can be anything
    that slices (a zarr array on disk) and memory holds a tile, not the image.

    Args:
        path: the TIFF to write.
        image: (H, W) integer labels or (H, W, 3) uint8 RGB.
        mpp: µm per pixel of level 0, written as the resolution of each level (None: no resolution).
        steps: subsampling of each level, starting with 1 (default 1, 4, 16 ... while the shorter side of the
            next level is at least ``min_side``).
        min_side: see ``steps``.
        compression: any ``tifffile`` compression (lossless ``zlib`` by default).
    """
    import tifffile

    height, width = image.shape[:2]
    rgb = len(image.shape) == 3
    dtype = np.uint8 if rgb else np.uint32
    if steps is None:
        steps = (1,)
        while min(height, width) // (steps[-1] * 4) >= min_side:
            steps = (*steps, steps[-1] * 4)

    def tiles(step: int) -> Iterator[np.ndarray]:
        side = _LABEL_TILE * step
        for r in range(0, height, side):
            for c in range(0, width, side):
                tile = np.asarray(image[r : r + side : step, c : c + side : step], dtype)
                pad = ((0, _LABEL_TILE - tile.shape[0]), (0, _LABEL_TILE - tile.shape[1]))
                yield np.pad(tile, pad + ((0, 0),) * (tile.ndim - 2))

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, step in enumerate(steps):
            resolution = {}
            if mpp is not None:
                resolution = {"resolution": (1e4 / mpp / step,) * 2, "resolutionunit": "CENTIMETER"}
            shape = (-(-height // step), -(-width // step)) + ((3,) if rgb else ())
            tif.write(
                tiles(step),
                shape=shape,
                dtype=dtype,
                tile=(_LABEL_TILE, _LABEL_TILE),
                compression=compression,
                photometric="rgb" if rgb else "minisblack",
                subifds=len(steps) - 1 if index == 0 else None,
                subfiletype=1 if index else 0,
                **resolution,
            )
    return Path(path)
