"""ROI polygons -> instance masks, rasterised the way the authors' MATLAB generator does it.

The reference is ``codes/manual_masks_generator/masks_generator.m`` in the authors' GitHub repository
``masih4/CryoNuSeg``. For each tile it reads the ROIs in file-name order (nucleus ``n`` gets label ``n``),
rasterises each one with ``poly2mask(x, y, 512, 512)`` and accumulates the two released label images:

- ``label_masks``: ``mask_overlap = mask * n + mask_overlap``, the *sum* of the labels where ROIs overlap
  (uint16 TIFF); overlaps therefore carry spurious values;
- ``label_masks_modify``: ``max(mask * n, mask_overlap_modify)``, each overlap given to the later nucleus
  (uint16 TIFF) -- the clean instance map.

The other released variants are derived from these in :mod:`cryonuseg_hf.data.mask_variants`.

Rasterisation follows MATLAB's ``poly2mask`` exactly: vertices are snapped to a 5x5 sub-pixel grid, joined by
integer lines, and a pixel is inside when its centre is inside the resulting staircase path. MATLAB pixel
``(r, c)`` (1-based) has its centre at ``(x, y) = (c, r)``, and the generator passes ImageJ coordinates
unchanged, so numpy pixel ``[i, j]`` is tested at ImageJ point ``(j + 1, i + 1)``, the pixel's bottom-right
corner in ImageJ's geometry, with points on a left/top edge counted out and on a right/bottom edge counted in.
For outlines traced along pixel edges (integer vertices, as in Annotator 2's ROIs) this selects exactly the
enclosed pixels, the same as ImageJ; for sub-pixel outlines (Annotator 1's) it is ImageJ's pixel-centre rule
shifted by half a pixel. We reproduce MATLAB, not ImageJ, so that the regenerated masks match the released
ones; ``results/mask_agreement.md`` measures how closely (bit-identical) and what the other rule would change.

Array conventions: (rows, cols) inside; labels uint16 with 0 background.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.rois import Nucleus

_SUBPIXELS = 5  # poly2mask's sub-pixel grid


def _mround(values: np.ndarray) -> np.ndarray:
    """MATLAB's round(): halves away from zero (numpy rounds them to even)."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def _edge_list(nuclei: Sequence[Nucleus]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """poly2edgelist for all polygons at once: (polygon index, grid x, grid y) of every horizontal edge."""
    xs, ys, ids = [], [], []
    for index, nucleus in enumerate(nuclei):
        x = nucleus.x.astype(np.float64)
        y = nucleus.y.astype(np.float64)
        if x.size == 0:
            continue
        if x[-1] != x[0] or y[-1] != y[0]:
            x = np.append(x, x[0])
            y = np.append(y, y[0])
        xs.append(x)
        ys.append(y)
        ids.append(np.full(x.size, index, np.int64))
    if not xs:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    x = _mround(_SUBPIXELS * (np.concatenate(xs) - 0.5) + 1)
    y = _mround(_SUBPIXELS * (np.concatenate(ys) - 0.5) + 1)
    poly = np.concatenate(ids)

    # One segment per pair of consecutive vertices of the same polygon; intline() on each.
    same = poly[1:] == poly[:-1]
    x1, x2, y1, y2 = x[:-1][same], x[1:][same], y[:-1][same], y[1:][same]
    seg_poly = poly[:-1][same]
    dx, dy = np.abs(x2 - x1), np.abs(y2 - y1)
    x_major = dx >= dy
    count = (np.maximum(dx, dy) + 1).astype(np.int64)
    flip = np.where(x_major, x1 > x2, y1 > y2)
    # intline draws from the left (x-major) or top (y-major) end point and reverses if it swapped them.
    lo_x, hi_x = np.where(flip, x2, x1), np.where(flip, x1, x2)
    lo_y, hi_y = np.where(flip, y2, y1), np.where(flip, y1, y2)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(x_major, (hi_y - lo_y) / (hi_x - lo_x), (hi_x - lo_x) / (hi_y - lo_y))
    slope[count == 1] = 0.0

    seg = np.repeat(np.arange(count.size), count)
    step = np.arange(seg.size) - np.repeat(np.cumsum(count) - count, count)
    step = np.where(flip[seg], count[seg] - 1 - step, step).astype(np.float64)
    major = x_major[seg]
    px = np.where(major, lo_x[seg] + step, _mround(lo_x[seg] + slope[seg] * step))
    py = np.where(major, _mround(lo_y[seg] + slope[seg] * step), lo_y[seg] + step)
    ppoly = seg_poly[seg]

    # Horizontal edges sit where x changes between consecutive path points of one polygon.
    d = np.diff(px)
    at = np.flatnonzero((d != 0) & (ppoly[1:] == ppoly[:-1]))
    xe = px[at] - (d[at] < 0)
    ye = np.minimum(py[at], py[at + 1])
    return ppoly[at], xe.astype(np.int64), ye.astype(np.int64)


def _runs(nuclei: Sequence[Nucleus], shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """edgelist2mask as vertical runs: (polygon index, column, first row, end row), 0-based, end exclusive."""
    height, width = shape
    poly, xe, ye = _edge_list(nuclei)
    # Keep edges on a pixel-centre column, in the image; those above the top count as on the first row, those
    # below the bottom as just past it (MATLAB drops them: the parity then runs to the bottom, as here).
    keep = (xe + (_SUBPIXELS - 1) // 2) % _SUBPIXELS == 0
    col = (xe[keep] + (_SUBPIXELS - 1) // 2) // _SUBPIXELS
    row = -(-(ye[keep] + (_SUBPIXELS - 1) // 2) // _SUBPIXELS)  # ceil division
    poly = poly[keep]
    inside = (col >= 1) & (col <= width)
    col, row, poly = col[inside], np.clip(row[inside], 1, height + 1), poly[inside]
    order = np.lexsort((row, col, poly))
    col, row, poly = col[order], row[order], poly[order]
    # A closed path crosses every column an even number of times, so sorted edges pair up within a column.
    assert row.size % 2 == 0
    start, end = row[0::2], row[1::2]
    assert np.array_equal(col[0::2], col[1::2]) and np.array_equal(poly[0::2], poly[1::2])
    nonempty = end > start
    return poly[0::2][nonempty], col[0::2][nonempty] - 1, start[nonempty] - 1, end[nonempty] - 1


def polygon_pixels(nuclei: Sequence[Nucleus], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(polygon index, flat pixel index) of every pixel of every polygon, grouped by polygon in order.

    A pixel covered by several polygons appears once per polygon; a polygon without pixels does not appear.
    """
    poly, col, start, end = _runs(nuclei, shape)
    length = end - start
    run = np.repeat(np.arange(length.size), length)
    rows = start[run] + np.arange(run.size) - np.repeat(np.cumsum(length) - length, length)
    return poly[run], rows * shape[1] + col[run]


def polygon_mask(x: np.ndarray, y: np.ndarray, shape: tuple[int, int] = TILE_SHAPE) -> np.ndarray:
    """MATLAB's ``poly2mask(x, y, height, width)`` for one polygon in ImageJ coordinates.

    >>> polygon_mask(np.array([0.5, 3.5, 3.5, 0.5]), np.array([0.5, 0.5, 2.5, 2.5]), (4, 5)).astype(int)
    array([[1, 1, 1, 0, 0],
           [1, 1, 1, 0, 0],
           [0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0]])
    """
    nucleus = Nucleus("", np.asarray(x, np.float32), np.asarray(y, np.float32), "polygon")
    _, flat = polygon_pixels([nucleus], shape)
    mask = np.zeros(shape[0] * shape[1], bool)
    mask[flat] = True
    return mask.reshape(shape)


def instance_masks(
    nuclei: Sequence[Nucleus], shape: tuple[int, int] = TILE_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """Both released label images: nucleus ``n`` (0-based index) is label ``n + 1``.

    Returns:
        ``(label_masks, label_masks_modify)``, uint16: overlaps *summed* as in the generator's
        ``mask_overlap = mask + mask_overlap``, and overlaps given to the later nucleus (``max``).

    >>> from cryonuseg_hf.data.rois import Nucleus
    >>> square = lambda x0: Nucleus("", np.float32([x0, x0 + 2, x0 + 2, x0]), np.float32([0, 0, 2, 2]), "polygon")
    >>> summed, modify = instance_masks([square(0), square(1)], (3, 4))
    >>> summed[:2].tolist(), modify[:2].tolist()
    ([[1, 3, 2, 0], [1, 3, 2, 0]], [[1, 2, 2, 0], [1, 2, 2, 0]])
    """
    poly, flat = polygon_pixels(nuclei, shape)
    size = shape[0] * shape[1]
    labels = poly + 1
    summed = np.bincount(flat, weights=labels, minlength=size)
    modify = np.zeros(size, np.int64)
    np.maximum.at(modify, flat, labels)
    # uint16() in MATLAB saturates; so do we (never reached with < 65536 nuclei and no deep overlaps).
    summed = np.minimum(summed, np.iinfo(np.uint16).max)
    return summed.astype(np.uint16).reshape(shape), modify.astype(np.uint16).reshape(shape)


def nucleus_crops(nuclei: Sequence[Nucleus], shape: tuple[int, int]) -> Iterator[tuple]:
    """Yield ``(index, row slice, col slice, bool crop)`` per nucleus; the crop is the bounding box of its pixels,
    and a nucleus without pixels yields ``(index, None, None, None)``."""
    poly, flat = polygon_pixels(nuclei, shape)
    bounds = np.searchsorted(poly, np.arange(len(nuclei) + 1))
    for index in range(len(nuclei)):
        pixels = flat[bounds[index] : bounds[index + 1]]
        if pixels.size == 0:
            yield index, None, None, None
            continue
        rows, cols = np.divmod(pixels, shape[1])
        r0, c0 = rows.min(), cols.min()
        crop = np.zeros((rows.max() - r0 + 1, cols.max() - c0 + 1), bool)
        crop[rows - r0, cols - c0] = True
        yield index, slice(r0, r0 + crop.shape[0]), slice(c0, c0 + crop.shape[1]), crop
