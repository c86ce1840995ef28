"""Regions of a slide (``--roi``): x, y, width and height in level-0 pixels, parsed, drawn on a mask and tested."""

from __future__ import annotations

import logging
import math
import os

import numpy as np

logger = logging.getLogger(__name__)

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


def clip_roi(roi: Roi, dimensions: tuple[int, int], path: str | os.PathLike = "the slide") -> Roi:
    """``roi`` clipped to a slide of ``dimensions`` (level-0 width, height), saying what was cut.

    Raises:
        ValueError: the region lies wholly outside the slide: it would find nothing, and that is not a finding.

    >>> clip_roi((100, 0, 50, 50), (120, 80))
    (100, 0, 20, 50)
    >>> clip_roi((500, 0, 50, 50), (120, 80))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the slide: --roi 500,0,50,50 lies wholly outside the slide, which is 120x80 pixels at level 0 ...
    """
    x, y, w, h = roi
    width, height = dimensions
    if x >= width or y >= height:
        raise ValueError(
            f"{path}: --roi {x},{y},{w},{h} lies wholly outside the slide, which is {width}x{height} pixels at "
            "level 0 (x from 0 to the width, y from 0 to the height); give a region inside it"
        )
    clipped = (x, y, min(w, width - x), min(h, height - y))
    if clipped != roi:
        logger.warning(
            "%s: --roi %d,%d,%d,%d reaches past the slide's %dx%d level-0 pixels: clipped to %d,%d,%d,%d",
            path, *roi, width, height, *clipped,
        )  # fmt: skip
    return clipped


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


def roi_shape(roi: Roi, per_level0: tuple[float, float]) -> tuple[int, int]:
    """(rows, cols) that ``roi`` covers in a frame of ``per_level0`` pixels per level-0 pixel (x, y).

    >>> roi_shape((0, 0, 1000, 300), (0.5, 0.5))
    (150, 500)
    """
    return max(1, math.ceil(roi[3] * per_level0[1])), max(1, math.ceil(roi[2] * per_level0[0]))


def roi_contains(roi: Roi, x: float, y: float) -> bool:
    """Whether the level-0 point ``(x, y)`` (continuous frame: pixel ``j`` spans ``[j, j + 1)``) lies in ``roi``."""
    return roi[0] <= x < roi[0] + roi[2] and roi[1] <= y < roi[1] + roi[3]
