"""The 30 CryoNuSeg tiles and their instance masks as arrays, in fold order, and which of them a fold may use.

By default they come from the project's ``datasets`` build (the ``CryoNuSeg`` builder run on the raw release,
the same rows ``load_dataset`` gives), so training consumes what the project publishes. A folder written by
``cryonuseg-hf build`` is read with ``load_dataset``; a ``.npz`` from :func:`pack_tiles` carries them to a GPU.

A held-out tile can never reach training: :func:`training_indices` raises if one would, and every fold calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.folds import TILE_IDS, tiles_of_fold, train_tiles
from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.release import MARKUPS


def load_tiles(data: str | Path | None = None, markups: tuple[str, ...] = MARKUPS) -> dict[str, Any]:
    """All 30 tiles: ``{"tile_ids", "images": (30, 512, 512, 3) uint8, "masks": {markup: (30, 512, 512) uint16}}``.

    Args:
        data: a raw release folder or zip, turned into the project's ``datasets`` build first; a folder written
            by ``cryonuseg-hf build`` (read with ``load_dataset``); or a ``.npz`` written by :func:`pack_tiles`.
            None = the default raw release (``$CRYONUSEG_DATA``).
        markups: the mark-ups whose instance masks to load.
    """
    from cryonuseg_hf.data.release import default_source

    path = Path(data) if data is not None else default_source()
    if path.suffix == ".npz":
        return _load_packed(path, markups)
    if (path / "README.md").is_file() and any((path / m).is_dir() for m in MARKUPS):
        return _load_built(path, markups)
    return _load_release(path, markups)


def _load_release(source: Path, markups: tuple[str, ...]) -> dict[str, Any]:
    """The rows of the ``datasets`` build of a raw release, made by the package's ``CryoNuSeg`` builder into a
    temporary folder (never a cache that could outlive a change to the files)."""
    import tempfile

    import datasets

    from cryonuseg_hf.data.builder import CryoNuSeg
    from cryonuseg_hf.data.release import open_release
    from cryonuseg_hf.data.release_checks import check_release

    check_release(open_release(source))  # a mask of another tile would train the model silently wrong
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="cryonuseg-build-") as cache:
            configs = {}
            for markup in markups:
                builder = CryoNuSeg(config_name=markup, data_dir=str(source), cache_dir=cache)
                builder.download_and_prepare()
                configs[markup] = builder.as_dataset(split="train")
            return _from_rows(configs, source)
    finally:
        if bars:
            datasets.enable_progress_bars()


def _load_built(folder: Path, markups: tuple[str, ...]) -> dict[str, Any]:
    """The rows of a ``cryonuseg-hf build`` folder, each config's files checked to hold that mark-up first."""
    from datasets import load_dataset

    from cryonuseg_hf.data.parquet import check_build

    check_build(folder, markups)  # a file of another mark-up would train on the wrong targets
    configs = {m: load_dataset(str(folder), m, split="train") for m in markups}
    return _from_rows(configs, folder)


def _from_rows(configs: dict[str, Any], where: Path) -> dict[str, Any]:
    """Arrays in fold order from one ``datasets.Dataset`` per mark-up (columns ``tile_id``, ``image``,
    ``instance_mask``)."""
    images, masks = None, {}
    for markup, dataset in configs.items():
        rows = dataset.select_columns(["tile_id", "image", "instance_mask"])
        by_tile = {row["tile_id"]: row for row in rows}
        missing = sorted(set(TILE_IDS) - set(by_tile))
        if missing:
            raise ValueError(f"{where}: config {markup!r} lacks tiles {missing}")
        masks[markup] = np.stack([np.asarray(by_tile[t]["instance_mask"], dtype=np.uint16) for t in TILE_IDS])
        if images is None:
            images = np.stack([np.asarray(by_tile[t]["image"].convert("RGB")) for t in TILE_IDS])
    return _checked({"tile_ids": list(TILE_IDS), "images": images, "masks": masks}, where)


def _load_packed(path: Path, markups: tuple[str, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no packed tiles; write them with `cryonuseg-hf train --pack {path}`"
        )
    with np.load(path) as npz:
        missing = [m for m in markups if f"mask_{m}" not in npz]
        if missing:
            raise ValueError(f"{path}: packed file lacks the mark-ups {missing}")
        tiles = {
            "tile_ids": [str(t) for t in npz["tile_ids"]],
            "images": npz["images"],
            "masks": {m: npz[f"mask_{m}"] for m in markups},
        }
    return _checked(tiles, path)


def _checked(tiles: dict[str, Any], where: Path) -> dict[str, Any]:
    if tiles["tile_ids"] != list(TILE_IDS):
        raise ValueError(
            f"{where}: expected the 30 CryoNuSeg tiles in fold order, got {tiles['tile_ids'][:3]}..."
        )
    if tiles["images"].shape != (len(TILE_IDS), *TILE_SHAPE, 3) or tiles["images"].dtype != np.uint8:
        raise ValueError(f"{where}: expected 30 RGB uint8 512x512 images, got {tiles['images'].shape}")
    for markup, masks in tiles["masks"].items():
        if masks.shape != (len(TILE_IDS), *TILE_SHAPE):
            raise ValueError(f"{where}: {markup} masks have shape {masks.shape}, expected (30, 512, 512)")
    return tiles


def pack_tiles(tiles: dict[str, Any], path: str | Path) -> Path:
    """Tiles and every loaded mark-up in one compressed ``.npz`` (to carry to a GPU machine; keep it git-ignored)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"mask_{m}": masks.astype(np.uint16) for m, masks in tiles["masks"].items()}
    np.savez_compressed(path, tile_ids=np.array(tiles["tile_ids"]), images=tiles["images"], **arrays)
    return path


def training_indices(fold: int | None) -> list[int]:
    """Indices (into ``TILE_IDS``) a model for ``fold`` may train on; ``None`` = the final model, all 30.

    Raises:
        RuntimeError: if a held-out tile of ``fold`` would reach training (the fold protocol is broken).
    """
    if fold is None:
        return list(range(len(TILE_IDS)))
    allowed = train_tiles(fold)
    leaked = set(allowed) & set(tiles_of_fold(fold))
    if leaked or len(allowed) != len(TILE_IDS) - 3:
        raise RuntimeError(f"fold {fold}: held-out tiles {sorted(leaked)} would reach training")
    return [TILE_IDS.index(t) for t in allowed]


def tuning_tiles(indices: list[int], n: int) -> list[int]:
    """``n`` of the training indices for tuning post-processing: tile _01 of each organ, then _02, then _03."""
    ordered = sorted(indices, key=lambda i: (TILE_IDS[i][-2:], i))
    return ordered if n <= 0 else ordered[:n]
