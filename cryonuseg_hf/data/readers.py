"""Readers of the released files, one per kind, each returning a checked array, with errors that name the file;
and the readers of everything a build needs: :func:`read_tile` (every file of one tile) and :func:`read_release`
(every file of a release).

A released file is read here and nowhere else, so that every caller sees the same checks and messages. The check
(:mod:`cryonuseg_hf.data.release_checks`) and the rows (:mod:`cryonuseg_hf.data.rows`) both work on what these
return, so a build decodes each file once. A bad file does not stop them: its problem is listed, so that the
check can report every problem of a release together.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.folds import TILE_IDS
from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.metadata import read_slide_metadata
from cryonuseg_hf.data.release import RELEASED_VARIANTS, Release, ReleaseError
from cryonuseg_hf.data.rois import Nucleus, read_roi_set

MAX_VALUES_PER_TILE_PIXEL = 4
"""A header may declare a few values per tile pixel (channels, planes); more is not one tile's image."""


class HeaderTooLarge(ValueError):
    """A header that declares far more than a tile: the message is the user's, not a decoder's failure."""


def check_declared(
    path: Path,
    declared: tuple[int, ...],
    shape: tuple[int, int] = TILE_SHAPE,
    advice: str = "the file is damaged or not one of the release's",
) -> None:
    """Refuse, before decoding, a file whose header declares far more values than a tile of ``shape`` holds (a
    small damaged file can claim a huge image); a few channels or planes are left to the checks after decoding.

    Raises:
        HeaderTooLarge: naming the file, the declared shape and ``advice``.
    """
    if float(np.prod(declared, dtype=np.float64)) > MAX_VALUES_PER_TILE_PIXEL * shape[0] * shape[1]:
        raise HeaderTooLarge(
            f"{path}: its header declares an image of shape {tuple(declared)}, far larger than the "
            f"{shape[0]}x{shape[1]} tile; {advice}"
        )


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        if not tiff.series:
            return np.empty((0,), np.uint8)
        check_declared(path, tuple(tiff.series[0].shape))
        return tiff.asarray()


def read_mask(path: str | Path) -> np.ndarray:
    """A released mask file: ``.tif`` label masks as uint16, ``.png`` binaries and maps as uint8, 2-D.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or not a single-channel 2-D image; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    if path.suffix.lower() in (".tif", ".tiff"):
        reader = _read_tiff
    else:

        def reader(path: Path) -> np.ndarray:
            from PIL import Image

            with Image.open(path) as image:
                check_declared(path, (image.height, image.width, len(image.getbands())))
                return np.asarray(image)

    try:
        array = reader(path)
    except HeaderTooLarge:
        raise
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
    try:
        image = _read_tiff(path)
    except HeaderTooLarge:
        raise
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


LABEL_COLUMNS = ("label_masks_modify", "label_masks")
"""Released variants that are uint16 label images (:func:`read_released_labels`); the others are 8-bit."""


@dataclass(frozen=True)
class ReleasedMask:
    """A released mask of one tile: its pixels, and the file's bytes when they can be stored as they are."""

    array: np.ndarray
    png: bytes | None = None
    """The released 8-bit PNG, verbatim (its decoding checked); ``None`` for a label image or another format."""


def read_released_map(path: Path) -> ReleasedMask:
    """An 8-bit released mask or map (``mask binary``, ``distance maps``, ...), checked to be 512x512 uint8.

    A PNG is decoded once, which checks its CRCs (a truncated or damaged PNG fails here), and kept verbatim.
    """
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() != ".png":
        array = read_mask(path)
        if array.shape != TILE_SHAPE or array.dtype != np.uint8:
            raise ValueError(f"{path}: expected a 512x512 uint8 mask, got shape {array.shape} {array.dtype}")
        return ReleasedMask(array)
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode, size = image.mode, image.size
            check_declared(path, (image.height, image.width, len(image.getbands())))
            array = np.asarray(image)
    except HeaderTooLarge:
        raise
    except UnidentifiedImageError:
        raise ValueError(f"{path}: unreadable PNG (not a PNG image)") from None
    except Exception as error:  # PIL raises many types for corrupt files
        raise ValueError(f"{path}: unreadable PNG ({type(error).__name__}: {error})") from None
    if size != TILE_SHAPE[::-1] or mode != "L":
        raise ValueError(
            f"{path}: expected a 512x512 8-bit grayscale PNG, got {size[0]}x{size[1]} mode {mode}"
        )
    return ReleasedMask(array, data)


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


@dataclass
class TileContents:
    """Everything read for one tile; a file that did not read is absent (:func:`read_tile` lists its problem)."""

    tile: str
    image: np.ndarray | None = None
    """512x512x3 uint8 (:func:`read_tile_image`)."""
    nuclei: dict[str, list[Nucleus]] = field(default_factory=dict)
    """mark-up -> the ROIs of its ROI set (:func:`read_nuclei`)."""
    masks: dict[str, dict[str, ReleasedMask]] = field(default_factory=dict)
    """mark-up -> released variant column (``RELEASED_VARIANTS``) -> mask."""


@dataclass
class ReleaseContents:
    """Every file of a release that a build reads, read once, and the problems of the files that did not read."""

    release: Release
    markups: tuple[str, ...]
    """The mark-ups read: those asked for that have all their released mask folders."""
    metadata: dict[str, dict] | None
    """tile id -> slide metadata (:func:`read_slide_sheet`); ``None`` when the sheet did not read."""
    tiles: dict[str, TileContents]
    """tile id -> its files, in ``TILE_IDS`` order."""
    problems: list[str]
    """One line per file that is missing or did not read, naming the file."""


def read_release(release: Release, markups: tuple[str, ...] | None = None) -> ReleaseContents:
    """Read every file of ``markups`` once: tile images, ROI sets, released masks and the slide sheet.

    Nothing is raised for a bad file: its problem is listed, and the check
    (:func:`cryonuseg_hf.data.release_checks.check_contents`) reports every problem together.

    Args:
        release: from :func:`cryonuseg_hf.data.release.open_release`.
        markups: the mark-ups to read (default: all in ``release``).
    """
    complete, problems = complete_markups(release, markups)
    metadata = read_or_note(problems, read_slide_sheet, release)
    tiles = {}
    for tile in TILE_IDS:
        tiles[tile], found = read_tile(release, tile, complete)
        problems += found
    return ReleaseContents(release, complete, metadata, tiles, problems)


def complete_markups(
    release: Release, markups: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], list[str]]:
    """The mark-ups of ``markups`` (default: all in ``release``) that have every released mask folder, and a
    problem for each that lacks some."""
    complete, problems = [], []
    for markup in tuple(release.markups) if markups is None else markups:
        files = release.markups[markup]
        missing = [RELEASED_VARIANTS[c] for c in RELEASED_VARIANTS if c not in files.variants]
        if missing:
            problems.append(
                f"{files.folder}: missing released mask folder(s): {', '.join(repr(m) for m in missing)}"
            )
        else:
            complete.append(markup)
    return tuple(complete), problems


def read_tile(release: Release, tile: str, markups: tuple[str, ...]) -> tuple[TileContents, list[str]]:
    """Every file of one tile, read once: its image and, per mark-up, its ROI set and released masks.

    Returns:
        What read, and one problem per file that did not (naming the file).
    """
    problems: list[str] = []
    contents = TileContents(tile, image=read_or_note(problems, read_tile_image, release.images[tile]))
    for markup in markups:
        files = release.markups[markup]
        nuclei = read_or_note(problems, read_nuclei, files.rois[tile])
        if nuclei is not None:
            contents.nuclei[markup] = nuclei
        masks = {
            column: read_or_note(problems, _read_variant, column, paths[tile])
            for column, paths in files.variants.items()
        }
        contents.masks[markup] = {column: mask for column, mask in masks.items() if mask is not None}
    return contents, problems


def read_or_note(problems: list[str], reader: Callable, *args):
    """``reader(*args)``, or ``None`` with the error, which names the file, added to ``problems``."""
    try:
        return reader(*args)
    except (ValueError, OSError) as error:  # RoiError and ReleaseError are ValueErrors
        problems.extend(error.problems if isinstance(error, ReleaseError) else [str(error)])
        return None


def _read_variant(column: str, path: Path) -> ReleasedMask:
    """A released mask of variant ``column``: a label image, or an 8-bit mask or map."""
    return ReleasedMask(read_released_labels(path)) if column in LABEL_COLUMNS else read_released_map(path)
