"""Regions of a slide (``--roi``): x, y, width and height in level-0 pixels, parsed, drawn on a mask and tested."""

from __future__ import annotations

import math

import numpy as np

Roi = tuple[int, int, int, int]
"""(x, y, width, height) in level-0 pixels."""


def parse_roi(text: str) -> Roi:
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


def roi_mask(roi: Roi, shape: tuple[int, int], per_level0: tuple[float, float]) -> np.ndarray:
    """(h, w) bool mask of ``shape``, True on the pixels that ``roi`` touches.

    Args:
        roi: the region.
        shape: the mask's (rows, cols).
        per_level0: mask pixels per level-0 pixel (x, y).

    >>> roi_mask((2, 0, 4, 2), (2, 4), (0.5, 0.5)).astype(int).tolist()
    [[0, 1, 1, 0], [0, 0, 0, 0]]
    """
    x, y, w, h = roi
    mask = np.zeros(shape, bool)
    mask[
        math.floor(y * per_level0[1]) : math.ceil((y + h) * per_level0[1]),
        math.floor(x * per_level0[0]) : math.ceil((x + w) * per_level0[0]),
    ] = True
    return mask


def roi_contains(roi: Roi, x: float, y: float) -> bool:
    """Whether the level-0 point ``(x, y)`` (continuous frame: pixel ``j`` spans ``[j, j + 1)``) lies in ``roi``."""
    return roi[0] <= x < roi[0] + roi[2] and roi[1] <= y < roi[1] + roi[3]
