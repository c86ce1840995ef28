"""The mask variants of the release, derived from the ROIs the way the authors' MATLAB generator makes them.

The reference is ``codes/manual_masks_generator/masks_generator.m`` (and ``unetwmap.m``) in the authors' GitHub
repository ``masih4/CryoNuSeg``. From the two label images of :func:`cryonuseg_hf.data.masks.instance_masks` it
writes:

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

``results/mask_agreement.md`` measures how closely the regenerated variants match the released files.

Array conventions: (rows, cols) inside; labels uint16 with 0 background; binaries and maps uint8 as released.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.masks import instance_masks, nucleus_crops
from cryonuseg_hf.data.morphology import binary_erode
from cryonuseg_hf.data.rois import Nucleus

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
_WEIGHT_CUTOFF = 30  # px; beyond d1 + d2 = 30 the border weight is below 10 * exp(-18) ~ 2e-7
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # strel('disk', 1)


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
    for _, r, c, crop in nucleus_crops(nuclei, shape):
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
    for _, r, c, crop in nucleus_crops(nuclei, shape):
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
