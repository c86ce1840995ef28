"""Other 40x H&E nuclei data with instance labels, read for pretraining (MoNuSeg 2018 training, NuInsSeg).

A pretraining folder holds ``images/<stem>.png`` (RGB), ``labels/<stem>.png`` (integer instance labels,
0 = background, same stem and size) and optionally ``ignore/<stem>.png`` (non-zero = ambiguous area, left out
of the loss), the layout of ``../shared/datasets/external/*``. None of it is a CryoNuSeg tile, so one model
pretrained on it can start every fold without breaking the fold protocol.

Images of any size of at least 512x512 are cut into 512x512 windows that cover them (a 1000-pixel side gives
windows at 0 and 488), so everything stacks into one array like the CryoNuSeg tiles and the same training loop
draws crops from it. Pixels under an ignore mask get class ``IGNORE_INDEX``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.paths import SHARED_DIR
from cryonuseg_hf.core.tiles import TILE_SIZE
from cryonuseg_hf.data.targets import IGNORE_INDEX, instances_to_classes

WINDOW = TILE_SIZE
"""Pretraining images are cut into windows of a CryoNuSeg tile's size, so they stack with the tiles."""
EXTERNAL_ENV = "CRYONUSEG_EXTERNAL"
PRETRAINING_FOLDERS = ("monuseg_train", "nuinsseg_human_spleen")
"""The folders of the external collection the shipped start point was pretrained on."""


def default_external() -> Path:
    """The external collection named by ``$CRYONUSEG_EXTERNAL``, else the copy beside this repository's checkout."""
    if EXTERNAL_ENV in os.environ:
        return Path(os.environ[EXTERNAL_ENV])
    return SHARED_DIR / "datasets" / "external"


def window_starts(length: int, window: int = WINDOW) -> list[int]:
    """Starts of the fewest ``window``-long windows that cover ``length`` pixels, spread evenly.

    >>> window_starts(1000), window_starts(512), window_starts(1100)
    ([0, 488], [0], [0, 294, 588])
    """
    if length < window:
        raise ValueError(f"side {length} is shorter than the {window}-pixel window")
    n = -(-length // window)
    if n == 1:
        return [0]
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


def _read(path: Path, kind: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if kind == "image":
                if image.mode != "RGB":
                    raise ValueError(
                        f"{path}: image mode {image.mode} is not RGB; save the image as 8-bit RGB"
                    )
                return np.asarray(image)
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: cannot read this {kind} file ({error})") from error
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise ValueError(
            f"{path}: a {kind} must be a single-channel integer image, got {array.shape} {array.dtype}"
        )
    return array


def read_folder(folder: str | Path) -> list[dict[str, Any]]:
    """Every image of one pretraining folder: ``[{"name", "image", "labels", "ignore"}]`` (ignore may be None).

    Raises:
        FileNotFoundError: the folder or its ``images``/``labels`` subfolders are missing or empty.
        ValueError: an image without labels (or labels without an image), sizes that differ, unreadable or
            non-integer label files; every problem is listed with its file.
    """
    folder = Path(folder)
    images_dir, labels_dir, ignore_dir = folder / "images", folder / "labels", folder / "ignore"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise FileNotFoundError(f"{folder}: expected images/ and labels/ subfolders of PNG files")
    images = {p.stem: p for p in sorted(images_dir.glob("*.png"))}
    labels = {p.stem: p for p in sorted(labels_dir.glob("*.png"))}
    if not images:
        raise FileNotFoundError(f"{images_dir}: no .png images")
    problems = [
        f"{images[s]}: no label file {labels_dir / (s + '.png')}" for s in sorted(set(images) - set(labels))
    ]
    problems += [
        f"{labels[s]}: no image {images_dir / (s + '.png')}" for s in sorted(set(labels) - set(images))
    ]
    records = []
    for stem in sorted(set(images) & set(labels)):
        try:
            image, label = _read(images[stem], "image"), _read(labels[stem], "label")
            ignore_path = ignore_dir / f"{stem}.png"
            ignore = _read(ignore_path, "ignore mask") > 0 if ignore_path.is_file() else None
        except ValueError as error:
            problems.append(str(error))
            continue
        if label.shape != image.shape[:2] or (ignore is not None and ignore.shape != image.shape[:2]):
            problems.append(
                f"{labels[stem]}: label {label.shape} / ignore {None if ignore is None else ignore.shape} "
                f"do not match the image {image.shape[:2]}"
            )
            continue
        if min(image.shape[:2]) < WINDOW:
            problems.append(f"{images[stem]}: {image.shape[:2]} is smaller than {WINDOW}x{WINDOW}")
            continue
        records.append({"name": f"{folder.name}/{stem}", "image": image, "labels": label, "ignore": ignore})
    if problems:
        raise ValueError(f"{folder}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return records


def load_pretraining_tiles(
    folders: Iterable[str | Path], boundary_width: int = 1, instances: bool = False
) -> dict[str, Any]:
    """512x512 windows of every image in ``folders`` with their class maps, ready for the training loop.

    Args:
        folders: folders as :func:`read_folder` reads them.
        boundary_width: of the boundary class, in pixels.
        instances: also return the windows' instance labels (4 bytes per pixel: about 160 MB for the MoNuSeg
            and NuInsSeg folders), which only contact weighting needs.

    Returns:
        ``{"names": [...], "images": (N, 512, 512, 3) uint8, "classes": (N, 512, 512) uint8,
        "sources": [{"folder", "images", "windows", "nuclei"}]}``, and ``"instances": (N, 512, 512) int32`` when
        asked for; ignored pixels have class ``IGNORE_INDEX``.
        The class maps are made on the whole image before cutting, so a nucleus cut by a window keeps its
        boundary ring where the whole image has one.
    """
    names, images, classes, labels, sources = [], [], [], [], []
    for folder in folders:
        records = read_folder(folder)
        windows = 0
        for record in records:
            full = instances_to_classes(record["labels"], boundary_width)
            if record["ignore"] is not None:
                full[record["ignore"]] = IGNORE_INDEX
            h, w = full.shape
            for r in window_starts(h):
                for c in window_starts(w):
                    names.append(f"{record['name']}@{r},{c}")
                    images.append(record["image"][r : r + WINDOW, c : c + WINDOW])
                    classes.append(full[r : r + WINDOW, c : c + WINDOW])
                    if instances:
                        labels.append(record["labels"][r : r + WINDOW, c : c + WINDOW].astype(np.int32))
                    windows += 1
        sources.append(
            {
                "folder": str(folder),
                "images": len(records),
                "windows": windows,
                "nuclei": int(sum(len(np.unique(r["labels"])) - (r["labels"] == 0).any() for r in records)),
            }
        )
    if not names:
        raise ValueError("no pretraining folders given")
    data = {"names": names, "images": np.stack(images), "classes": np.stack(classes), "sources": sources}
    if instances:
        data["instances"] = np.stack(labels)
    return data
