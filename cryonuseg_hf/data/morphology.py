"""Binary erosion with MATLAB's ``strel('disk', r)``, as the authors' generator applies it.

MATLAB decomposes the disk into periodic lines from radius 3 on, so its erosion is by an octagon-like shape, not
by the exact disk; the released ``mask binary without border erode`` and the regenerated ``nuclei border`` masks
depend on it (:mod:`cryonuseg_hf.data.mask_variants`).
"""

from __future__ import annotations

from functools import cache

import numpy as np


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
