"""ROI polygons -> instance masks and every derived mask variant, the way the authors' MATLAB generator makes them.

The reference is ``codes/manual_masks_generator/masks_generator.m`` (and ``unetwmap.m``) in the authors' GitHub
repository ``masih4/CryoNuSeg``. For each tile it reads the ROIs in file-name order (nucleus ``n`` gets label
``n``), rasterises each one with ``poly2mask(x, y, 512, 512)`` and accumulates:

- ``label_masks``: ``mask_overlap = mask * n + mask_overlap``, the *sum* of the labels where ROIs overlap
  (uint16 TIFF); overlaps therefore carry spurious values;
- ``label_masks_modify``: ``max(mask * n, mask_overlap_modify)``, each overlap given to the later nucleus
  (uint16 TIFF) -- the clean instance map;
- ``mask_binary``: ``label_masks > 0`` as 0/255 (uint8 PNG);
- ``mask_binary_without_border``: the union of nuclei where every nucleus that overlaps an earlier one loses its
  thinned Sobel edge and, inside the overlap, a 1-pixel dilation of its unthinned Sobel edge (0/255);
- ``mask_binary_without_border_erode``: that, eroded by ``strel('disk', 1)`` (a 3x3 cross);
- ``distance_maps``: per nucleus ``bwdist(~mask)``, the maximum over nuclei, divided by its maximum and written
  as an 8-bit PNG: ``round(255 * D / max(D))``;
- ``weighted_maps`` / ``weighted_maps_erode``: the U-Net weight map (class-balance weights plus
  ``w0 * exp(-(d1 + d2)^2 / (2 * sigma^2))`` with ``w0 = 10``, ``sigma = 5``) of the border-removed mask (and of
  its erosion), scaled by ``255 / max`` and rounded to uint8;
- ``nuclei_border_k`` (k = 1..10, written by the current generator but not in the release):
  ``mask_binary - imerode(mask_binary, strel('disk', k))`` (0/255).

Rasterisation follows MATLAB's ``poly2mask`` exactly: vertices are snapped to a 5x5 sub-pixel grid, joined by
integer lines, and a pixel is inside when its centre is inside the resulting staircase path. MATLAB pixel
``(r, c)`` (1-based) has its centre at ``(x, y) = (c, r)``, and the generator passes ImageJ coordinates
unchanged, so numpy pixel ``[i, j]`` is tested at ImageJ point ``(j + 1, i + 1)``, the pixel's bottom-right
corner in ImageJ's geometry, with points on a left/top edge counted out and on a right/bottom edge counted in.
For outlines traced along pixel edges (integer vertices, as in Annotator 2's ROIs) this selects exactly the
enclosed pixels, the same as ImageJ; for sub-pixel outlines (Annotator 1's) it is ImageJ's pixel-centre rule
shifted by half a pixel. We reproduce MATLAB, not ImageJ, so that the regenerated masks match the released
ones; ``results/mask_agreement.md`` measures how closely (bit-identical) and what the other rule would change.

Array conventions: (rows, cols) inside; labels uint16 with 0 background; binaries and maps uint8 as released.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.rois import Nucleus, RoiFinding, polygon_area

BORDER_WIDTHS = tuple(range(1, 11))
VARIANTS: tuple[str, ...] = (
    "label_masks",
    "label_masks_modify",
    "mask_binary",
    "mask_binary_without_border",
    "mask_binary_without_border_erode",
    "distance_maps",
    "weighted_maps",
    "weighted_maps_erode",
    *(f"nuclei_border_{k}" for k in BORDER_WIDTHS),
)
"""Keys of :func:`mask_variants`, in order; the first eight are also in the release."""

W0 = 10.0
SIGMA = 5.0
_SUBPIXELS = 5  # poly2mask's sub-pixel grid
_WEIGHT_CUTOFF = 30  # px; beyond d1 + d2 = 30 the border weight is below 10 * exp(-18) ~ 2e-7
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # strel('disk', 1)


def _mround(values: np.ndarray) -> np.ndarray:
    """MATLAB's round(): halves away from zero (numpy rounds them to even)."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


# ----------------------------------------------------------------------------------------------------------
# Rasterisation (poly2mask)
# ----------------------------------------------------------------------------------------------------------


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


def _pixels(nuclei: Sequence[Nucleus], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(polygon index, flat pixel index) of every pixel of every polygon, grouped by polygon in order."""
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
    _, flat = _pixels([nucleus], shape)
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
    poly, flat = _pixels(nuclei, shape)
    size = shape[0] * shape[1]
    labels = poly + 1
    summed = np.bincount(flat, weights=labels, minlength=size)
    modify = np.zeros(size, np.int64)
    np.maximum.at(modify, flat, labels)
    # uint16() in MATLAB saturates; so do we (never reached with < 65536 nuclei and no deep overlaps).
    summed = np.minimum(summed, np.iinfo(np.uint16).max)
    return summed.astype(np.uint16).reshape(shape), modify.astype(np.uint16).reshape(shape)


def _nucleus_masks(nuclei: Sequence[Nucleus], shape: tuple[int, int]):
    """Yield (index, row slice, col slice, bool crop) per nucleus; crops are the bounding box of its pixels."""
    poly, flat = _pixels(nuclei, shape)
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


def empty_nuclei(nuclei: Sequence[Nucleus], shape: tuple[int, int] = TILE_SHAPE) -> list[str]:
    """Names of nuclei whose polygon covers no pixel centre (degenerate, or outside the tile)."""
    poly, _ = _pixels(nuclei, shape)
    present = np.zeros(len(nuclei), bool)
    present[poly] = True
    return [n.name for n, p in zip(nuclei, present, strict=True) if not p]


def check_nuclei(
    nuclei: Sequence[Nucleus], shape: tuple[int, int] = TILE_SHAPE, source: str = ""
) -> list[RoiFinding]:
    """Report degenerate ROIs, ROIs that enclose no pixel, and ROIs reaching outside the tile; nothing is
    removed or changed.

    The tile covers ``0 <= x <= width`` and ``0 <= y <= height`` in ImageJ coordinates. What the masks do with
    each reported ROI is stated in the finding's ``action``.

    Args:
        nuclei: as returned by :func:`~cryonuseg_hf.data.rois.read_roi_set`.
        shape: tile (height, width).
        source: the file the nuclei came from, for the report.

    Returns:
        One :class:`~cryonuseg_hf.data.rois.RoiFinding` per problem, in nucleus order.
    """
    height, width = shape
    no_pixel = set(empty_nuclei(nuclei, shape))
    findings = []
    for nucleus in nuclei:
        distinct = len({(float(a), float(b)) for a, b in zip(nucleus.x, nucleus.y, strict=True)})
        area = polygon_area(nucleus)
        if distinct < 3 or area == 0.0:
            findings.append(
                RoiFinding(
                    source,
                    nucleus.name,
                    f"degenerate ({distinct} distinct vertices, area {area:g} px^2)",
                    "kept in the ROI list so counts stay exact; it encloses no pixel centre, so it has no label",
                )
            )
            continue
        x_min, x_max = float(nucleus.x.min()), float(nucleus.x.max())
        y_min, y_max = float(nucleus.y.min()), float(nucleus.y.max())
        if x_max <= 0 or y_max <= 0 or x_min >= width or y_min >= height:
            findings.append(
                RoiFinding(
                    source,
                    nucleus.name,
                    f"entirely outside the {height}x{width} tile (x {x_min:.1f}..{x_max:.1f}, "
                    f"y {y_min:.1f}..{y_max:.1f})",
                    "kept in the ROI list; it covers no pixel of the tile, so it has no label",
                )
            )
        elif nucleus.name in no_pixel:
            findings.append(
                RoiFinding(
                    source,
                    nucleus.name,
                    f"encloses no pixel centre (area {area:.3g} px^2)",
                    "kept in the ROI list so counts stay exact; it has no label in the masks",
                )
            )
        elif x_min < 0 or y_min < 0 or x_max > width or y_max > height:
            findings.append(
                RoiFinding(
                    source,
                    nucleus.name,
                    f"reaches outside the {height}x{width} tile (x {x_min:.2f}..{x_max:.2f}, "
                    f"y {y_min:.2f}..{y_max:.2f})",
                    "kept; its mask is clipped to the tile, as MATLAB's poly2mask does",
                )
            )
    return findings


def hidden_nuclei(nuclei: Sequence[Nucleus], label_masks_modify: np.ndarray) -> list[str]:
    """Names of nuclei with pixels of their own but no pixel left in ``label_masks_modify``.

    These are nuclei entirely covered by later ROIs: they are counted in the ROI set and in ``label_masks``,
    but have no label in the clean instance map.
    """
    drawn = set(
        np.flatnonzero(np.bincount(_pixels(nuclei, label_masks_modify.shape)[0], minlength=len(nuclei)))
    )
    present = set(np.unique(label_masks_modify).tolist())
    return [nuclei[i].name for i in sorted(drawn) if i + 1 not in present]


# ----------------------------------------------------------------------------------------------------------
# Morphology with MATLAB's structuring elements
# ----------------------------------------------------------------------------------------------------------


@cache
def disk_decomposition(radius: int) -> tuple[np.ndarray, ...]:
    """The offsets (row, col) of ``strel('disk', radius)`` (default N = 4) as MATLAB applies it.

    Radii below 3 give the exact disk ``x^2 + y^2 <= r^2``. From 3 on, MATLAB approximates the disk by four
    periodic lines (Jones & Soille; Adams 1993), plus a horizontal and a vertical line when those fall short of
    the radius; erosion by the sequence equals erosion by their Minkowski sum (an octagon-like shape).

    Returns:
        One array of (row, col) offsets per structuring element in the sequence.
    """
    if radius < 3:
        r = np.arange(-radius, radius + 1)
        rr, cc = np.meshgrid(r, r, indexing="ij")
        inside = rr**2 + cc**2 <= radius**2
        return (np.stack([rr[inside], cc[inside]], axis=1),)
    theta = np.pi / 8
    k = 2 * radius / (1 / np.tan(theta) + 1 / np.sin(theta))
    parts = []
    for v in ((1, 0), (1, 1), (0, 1), (-1, 1)):
        rp = int(np.floor(k / np.hypot(*v)))
        p = np.arange(-rp, rp + 1)
        parts.append(np.stack([p * v[0], p * v[1]], axis=1))
    # The rows reached by the periodic lines so far decide whether MATLAB adds two lines.
    reach = {0}
    for part in parts:
        reach = {a + b for a in reach for b in part[:, 0].tolist()}
    length = 2 * (radius - max(reach) - 1) + 1
    if length >= 3:
        half = (length - 1) // 2
        p = np.arange(-half, half + 1)
        parts.append(np.stack([np.zeros_like(p), p], axis=1))
        parts.append(np.stack([p, np.zeros_like(p)], axis=1))
    return tuple(parts)


def disk_footprint(radius: int) -> np.ndarray:
    """The full neighbourhood of ``strel('disk', radius)`` as a bool array (the Minkowski sum of its parts)."""
    offsets = np.zeros((1, 2), np.int64)
    for part in disk_decomposition(radius):
        offsets = np.unique((offsets[:, None, :] + part[None, :, :]).reshape(-1, 2), axis=0)
    extent = np.abs(offsets).max()
    footprint = np.zeros((2 * extent + 1, 2 * extent + 1), bool)
    footprint[offsets[:, 0] + extent, offsets[:, 1] + extent] = True
    return footprint


def binary_erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """``imerode(mask, strel('disk', radius))`` for a bool mask; outside the image counts as foreground."""
    parts = disk_decomposition(radius)
    pad = int(sum(np.abs(p).max() for p in parts))
    current = np.pad(mask, pad, constant_values=True)
    height, width = current.shape
    for part in parts:
        out = np.ones_like(current)
        for dr, dc in part.tolist():
            # out[i, j] &= current[i + dr, j + dc]; the padding absorbs the shift, wrapped values never reach
            # the cropped centre because the pad is the sum of all extents.
            src_r = slice(max(dr, 0), height + min(dr, 0))
            dst_r = slice(max(-dr, 0), height + min(-dr, 0))
            src_c = slice(max(dc, 0), width + min(dc, 0))
            dst_c = slice(max(-dc, 0), width + min(-dc, 0))
            out[dst_r, dst_c] &= current[src_r, src_c]
        current = out
    return current[pad : pad + mask.shape[0], pad : pad + mask.shape[1]]


def nuclei_borders(
    source: Sequence[Nucleus] | np.ndarray,
    widths: Iterable[int] = BORDER_WIDTHS,
    shape: tuple[int, int] = TILE_SHAPE,
) -> dict[int, np.ndarray]:
    """Inner nucleus borders of several widths: ``mask_binary - imerode(mask_binary, strel('disk', k))``.

    Args:
        source: the nuclei of a tile, or any label/binary image (non-zero = nucleus).
        widths: border widths in pixels (the generator writes 1..10).
        shape: tile shape when ``source`` is a list of nuclei.

    Returns:
        width -> uint8 image, 255 on the border and 0 elsewhere (the generator's encoding). As in the
        generator, the border is that of the union of all nuclei: touching nuclei share no border.
    """
    if isinstance(source, np.ndarray):
        binary = source > 0
    else:
        binary = instance_masks(source, shape)[0] > 0
    return {k: np.where(binary & ~binary_erode(binary, k), 255, 0).astype(np.uint8) for k in widths}


# ----------------------------------------------------------------------------------------------------------
# Border removal (edge() with Sobel) and maps
# ----------------------------------------------------------------------------------------------------------


def _sobel_edges(mask: np.ndarray, image_size: int):
    """``edge(mask, 'sobel', 'nothinning')`` and ``edge(mask)`` (thinned) on a crop of a full image.

    The crop must hold every pixel within 2 px of the mask, except where it meets the image boundary; there
    ``mode="nearest"`` is MATLAB's replicate padding, elsewhere it replicates zeros, which is exact.
    """
    from scipy import ndimage

    a = mask.astype(np.float64)
    # imfilter(a, fspecial('sobel') / 8, 'replicate') and its transpose; only magnitudes matter.
    bx = ndimage.correlate(a, np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]]) / 8, mode="nearest")
    by = ndimage.correlate(a, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]) / 8, mode="nearest")
    b = bx * bx + by * by
    cutoff = 4 * b.sum() / image_size  # the automatic threshold: 4 * mean(b) over the whole image
    edge = b > cutoff
    bx, by = np.abs(bx), np.abs(by)
    # Non-maximum suppression of computeEdgesWithThinning (offsets 0): out-of-image neighbours pass.
    left = np.ones_like(edge)
    left[:, 1:] = b[:, :-1] <= b[:, 1:]
    right = np.ones_like(edge)
    right[:, :-1] = b[:, :-1] > b[:, 1:]
    up = np.ones_like(edge)
    up[1:, :] = b[:-1, :] <= b[1:, :]
    down = np.ones_like(edge)
    down[:-1, :] = b[:-1, :] > b[1:, :]
    eps = 100 * np.finfo(np.float64).eps
    thin = edge & (((bx >= by - eps) & left & right) | ((by >= bx - eps) & up & down))
    return edge, thin


def _crop(r: slice, c: slice, pad: int, shape: tuple[int, int]):
    r0, r1 = max(r.start - pad, 0), min(r.stop + pad, shape[0])
    c0, c1 = max(c.start - pad, 0), min(c.stop + pad, shape[1])
    return slice(r0, r1), slice(c0, c1), (r.start - r0, c.start - c0)


def border_removed(nuclei: Sequence[Nucleus], shape: tuple[int, int] = TILE_SHAPE) -> np.ndarray:
    """The generator's ``mask_overlap_borderremove`` before scaling: int8 with values -2, 0 and 1.

    Nuclei are added in order with ``max``; a nucleus that overlaps the union so far loses (a) the 3x3-cross
    dilation of its unthinned Sobel edge inside the overlap and (b) its whole thinned Sobel edge. The MATLAB
    code resets only the value -1 to 0, so pixels hit by both subtractions outside the union are left at -2
    until the next nucleus's ``max`` lifts them to 0; only the last nucleus's -2 pixels survive. They matter:
    ``unetwmap`` treats -2 as a class of its own.
    """
    from scipy import ndimage

    acc = np.zeros(shape, np.int8)
    pending: tuple[slice, slice] | None = None
    for _, r, c, crop in _nucleus_masks(nuclei, shape):
        if pending is not None:  # max(mask_org, acc) with mask_org = 0 lifts the previous -2 pixels to 0
            window = acc[pending]
            window[window < 0] = 0
            pending = None
        if crop is None:
            continue
        rr, cc, (dr, dc) = _crop(r, c, 2, shape)
        window = acc[rr, cc]
        mask = np.zeros(window.shape, bool)
        mask[dr : dr + crop.shape[0], dc : dc + crop.shape[1]] = crop
        overlap = mask & (window == 1)
        np.maximum(window, mask.astype(np.int8), out=window)
        if overlap.any():
            edge, thin = _sobel_edges(mask, shape[0] * shape[1])
            dilated = ndimage.binary_dilation(edge & overlap, structure=_CROSS)
            window -= dilated.astype(np.int8) + thin.astype(np.int8)
            window[window == -1] = 0
            if (window == -2).any():
                pending = (rr, cc)
    return acc


def unet_weight_map(gt: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """``unetwmap.m``: class-balance weights plus the U-Net border weight, float64.

    ``w_c`` is ``1 / count`` of each distinct value of ``gt`` normalised by its maximum (so the *rarest* value
    gets 1). Cells are the 8-connected components of ``gt == 255``; on background pixels ``w0 * exp(-(d1 +
    d2)^2 / (2 sigma^2))`` is added, with d1, d2 the distances to the nearest and second-nearest cell (when there
    are at least two cells). Terms with ``d1 + d2 > 30`` px are below 2e-7 and left out.

    >>> gt = np.zeros((1, 7)); gt[0, [0, 6]] = 255
    >>> w = unet_weight_map(gt)  # background 5 px: w_c = 2/5; border term at column 3: d1 = d2 = 3
    >>> print(round(float(w[0, 3]), 4), round(2 / 5 + 10 * np.exp(-36 / 50), 4))
    5.2675 5.2675
    """
    from scipy import ndimage

    values, inverse, counts = np.unique(gt, return_inverse=True, return_counts=True)
    class_weight = (1.0 / counts) / (1.0 / counts).max()
    weight = class_weight[inverse.reshape(gt.shape)]
    cells, n_cells = ndimage.label(gt == 255, structure=np.ones((3, 3), bool))
    if n_cells < 2:
        return weight
    d1 = np.full(gt.shape, np.inf)
    d2 = np.full(gt.shape, np.inf)
    for index, (r, c) in enumerate(ndimage.find_objects(cells), start=1):
        rr, cc, _ = _crop(r, c, _WEIGHT_CUTOFF, gt.shape)
        distance = ndimage.distance_transform_edt(cells[rr, cc] != index)
        w1, w2 = d1[rr, cc], d2[rr, cc]
        np.minimum(w2, np.maximum(w1, distance), out=w2)
        np.minimum(w1, distance, out=w1)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    border[(cells != 0) | ~np.isfinite(d2)] = 0.0
    return weight + border


def matlab_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's uint8(): round halves away from zero, saturate to 0..255."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def distance_map(
    nuclei: Sequence[Nucleus], shape: tuple[int, int] = TILE_SHAPE, dtype: type = np.float32
) -> np.ndarray:
    """Max over nuclei of ``bwdist(~mask)`` (each nucleus on its own), before any scaling.

    Returns float32 by default, like MATLAB's ``bwdist``: the single-precision rounding decides some of the
    8-bit values of the released distance maps (``results/mask_agreement.md`` counts them).
    """
    from scipy import ndimage

    out = np.zeros(shape, dtype)
    for _, r, c, crop in _nucleus_masks(nuclei, shape):
        if crop is None:
            continue
        rr, cc, (dr, dc) = _crop(r, c, 1, shape)
        mask = np.zeros((rr.stop - rr.start, cc.stop - cc.start), bool)
        mask[dr : dr + crop.shape[0], dc : dc + crop.shape[1]] = crop
        # Within the crop, every pixel beyond the bounding box is background, so the nearest background pixel
        # of the whole image is always inside the crop (or the crop meets the image edge, as MATLAB's does).
        distance = ndimage.distance_transform_edt(mask) if (~mask).any() else np.full(mask.shape, np.inf)
        window = out[rr, cc]
        np.maximum(window, distance.astype(dtype), out=window)
    return out


def scale_distance_map(distance: np.ndarray) -> np.ndarray:
    """The released 8-bit encoding: ``imwrite(double(D) / max(D))``, i.e. ``round((D / max D) * 255)``.

    The order matters for exact ties: with D = sqrt(73) and max D = sqrt(292) (ratio 0.5), ``(D / max) * 255``
    is 127.5 and rounds up, as in the release.
    """
    distance = distance.astype(np.float64)
    peak = distance.max()
    return matlab_uint8((distance / peak) * 255 if peak > 0 else distance)


def mask_variants(nuclei: Sequence[Nucleus], shape: tuple[int, int] = TILE_SHAPE) -> dict[str, np.ndarray]:
    """Every mask variant of one tile, encoded as the generator writes them (see the module docstring).

    Returns:
        ``VARIANTS`` -> array: label masks uint16, everything else uint8 (binaries 0/255, maps 0..255).
    """
    from scipy import ndimage

    label_masks, label_masks_modify = instance_masks(nuclei, shape)
    binary = label_masks > 0
    removed = border_removed(nuclei, shape)
    gt = np.where(removed > 0, 255.0, removed.astype(np.float64))  # values -2, 0, 255 as in MATLAB
    gt_erode = ndimage.grey_erosion(gt, footprint=_CROSS, mode="constant", cval=np.inf)
    distance = distance_map(nuclei, shape)
    weight = unet_weight_map(gt)
    weight_erode = unet_weight_map(gt_erode)
    variants = {
        "label_masks": label_masks,
        "label_masks_modify": label_masks_modify,
        "mask_binary": np.where(binary, 255, 0).astype(np.uint8),
        "mask_binary_without_border": matlab_uint8(gt),
        "mask_binary_without_border_erode": matlab_uint8(gt_erode),
        "distance_maps": scale_distance_map(distance),
        "weighted_maps": matlab_uint8(weight * 255 / weight.max()),
        "weighted_maps_erode": matlab_uint8(weight_erode * 255 / weight_erode.max()),
    }
    for k, border in nuclei_borders(binary, BORDER_WIDTHS).items():
        variants[f"nuclei_border_{k}"] = border
    return variants


def read_mask(path: str | Path) -> np.ndarray:
    """A released mask file: ``.tif`` label masks as uint16, ``.png`` binaries and maps as uint8, 2-D.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or not a single-channel 2-D image; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as error:  # decoders raise many types for corrupt files
        raise ValueError(f"{path}: unreadable mask image ({type(error).__name__}: {error})") from None
    if (
        array.ndim == 3
        and array.shape[2] in (3, 4)
        and all(np.array_equal(array[..., 0], array[..., i]) for i in range(1, 3))
    ):
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D single-channel mask, got shape {array.shape} {array.dtype}")
    return array


def own_label_fraction(nuclei: Sequence[Nucleus], labels: np.ndarray) -> float:
    """The fraction of the ROIs' pixels that carry their own label (``index + 1``) in an instance map.

    A ROI set and the ``label masks modify`` made from it agree almost everywhere (only overlaps go to the later
    nucleus); a ROI set of another tile lands on its own label almost nowhere. 1.0 for a set without pixels.

    >>> from cryonuseg_hf.data.rois import Nucleus
    >>> square = Nucleus("a", np.float32([0, 2, 2, 0]), np.float32([0, 0, 2, 2]), "polygon")
    >>> own_label_fraction([square], np.ones((3, 3), np.uint16)), own_label_fraction([square], np.zeros((3, 3)))
    (1.0, 0.0)
    """
    poly, flat = _pixels(nuclei, labels.shape)
    if flat.size == 0:
        return 1.0
    return float(np.mean(labels.ravel()[flat] == poly + 1))
