"""Class probabilities of a large image from overlapping windows, blended, so that it is post-processed once.

The ownership rule of :mod:`cryonuseg_hf.model.tiling` labels each window on its own and keeps the nuclei whose
centroid lies in its core; a nucleus near a core edge is then decided by one window, and a shift of the image by
one pixel can hand it to another window that sees it differently. Here the windows' class probabilities are
blended instead, as sliding-window inference does (MONAI's ``sliding_window_inference`` with a Gaussian
importance map): each window's probabilities are weighted by a Gaussian that falls off toward its edges
(``sigma = SIGMA_SCALE`` times the window side, the peak 1 at its centre), summed, and divided by the summed
weights. Every pixel's probabilities then change smoothly from one window to the next, and the whole image is
post-processed once, so no nucleus is cut or owned.

Windows overlap by ``overlap`` pixels at least, not by two margins: a pixel near a cut edge gets little weight
where another window sees it from further inside, so the overlap only needs to carry the blend. Each pixel is
computed about ``(window / (window - overlap))²`` times, 1.3 for 512 px windows overlapping by 64, against 2.5 for
512 px tiles with 64 px margins on the 64 px grid of an input scale of 1.5.

Memory holds the blended (C, H, W) float32 map and its weights, 16 bytes a pixel: callers blend blocks of a large
image or slide (:func:`cryonuseg_hf.model.tiling.predict_tiled` owns nuclei across blocks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SIGMA_SCALE = 0.125
"""Standard deviation of the Gaussian weight, as a fraction of the window side (MONAI's default)."""
MIN_WEIGHT = 1e-3
"""Weights are at least this (MONAI clamps likewise), so pixels at the image border, seen by one window near its
edge only, keep a weight that float32 divides without loss."""


@dataclass(frozen=True)
class Windows:
    """Where the windows of an image lie: (rows, cols) slices, in the order they are run."""

    shape: tuple[int, int]
    slices: tuple[tuple[slice, slice], ...]


def _axis_spans(n: int, window: int, overlap: int, align: int) -> list[tuple[int, int]]:
    """(start, stop) of windows along an axis of length ``n``: starts are multiples of ``align`` and consecutive
    windows overlap by ``overlap`` or more; the last window runs to the end (up to ``align - 1`` longer)."""
    if n <= window:
        return [(0, n)]
    step = (window - overlap) // align * align
    last = (n - window) // align * align
    starts = list(range(0, last, step)) + [last]
    return [(start, start + window) for start in starts[:-1]] + [(last, n)]


def window_grid(shape: tuple[int, int], window: int = 512, overlap: int = 64, align: int = 1) -> Windows:
    """The windows that cover an image of ``shape`` (rows, cols): one when it fits in ``window``.

    Args:
        shape: (rows, cols).
        window: side of the windows (the last of a row or column may be up to ``align - 1`` longer).
        overlap: least overlap of neighbouring windows, pixels.
        align: window starts are multiples of this (the model's grid step, see
            :func:`cryonuseg_hf.model.predict.grid_step`).

    >>> [s for s in window_grid((1000, 300), window=512, overlap=64, align=64).slices]  # doctest: +NORMALIZE_WHITESPACE
    [(slice(0, 512, None), slice(0, 300, None)), (slice(448, 1000, None), slice(0, 300, None))]
    """
    if align < 1 or overlap < 0 or (window - overlap) // align < 1:
        raise ValueError(
            f"window {window} must exceed the overlap {overlap} by at least align {align}, with overlap >= 0"
        )
    rows = _axis_spans(shape[0], window, overlap, align)
    cols = _axis_spans(shape[1], window, overlap, align)
    slices = tuple((slice(r0, r1), slice(c0, c1)) for r0, r1 in rows for c0, c1 in cols)
    return Windows(tuple(shape), slices)


@functools.lru_cache(maxsize=8)
def importance_map(shape: tuple[int, int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """(h, w) float32 Gaussian weights, 1 at the centre, falling toward the edges, at least ``MIN_WEIGHT``.

    >>> weights = importance_map((5, 9))
    >>> float(weights.max()), bool(weights[0, 0] == weights.min() >= 1e-3)
    (1.0, True)
    """
    axes = []
    for n in shape:
        position = np.arange(n, dtype=np.float64) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (position / (sigma_scale * n)) ** 2))
    weights = np.outer(axes[0], axes[1])
    weights = np.maximum(weights / weights.max(), MIN_WEIGHT).astype(np.float32)
    weights.setflags(write=False)
    return weights


def blended_probabilities(
    image: np.ndarray,
    probabilities: Callable[[np.ndarray], np.ndarray],
    *,
    window: int = 512,
    overlap: int = 64,
    align: int = 1,
    batch_size: int = 1,
    skip: Callable[[np.ndarray], bool] | None = None,
    classes: int = 3,
    stats: dict | None = None,
) -> np.ndarray:
    """(C, H, W) float32 class probabilities of ``image`` from overlapping windows, blended (module docstring).

    Args:
        image: (H, W, 3) uint8.
        probabilities: (N, h, w, 3) uint8 windows of one size -> (N, C, h, w) float32 probabilities.
        window, overlap, align: see :func:`window_grid`.
        batch_size: windows of the same size given to ``probabilities`` at once.
        skip: a window for which this is true is not run (no tissue): it counts as background.
        classes: C, for an image whose windows are all skipped; class 0 is background.
        stats: if given, ``windows`` run and ``windows_skipped`` are added to it.

    Returns:
        the blended probabilities; pixels that no run window covers are background with probability 1.
    """
    height, width = image.shape[:2]
    grid = window_grid((height, width), window, overlap, align)
    run = [s for s in grid.slices if skip is None or not skip(image[s])]
    total, weights = None, np.zeros((height, width), np.float32)
    by_size: dict[tuple[int, int], list[tuple[slice, slice]]] = {}
    for spot in run:
        by_size.setdefault((spot[0].stop - spot[0].start, spot[1].stop - spot[1].start), []).append(spot)
    for size, spots in by_size.items():
        weight = importance_map(size)
        for first in range(0, len(spots), batch_size):
            batch = spots[first : first + batch_size]
            result = probabilities(np.stack([image[s] for s in batch]))
            if total is None:
                total = np.zeros((result.shape[1], height, width), np.float32)
            for spot, p in zip(batch, result, strict=True):
                total[(slice(None), *spot)] += p * weight
                weights[spot] += weight
    if stats is not None:
        stats["windows"] = stats.get("windows", 0) + len(run)
        stats["windows_skipped"] = stats.get("windows_skipped", 0) + len(grid.slices) - len(run)
    if total is None:
        total = np.zeros((classes, height, width), np.float32)
    covered = weights > 0
    total[:, covered] /= weights[covered]
    total[0, ~covered] = 1.0
    return total
