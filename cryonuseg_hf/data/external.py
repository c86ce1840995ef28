"""Other 40x H&E nuclei data with instance labels, read for pretraining (MoNuSeg 2018 training, NuInsSeg).

A pretraining folder holds ``images/<stem>.png`` (RGB), ``labels/<stem>.png`` (integer instance labels,
0 = background, same stem and size) and optionally ``ignore/<stem>.png`` (non-zero = ambiguous area, left out
of the loss), the layout of the external collection (``$CRYONUSEG_EXTERNAL``). None of it is a CryoNuSeg tile, so one model
pretrained on it can start every fold without breaking the fold protocol.

Images of any size of at least the window are cut into square windows that cover them (a 1000-pixel side gives
512-pixel windows at 0 and 488), so everything stacks into one array like the CryoNuSeg tiles and the same
training loop draws crops from it. Pixels under an ignore mask get class ``IGNORE_INDEX``.

Datasets differ in pixel size: NuInsSeg's nuclei cover about three times the pixels of CryoNuSeg's. A folder can
be resized by a factor before it is cut (:func:`size_matching_factor` measures one by matching median nucleus
areas), so the model learns nuclei at the size it will meet them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SIZE
from cryonuseg_hf.data.targets import IGNORE_INDEX, instances_to_classes

WINDOW = TILE_SIZE
"""Pretraining images are cut into windows of a CryoNuSeg tile's size, so they stack with the tiles."""
EXTERNAL_ENV = "CRYONUSEG_EXTERNAL"
PRETRAINING_FOLDERS = ("monuseg_train", "nuinsseg_human_spleen")
"""The folders of the external collection the shipped start point was pretrained on."""


def default_external() -> Path:
    """The external collection named by ``$CRYONUSEG_EXTERNAL``.

    Raises:
        FileNotFoundError: the variable is not set.
    """
    if os.environ.get(EXTERNAL_ENV):
        return Path(os.environ[EXTERNAL_ENV])
    raise FileNotFoundError(
        f"no external pretraining data given: set ${EXTERNAL_ENV} to the folder that holds monuseg_train/ etc."
    )


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
        records.append({"name": f"{folder.name}/{stem}", "image": image, "labels": label, "ignore": ignore})
    if problems:
        raise ValueError(f"{folder}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return records


def median_nucleus_area(labels: Iterable[np.ndarray]) -> float:
    """The median area in pixels of the nuclei of some instance label images (0 = background).

    >>> label = np.zeros((8, 8), int); label[:2, :2] = 1; label[4:, 4:] = 2; label[0, 7] = 3
    >>> median_nucleus_area([label])
    4.0
    """
    areas = [np.bincount(np.asarray(label).ravel())[1:] for label in labels]
    areas = np.concatenate(areas) if areas else np.zeros(0, int)
    areas = areas[areas > 0]
    if not len(areas):
        raise ValueError("no nuclei to measure: every label image is empty")
    return float(np.median(areas))


def size_matching_factor(area: float, target_area: float) -> float:
    """The linear resize factor that turns nuclei of median ``area`` into nuclei of median ``target_area``,
    rounded to 3 decimals (areas scale with its square).

    >>> size_matching_factor(675.0, 227.0)
    0.58
    """
    return round(math.sqrt(target_area / area), 3)


def _resized(record: dict[str, Any], factor: float) -> dict[str, Any]:
    """A record of :func:`read_folder` resized by ``factor``: the image with antialiasing, labels and ignore
    mask by nearest neighbour (so no label is invented)."""
    if factor == 1:
        return record
    from PIL import Image

    h, w = record["labels"].shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    image = np.asarray(Image.fromarray(record["image"]).resize(size, Image.Resampling.LANCZOS))
    labels = np.asarray(
        Image.fromarray(record["labels"].astype(np.int32)).resize(size, Image.Resampling.NEAREST)
    )
    ignore = record["ignore"]
    if ignore is not None:
        ignore = np.asarray(Image.fromarray(ignore).resize(size, Image.Resampling.NEAREST))
    return {**record, "image": image, "labels": labels, "ignore": ignore}


def load_pretraining_tiles(
    folders: Iterable[str | Path],
    boundary_width: int = 1,
    instances: bool = False,
    resize: Sequence[float] | None = None,
    match_area: float | None = None,
    centre_fraction: float = 0.0,
) -> dict[str, Any]:
    """Square windows of every image in ``folders`` with their class maps, ready for the training loop.

    Args:
        folders: folders as :func:`read_folder` reads them.
        boundary_width: of the boundary class, in pixels.
        instances: also return the windows' instance labels (4 bytes per pixel: about 160 MB for the MoNuSeg
            and NuInsSeg folders), which only contact weighting needs.
        resize: one linear factor per folder, applied to its images before they are cut (None: all 1). With
            every factor 1 the windows are 512x512 and stack with CryoNuSeg tiles; otherwise the window is the
            largest multiple of 32 (at most 512) that fits the smallest resized image.
        match_area: instead of ``resize``, measure each folder's factor from the images read here: its median
            nucleus area brought to this one (:func:`size_matching_factor`).
        centre_fraction: > 0 draws the centre class too (:func:`~cryonuseg_hf.data.targets.instances_to_classes`).

    Returns:
        ``{"names": [...], "images": (N, S, S, 3) uint8, "classes": (N, S, S) uint8,
        "sources": [{"folder", "images", "windows", "nuclei", "resize", "median_nucleus_px"}]}``, and
        ``"instances": (N, S, S) int32`` when asked for; ignored pixels have class ``IGNORE_INDEX``;
        ``median_nucleus_px`` is measured after resizing.
        The class maps are made on the whole image before cutting, so a nucleus cut by a window keeps its
        boundary ring where the whole image has one.

    Raises:
        ValueError: no folders, a factor per folder missing or not > 0, or an image smaller than 512 (32 when
            resized) pixels on a side.
    """
    folders = list(folders)
    if not folders:
        raise ValueError("no pretraining folders given")
    read = [read_folder(folder) for folder in folders]
    if match_area is not None:
        resize = [
            size_matching_factor(median_nucleus_area(r["labels"] for r in recs), match_area) for recs in read
        ]
    factors = [1.0] * len(folders) if resize is None else [float(f) for f in resize]
    if len(factors) != len(folders) or not all(math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(
            f"expected one resize factor > 0 per folder ({len(folders)}), got {list(resize or [])}"
        )
    folder_records = [
        [_resized(record, factor) for record in records]
        for records, factor in zip(read, factors, strict=True)
    ]
    smallest = min(min(r["labels"].shape) for records in folder_records for r in records)
    window = WINDOW if all(f == 1 for f in factors) else min(WINDOW, smallest // 32 * 32)
    names, images, classes, labels, sources = [], [], [], [], []
    for folder, factor, records in zip(folders, factors, folder_records, strict=True):
        windows = 0
        for record in records:
            if min(record["labels"].shape) < max(window, 32):
                raise ValueError(
                    f"{record['name']}: {record['labels'].shape} (resized by {factor}) is smaller than "
                    f"{window}x{window}"
                )
            full = instances_to_classes(record["labels"], boundary_width, centre_fraction)
            if record["ignore"] is not None:
                full[record["ignore"]] = IGNORE_INDEX
            h, w = full.shape
            for r in window_starts(h, window):
                for c in window_starts(w, window):
                    names.append(f"{record['name']}@{r},{c}")
                    images.append(record["image"][r : r + window, c : c + window])
                    classes.append(full[r : r + window, c : c + window])
                    if instances:
                        labels.append(record["labels"][r : r + window, c : c + window].astype(np.int32))
                    windows += 1
        sources.append(
            {
                "folder": str(folder),
                "images": len(records),
                "windows": windows,
                "nuclei": int(sum(len(np.unique(r["labels"])) - (r["labels"] == 0).any() for r in records)),
                "resize": factor,
                "median_nucleus_px": median_nucleus_area(r["labels"] for r in records),
            }
        )
    data = {"names": names, "images": np.stack(images), "classes": np.stack(classes), "sources": sources}
    if instances:
        data["instances"] = np.stack(labels)
    return data
