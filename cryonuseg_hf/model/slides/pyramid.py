"""Pyramidal TIFFs: a label image or an RGB image written the way slide readers expect one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PYRAMID_TILE = 256
"""Side of the square tiles of every level, in pixels."""


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
        side = PYRAMID_TILE * step
        for r in range(0, height, side):
            for c in range(0, width, side):
                tile = np.asarray(image[r : r + side : step, c : c + side : step], dtype)
                pad = ((0, PYRAMID_TILE - tile.shape[0]), (0, PYRAMID_TILE - tile.shape[1]))
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
                tile=(PYRAMID_TILE, PYRAMID_TILE),
                compression=compression,
                photometric="rgb" if rgb else "minisblack",
                subifds=len(steps) - 1 if index == 0 else None,
                subfiletype=1 if index else 0,
                **resolution,
            )
    return Path(path)
