"""The fold protocol: leave-one-organ-out, defined here once and imported by everything else.

Fold ``k`` holds the three tiles of the ``k``-th organ in alphabetical order, so a model evaluated on
fold ``k`` has never seen a tile of that organ. Tile ids look like ``Human_Larynx_01``.

>>> fold_of("Human_Larynx_02")
1
>>> [organ_of(t) for t in tiles_of_fold(9)]
['ThyroidGland', 'ThyroidGland', 'ThyroidGland']
"""

from __future__ import annotations

import re

ORGANS: tuple[str, ...] = (
    "AdrenalGland",
    "Larynx",
    "LymphNodes",
    "Mediastinum",
    "Pancreas",
    "Pleura",
    "Skin",
    "Testes",
    "Thymus",
    "ThyroidGland",
)
N_FOLDS = len(ORGANS)
TILES_PER_ORGAN = 3
TILE_IDS: tuple[str, ...] = tuple(
    f"Human_{organ}_{i:02d}" for organ in ORGANS for i in range(1, TILES_PER_ORGAN + 1)
)

_TILE_ID = re.compile(r"^Human_(?P<organ>[A-Za-z]+)_(?P<index>\d{2})$")


def organ_of(tile_id: str) -> str:
    """The organ of a tile id, e.g. ``Human_Larynx_01`` -> ``Larynx``."""
    match = _TILE_ID.match(tile_id)
    if match is None or match["organ"] not in ORGANS:
        raise ValueError(
            f"{tile_id!r} is not a CryoNuSeg tile id: expected Human_<Organ>_<NN> with Organ one of {ORGANS}"
        )
    return match["organ"]


def fold_of(tile_id: str) -> int:
    """The fold (0..9) that holds ``tile_id`` as its test set."""
    return ORGANS.index(organ_of(tile_id))


def tiles_of_fold(fold: int) -> list[str]:
    """The three tile ids held out in ``fold``."""
    if not 0 <= fold < N_FOLDS:
        raise ValueError(f"fold must be in 0..{N_FOLDS - 1}, got {fold}")
    return [t for t in TILE_IDS if fold_of(t) == fold]


def train_tiles(fold: int) -> list[str]:
    """The 27 tile ids a model for ``fold`` may train on (every tile of every other organ)."""
    held_out = set(tiles_of_fold(fold))
    return [t for t in TILE_IDS if t not in held_out]
