"""The geometry of a CryoNuSeg tile, which the model, the masks and the pretraining windows all follow."""

from __future__ import annotations

TILE_SIZE = 512
"""Side of a CryoNuSeg tile in pixels (40x): the model's training tiles and its default inference tile."""
TILE_SHAPE = (TILE_SIZE, TILE_SIZE)
"""(height, width) of a tile, of each of its masks and of its ImageJ coordinate frame; the RGB image is
``TILE_SHAPE + (3,)``."""
