"""Large images in overlapping tiles, with a rule that makes exactly one tile own each nucleus.

The idea is stardist's ``big.py``: the image is cut into disjoint *cores* that cover it; each core is predicted
inside a *window* that adds ``margin`` pixels of context on every side (clipped at the image border, and shifted
inwards there so every window has the same size). A tile keeps only the nuclei whose centroid lies in its core.
Since the cores partition the image, every nucleus has exactly one owner, so nothing is duplicated; and since a
kept nucleus's centroid is at least ``margin`` pixels from any cut edge of its window, a nucleus smaller than
``margin`` is never cut. The cost is linear in the area, and memory holds one window plus the label image.

The cost is known before any window runs: each pixel runs through the model about ``(window / stride)²`` times,
where the stride is what a window adds (its core here; the step between blended windows in
:mod:`cryonuseg_hf.model.blending`). :func:`check_window_work` refuses settings that run a pixel more than
``MAX_PASSES`` times on an image that needs more than one window: a stride under a quarter of the window
(``--tile-size 64 --margin 0`` on the 64 px grid of the shipped model owns a 1 px core per window: 16384 windows
for a 128x128 image, where 4 would do).

Two tiles can disagree slightly about a nucleus that straddles a core edge (each sees different context). The
paste step guards against the two ways that could show: a nucleus that mostly covers an already pasted one is a
duplicate and is dropped; otherwise it only takes pixels nobody has taken. Both are counted and logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

MAX_PASSES = 16
"""The most times tiling may run each pixel through the model: a window's stride must be at least a quarter of its
side. The defaults run a pixel about 2.5 times (512 px tiles with 64 px margins on a 64 px grid) or 1.3 times
(512 px blended windows overlapping by 64)."""


@dataclass(frozen=True)
class Tile:
    """One tile: the window fed to the model and the core whose nuclei it owns, both as (row, col) slices."""

    window: tuple[slice, slice]
    core: tuple[slice, slice]


def check_window_work(
    shape: tuple[int, int],
    window: int,
    stride: int,
    settings: str,
    least: Callable[[int], int],
    count: int | None = None,
) -> None:
    """Refuse, before any window runs, windows whose stride makes the work far larger than the image needs.

    Args:
        shape: (rows, cols) of the image.
        window: side of the windows.
        stride: what each window adds to the covered image along an axis (a core, a step), pixels.
        settings: the options that made them, as the user gave them (``"--tile-size 64 with --margin 0"``).
        least: window side -> its stride with the other settings unchanged, to name the least useful window.
        count: the number of windows, for the message (default: that of :func:`tile_grid`).

    Raises:
        ValueError: the stride is under 1 pixel, or the image is larger than one window and each pixel would run
            more than ``MAX_PASSES`` times; the message gives the window count and the least window side.

    >>> check_window_work((128, 128), 64, 1, "--tile-size 64 with --margin 0", lambda w: w - 63)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: --tile-size 64 with --margin 0 makes 16384 windows for this 128x128 image, each pixel run ...
    """
    passes = (window / stride) ** 2 if stride > 0 else math.inf
    if passes <= MAX_PASSES or (stride > 0 and max(shape) <= window):
        return
    side = next(w for w in range(window, 1 << 20) if 4 * least(w) >= w)
    fix = (
        f"use a window side (--tile-size) of at least {side} px with these settings (the model was trained on "
        "512 px tiles, the default)"
    )
    if stride < 1:
        raise ValueError(f"{settings} leaves windows that add nothing to each other: {fix}")
    if count is None:
        count = math.prod(1 if n <= window else math.ceil(n / stride) for n in shape)
    raise ValueError(
        f"{settings} makes {count} windows for this {shape[1]}x{shape[0]} image, each pixel run through the model "
        f"about {passes:.0f} times (each window adds {stride} px of its {window}; at most {MAX_PASSES} runs a "
        f"pixel are allowed, a stride of a quarter of the window): {fix}"
    )


def check_blend(shape: tuple[int, int], window: int, overlap: int, align: int) -> None:
    """Refuse blended windows (:mod:`cryonuseg_hf.model.blending`) that make the work explode, before any runs.

    Their stride is the step between windows, ``window - overlap`` rounded down to the grid ``align`` as
    :func:`cryonuseg_hf.model.blending.window_grid` steps; the rule is :func:`check_window_work`.
    """

    def step(side: int) -> int:
        return (side - overlap) // align * align

    settings = f"--tile-size {window} with --overlap {overlap} (windows start on the model's {align} px grid)"
    count = None
    if step(window) >= 1:
        count = math.prod(
            1 if n <= window else -(-((n - window) // align * align) // step(window)) + 1 for n in shape
        )
    check_window_work(shape, window, step(window), settings, step, count)


def core_size(tile_size: int, margin: int, align: int) -> int:
    """Side of the core a tile owns: the window less a margin on each side, less ``align - 1`` pixels, since
    window starts are rounded down to the model's grid and may lose that much of the context after the core.

    >>> core_size(512, 64, 64)
    321
    """
    return tile_size - 2 * margin - (align - 1)


def _axis_tiles(n: int, tile_size: int, margin: int, align: int) -> list[tuple[int, int, int, int]]:
    """(window start, window stop, core start, core stop) along one axis of length ``n``."""
    if n <= tile_size:
        return [(0, n, 0, n)]
    core = core_size(tile_size, margin, align)
    n_cores = -(-n // core)
    edges = np.round(np.linspace(0, n, n_cores + 1)).astype(int)
    last_start = (n - tile_size) // align * align
    spans = []
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        window_start = max(int(start) - margin, 0) // align * align
        if (
            window_start >= last_start
        ):  # the last window runs to the image edge (tile_size .. + align - 1 long)
            spans.append((last_start, n, int(start), int(stop)))
        else:
            spans.append((window_start, window_start + tile_size, int(start), int(stop)))
    return spans


def tile_grid(
    shape: tuple[int, int],
    tile_size: int = 512,
    margin: int = 64,
    align: int = 1,
    name: str = "--tile-size",
) -> list[Tile]:
    """The tiles of an image of ``shape`` (rows, cols): one tile when it fits in ``tile_size``.

    Args:
        shape: (rows, cols) of the image.
        tile_size: side of the windows (the last window of a row or column may be up to ``align - 1`` longer).
        margin: context on each side of a core, at least, except at the image border.
        align: window starts are multiples of this, so that a window samples the image on the same grid as
            the whole image would (pass the model's stride: SegFormer's is 32 pixels of its input).
        name: the option that set ``tile_size``, for the message of :func:`check_window_work` (``--block-size``
            for a slide's blocks).

    Raises:
        ValueError: ``margin`` < 0 or ``align`` < 1, or windows refused by :func:`check_window_work` (the core, see
            :func:`core_size`, is their stride).

    >>> [t.core for t in tile_grid((100, 100), tile_size=512)]
    [(slice(0, 100, None), slice(0, 100, None))]
    >>> len(tile_grid((1024, 1000), tile_size=512, margin=64, align=32))
    9
    """
    if align < 1 or margin < 0:
        raise ValueError(f"the margin must be >= 0 and the grid step >= 1, got {margin} and {align}")
    settings = f"{name} {tile_size} with --margin {margin}"
    if align > 1:
        settings += f" (windows start on the model's {align} px grid)"
    check_window_work(
        shape, tile_size, core_size(tile_size, margin, align), settings, lambda w: core_size(w, margin, align)
    )
    rows = _axis_tiles(shape[0], tile_size, margin, align)
    cols = _axis_tiles(shape[1], tile_size, margin, align)
    return [
        Tile((slice(r0, r1), slice(c0, c1)), (slice(cr0, cr1), slice(cc0, cc1)))
        for r0, r1, cr0, cr1 in rows
        for c0, c1, cc0, cc1 in cols
    ]


def _centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, centroid row, centroid col) of every non-zero label, centroids as mean pixel indices."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    rows, cols = np.indices(labels.shape)
    sum_r = np.bincount(flat, weights=rows.ravel(), minlength=len(counts))
    sum_c = np.bincount(flat, weights=cols.ravel(), minlength=len(counts))
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    return ids, sum_r[ids] / counts[ids], sum_c[ids] / counts[ids]


def owned_nuclei(labels: np.ndarray, origin: tuple[int, int], core: tuple[slice, slice]) -> np.ndarray:
    """Ids of the nuclei a window owns: those whose centroid, rounded down, lies in its core.

    Args:
        labels: (h, w) instance labels of the window.
        origin: (row, col) of the window's top-left pixel in the image.
        core: (rows, cols) slices of the core, in image pixels.

    >>> labels = np.zeros((4, 8), np.int32); labels[1:3, 1:3] = 1; labels[1:3, 5:7] = 2
    >>> owned_nuclei(labels, (10, 100), (slice(10, 14), slice(100, 104))).tolist()
    [1]
    """
    ids, cy, cx = _centroids(labels)
    cy, cx = np.floor(cy).astype(int) + origin[0], np.floor(cx).astype(int) + origin[1]
    rows, cols = core
    return ids[(cy >= rows.start) & (cy < rows.stop) & (cx >= cols.start) & (cx < cols.stop)]


def predict_tiled(
    image: np.ndarray,
    predict_tile: Callable[[np.ndarray], np.ndarray],
    tile_size: int = 512,
    margin: int = 64,
    align: int = 1,
    progress: bool = False,
    stats: dict | None = None,
) -> np.ndarray:
    """Instance labels of a whole image from a function that labels one tile.

    Args:
        image: (H, W, ...) array.
        predict_tile: window of ``image`` -> (h, w) integer instance labels of that window.
        tile_size: side of the windows; an image that fits is labelled in one call.
        margin: context on each side of a core; make it larger than the largest nucleus.
        align: window starts are multiples of this (see :func:`tile_grid`).
        progress: show a progress bar over tiles.
        stats: if given, filled with ``tiles``, ``nuclei``, ``duplicates_dropped`` (a nucleus mostly covering
            one pasted from another tile), ``shared_pixels`` (nuclei that lost pixels to an earlier tile) and
            ``touching_cut_edge`` (kept nuclei that touch a cut edge of their window: cut, if any).

    Returns:
        (H, W) int32 labels, 0 background, 1..N.
    """
    from scipy import ndimage as ndi
    from tqdm.auto import tqdm

    height, width = image.shape[:2]
    tiles = tile_grid((height, width), tile_size, margin, align)
    if len(tiles) == 1:
        labels = _check_tile_labels(predict_tile(image), (height, width)).astype(np.int32, copy=False)
        if stats is not None:
            stats.update(tiles=1, nuclei=len(np.unique(labels)) - (labels.min() == 0), duplicates_dropped=0)
            stats.update(shared_pixels=0, touching_cut_edge=0)
        return labels
    out = np.zeros((height, width), np.int32)
    next_id, duplicates, shared, cut = 1, 0, 0, 0
    for tile in tqdm(tiles, desc="tiles", unit="tile", disable=not progress, leave=False):
        (r0, c0), window = (tile.window[0].start, tile.window[1].start), tile.window
        labels = _check_tile_labels(predict_tile(image[window]), (window[0].stop - r0, window[1].stop - c0))
        boxes = ndi.find_objects(labels)
        # window edges that are cuts through the image (not the image border)
        cuts = (r0 > 0, c0 > 0, window[0].stop < height, window[1].stop < width)
        for label in owned_nuclei(labels, (r0, c0), tile.core):
            box = boxes[label - 1]
            mask = labels[box] == label
            target = out[box[0].start + r0 : box[0].stop + r0, box[1].start + c0 : box[1].stop + c0]
            taken = target[mask] != 0
            if taken.mean() > 0.5:
                duplicates += 1
                continue
            if taken.any():
                shared += 1
            target[mask & (target == 0)] = next_id
            next_id += 1
            touches = (
                box[0].start == 0,
                box[1].start == 0,
                box[0].stop == labels.shape[0],
                box[1].stop == labels.shape[1],
            )
            if any(c and t for c, t in zip(cuts, touches, strict=True)):
                cut += 1
    if stats is not None:
        stats.update(tiles=len(tiles), nuclei=next_id - 1, duplicates_dropped=duplicates)
        stats.update(shared_pixels=shared, touching_cut_edge=cut)
    if duplicates or shared:
        logger.info(
            "tiling: %d duplicate nuclei dropped, %d nuclei shared pixels at tile seams", duplicates, shared
        )
    if cut:
        logger.warning(
            "tiling: %d nuclei touch a tile's cut edge (larger than the margin of %d px?); they may be cut",
            cut,
            margin,
        )
    return out


def _check_tile_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != shape or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"predict_tile returned {labels.shape} {labels.dtype}; expected integer labels of shape {shape}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError("predict_tile returned negative labels")
    return labels
