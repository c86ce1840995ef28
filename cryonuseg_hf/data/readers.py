"""Readers of the released files, one per kind, each returning a checked array; errors name the file.

A released file is read here and nowhere else, so that every caller sees the same checks and messages.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.metadata import read_slide_metadata
from cryonuseg_hf.data.release import Release, ReleaseError
from cryonuseg_hf.data.rois import Nucleus, read_roi_set


def read_mask(path: str | Path) -> np.ndarray:
    """A released mask file: ``.tif`` label masks as uint16, ``.png`` binaries and maps as uint8, 2-D.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or not a single-channel 2-D image; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as error:  # decoders raise many types for corrupt files
        raise ValueError(f"{path}: unreadable mask image ({type(error).__name__}: {error})") from None
    if (
        array.ndim == 3
        and array.shape[2] in (3, 4)
        and all(np.array_equal(array[..., 0], array[..., i]) for i in range(1, 3))
    ):
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D single-channel mask, got shape {array.shape} {array.dtype}")
    return array


def read_tile_image(path: Path) -> np.ndarray:
    """A released tile as a checked 512x512x3 uint8 array; ``ValueError`` naming the file otherwise."""
    import tifffile

    try:
        image = tifffile.imread(path)
    except Exception as error:  # tifffile raises many types for corrupt files
        raise ValueError(f"{path}: unreadable TIFF ({type(error).__name__}: {error})") from None
    if image.size == 0:  # tifffile returns an empty array, with a logged warning, for some damaged files
        raise ValueError(f"{path}: unreadable TIFF (no image data)")
    if image.shape != (*TILE_SHAPE, 3) or image.dtype != np.uint8:
        raise ValueError(f"{path}: expected a 512x512 RGB uint8 image, got shape {image.shape} {image.dtype}")
    return image


def read_released_labels(path: Path) -> np.ndarray:
    """A released label image (``label masks modify`` / ``label masks``) as uint16, checked for size and type."""
    labels = read_mask(path)
    if labels.shape != TILE_SHAPE or labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"{path}: expected a 512x512 uint16 label image, got shape {labels.shape} {labels.dtype}"
        )
    return labels.astype(np.uint16, copy=False)


@dataclass(frozen=True)
class ReleasedMap:
    """An 8-bit released mask or map: its pixels, and the file's bytes when they can be stored as they are."""

    array: np.ndarray
    png: bytes | None
    """The released PNG, verbatim (its decoding checked); ``None`` for another format, stored re-encoded."""


def read_released_map(path: Path) -> ReleasedMap:
    """An 8-bit released mask or map (``mask binary``, ``distance maps``, ...), checked to be 512x512 uint8.

    A PNG is decoded once, which checks its CRCs (a truncated or damaged PNG fails here), and kept verbatim.
    """
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() != ".png":
        array = read_mask(path)
        if array.shape != TILE_SHAPE or array.dtype != np.uint8:
            raise ValueError(f"{path}: expected a 512x512 uint8 mask, got shape {array.shape} {array.dtype}")
        return ReleasedMap(array, None)
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode, size = image.mode, image.size
            array = np.asarray(image)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: unreadable PNG (not a PNG image)") from None
    except Exception as error:  # PIL raises many types for corrupt files
        raise ValueError(f"{path}: unreadable PNG ({type(error).__name__}: {error})") from None
    if size != TILE_SHAPE[::-1] or mode != "L":
        raise ValueError(
            f"{path}: expected a 512x512 8-bit grayscale PNG, got {size[0]}x{size[1]} mode {mode}"
        )
    return ReleasedMap(array, data)


def read_nuclei(path: Path) -> list[Nucleus]:
    """The ROI set of one tile, in file-name order (nucleus ``n`` has label ``n + 1``).

    Raises:
        ValueError: (``cryonuseg_hf.data.rois.RoiError``) the set is empty, not a zip, or holds an unreadable ROI;
            the message names the file and the member.
    """
    nuclei = read_roi_set(path)
    if not nuclei:  # read_roi_set refuses empty sets itself; this keeps the builder's promise explicit
        raise ValueError(f"{path}: the ROI set holds no ROIs")
    return nuclei


def read_slide_sheet(release: Release) -> dict[str, dict]:
    """The slide metadata of the release's ``metadata/Selected_WSIs.xlsx`` (required), per tile."""
    if release.metadata_xlsx is None:
        raise ReleaseError(release.root, [f"{release.root}: missing metadata/Selected_WSIs.xlsx"])
    return read_slide_metadata(release.metadata_xlsx)
