"""Reading a raw CryoNuSeg release in its Kaggle layout, from a folder or from the Kaggle zip.

The release is messy in known ways, and this module is the one place that knows them:

- the round-2 and Annotator-2 mark-ups sit in a folder nested inside a folder of the same name;
- the ROI folder is spelled ``Imagj_zips``; the ROI zips are named ``<tile>_RoiSet.zip``, ``<tile>RoiSet.zip``
  or ``<tile>.zip``, and some round-2 zips spell the organ ``ThyreoidGland``;
- some copies name folders with underscores (``tissue_images``, ``label_masks_modify``) instead of spaces,
  and some hold the ROIs unzipped, one folder of ``.roi`` files per tile.

:func:`open_release` finds every file, checks that the release is complete (30 tiles, one ROI set per tile
per mark-up) and returns a :class:`Release` of plain paths. Nothing here decodes pixels: the files are read by
:mod:`cryonuseg_hf.data.readers` and checked to belong together by :mod:`cryonuseg_hf.data.release_checks`
(what ``cryonuseg-hf check`` runs).
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from cryonuseg_hf.core.files import free_bytes, staged_folder
from cryonuseg_hf.core.folds import TILE_IDS

DATA_ENV = "CRYONUSEG_DATA"
"""Environment variable naming a raw release folder or zip; tests and benchmarks read it."""

MARKUPS: tuple[str, ...] = ("annotator1_round1", "annotator1_round2", "annotator2")
MARKUP_FOLDERS: dict[str, str] = {
    "annotator1_round1": "Annotator 1 (biologist)",
    "annotator1_round2": "Annotator 1 (biologist second round of manual marks up)",
    "annotator2": "Annotator 2 (bioinformatician)",
}
DEFAULT_MARKUP = "annotator1_round2"

# Released mask variants: column name -> folder name in the release.
RELEASED_VARIANTS: dict[str, str] = {
    "label_masks_modify": "label masks modify",
    "label_masks": "label masks",
    "mask_binary": "mask binary",
    "mask_binary_without_border": "mask binary without border",
    "mask_binary_without_border_erode": "mask binary without border erode",
    "distance_maps": "distance maps",
    "weighted_maps": "weighted_maps",
    "weighted_maps_erode": "weighted_maps_erode",
}
ROI_FOLDER = "Imagj_zips"
IMAGE_FOLDER = "tissue images"
METADATA_XLSX = "metadata/Selected_WSIs.xlsx"

_ROI_ZIP_NAME = re.compile(r"^(?P<tile>Human_[A-Za-z]+_\d{2})(?:_?RoiSet)?\.zip$")
_SPELLING_FIXES = {"ThyreoidGland": "ThyroidGland"}


class ReleaseError(ValueError):
    """A release that is incomplete or malformed; the message lists every problem found."""

    def __init__(self, root: Path, problems: list[str]):
        self.root = root
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{root}: not a complete CryoNuSeg release ({len(problems)} problem(s)):\n{listing}\n"
            "Replace each file named above with a good copy of the release (its SHA256SUMS lists them), then run "
            "`cryonuseg-hf check` again."
        )


@dataclass(frozen=True)
class MarkupFiles:
    """The files of one mark-up: its ROI set per tile and its released mask variants per tile."""

    name: str
    folder: Path
    rois: dict[str, Path]
    """tile id -> a ``.zip`` RoiSet, or a folder of ``.roi`` files."""
    variants: dict[str, dict[str, Path]] = field(default_factory=dict)
    """variant column name (see ``RELEASED_VARIANTS``) -> tile id -> file."""


@dataclass(frozen=True)
class Release:
    """Paths of a complete raw release; ``root`` is the folder that holds ``tissue images``."""

    root: Path
    images: dict[str, Path]
    markups: dict[str, MarkupFiles]
    metadata_xlsx: Path | None

    @property
    def tile_ids(self) -> list[str]:
        return list(self.images)


def default_source() -> Path:
    """The release named by ``$CRYONUSEG_DATA``.

    Raises:
        FileNotFoundError: the variable is not set; the message says how to name a release or fetch one.
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    raise FileNotFoundError(
        f"no CryoNuSeg release given: pass --source FOLDER_OR_ZIP or set ${DATA_ENV}; "
        "`cryonuseg-hf download` fetches the release from Kaggle"
    )


def _canonical(name: str) -> str:
    """Folder names compared without case, underscores or repeated spaces."""
    return " ".join(name.replace("_", " ").lower().split())


def _child(folder: Path, wanted: str) -> Path | None:
    """The child of ``folder`` whose canonical name equals that of ``wanted``, if any."""
    if not folder.is_dir():
        return None
    matches = sorted(p for p in folder.iterdir() if _canonical(p.name) == _canonical(wanted))
    return matches[0] if matches else None


def _tile_from_stem(stem: str) -> str:
    for wrong, right in _SPELLING_FIXES.items():
        stem = stem.replace(wrong, right)
    return stem


def _markup_folder(root: Path, markup: str) -> Path | None:
    """The innermost folder of a mark-up: Kaggle nests some inside a twin of the same name."""
    folder = _child(root, MARKUP_FOLDERS[markup])
    while folder is not None:
        nested = _child(folder, MARKUP_FOLDERS[markup])
        if nested is None or _child(folder, ROI_FOLDER) is not None:
            return folder
        folder = nested
    return None


def _roi_sets(folder: Path, problems: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and any(entry.glob("*.roi")):
            tile = _tile_from_stem(entry.name.removesuffix("RoiSet").removesuffix("_"))
        elif entry.is_file() and (m := _ROI_ZIP_NAME.match(_tile_from_stem(entry.name))):
            tile = m["tile"]
        else:
            continue
        if tile in found:
            problems.append(f"{entry}: a second ROI set for {tile} (first: {found[tile].name})")
        else:
            found[tile] = entry
    return found


def _tile_files(folder: Path, suffixes: tuple[str, ...], problems: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.suffix.lower() not in suffixes:
            continue
        tile = _tile_from_stem(entry.stem)
        if tile in found:
            problems.append(f"{entry}: duplicate tile name {tile} (also {found[tile].name})")
        else:
            found[tile] = entry
    return found


def _check_tiles(where: Path, found: dict[str, Path], what: str, problems: list[str]) -> None:
    missing = [t for t in TILE_IDS if t not in found]
    unexpected = [t for t in found if t not in TILE_IDS]
    if missing:
        problems.append(
            f"{where}: expected {what} for all 30 tiles, missing {len(missing)}: {', '.join(missing)}"
        )
    if unexpected:
        problems.append(
            f"{where}: unexpected {what} not named after a CryoNuSeg tile: {', '.join(unexpected)}"
        )


def _find_root(path: Path) -> Path:
    """The folder holding ``tissue images``: ``path`` itself or a folder up to two levels below it."""
    candidates = [path, *sorted(p for p in path.glob("*") if p.is_dir())]
    candidates += sorted(p for p in path.glob("*/*") if p.is_dir())
    for candidate in candidates:
        if _child(candidate, IMAGE_FOLDER) is not None:
            return candidate
    raise ReleaseError(path, [f"{path}: no '{IMAGE_FOLDER}' folder here or up to two levels below"])


def open_release(source: str | Path, markups: tuple[str, ...] = MARKUPS) -> Release:
    """Find and check every file of a raw release.

    Args:
        source: the release folder, or the Kaggle zip (extracted once into a cache folder; see
            :func:`extract_zip`).
        markups: the mark-ups that must be present.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ReleaseError: files are missing, duplicated or misnamed; the message lists each one.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(
            f"{source}: no such release folder or zip; pass --source <folder or zip> or set ${DATA_ENV}"
        )
    if source.is_file():
        source = extract_zip(source)
    root = _find_root(source)
    problems: list[str] = []

    images_dir = _child(root, IMAGE_FOLDER)
    assert images_dir is not None  # _find_root guarantees it
    images = _tile_files(images_dir, (".tif", ".tiff"), problems)
    _check_tiles(images_dir, images, "a .tif image", problems)

    found_markups: dict[str, MarkupFiles] = {}
    for markup in markups:
        folder = _markup_folder(root, markup)
        if folder is None:
            problems.append(f"{root}: missing annotation folder '{MARKUP_FOLDERS[markup]}' ({markup})")
            continue
        roi_dir = _child(folder, ROI_FOLDER)
        if roi_dir is None:
            problems.append(f"{folder}: missing ROI folder '{ROI_FOLDER}'")
            continue
        rois = _roi_sets(roi_dir, problems)
        _check_tiles(roi_dir, rois, "an ImageJ ROI set", problems)
        variants = {}
        for column, name in RELEASED_VARIANTS.items():
            variant_dir = _child(folder, name)
            if variant_dir is not None:
                variants[column] = _tile_files(variant_dir, (".tif", ".tiff", ".png"), problems)
                _check_tiles(variant_dir, variants[column], f"a '{name}' file", problems)
        found_markups[markup] = MarkupFiles(markup, folder, rois, variants)

    xlsx = root / METADATA_XLSX
    if problems:
        raise ReleaseError(root, problems)
    return Release(
        root=root,
        images={t: images[t] for t in TILE_IDS},
        markups=found_markups,
        metadata_xlsx=xlsx if xlsx.is_file() else None,
    )


def extract_zip(archive: Path, cache_dir: Path | None = None) -> Path:
    """Extract the Kaggle zip into ``cache_dir`` (default: a folder beside the zip's name in the temp dir).

    Every member path is checked before anything is written: a member that would land outside the target
    (absolute paths, ``..``) raises ``ReleaseError`` and nothing is extracted. The extraction is put in place
    all-or-nothing (:func:`cryonuseg_hf.core.files.staged_folder`), so a finished one is reused.
    """
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as error:
        raise ReleaseError(archive, [f"{archive}: not a readable zip file ({error})"]) from None
    with zf:
        stat = archive.stat()
        base = cache_dir or Path(tempfile.gettempdir()) / "cryonuseg_hf-releases"
        target = base / f"{archive.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if (target / ".complete").exists():
            return target
        escaping = [
            m.filename
            for m in zf.infolist()
            if Path(m.filename).is_absolute() or ".." in Path(m.filename).parts
        ]
        if escaping:
            raise ReleaseError(
                archive, [f"{archive}: member paths escape the extraction folder: {', '.join(escaping[:5])}"]
            )
        needed, free = sum(m.file_size for m in zf.infolist()), free_bytes(base)
        if free < needed:
            raise OSError(
                f"{archive}: extracting it needs {needed / 1e6:.0f} MB in {base} and that disk has "
                f"{free / 1e6:.0f} MB free; extract the zip yourself where there is room and pass that folder "
                "as --source"
            )
        with staged_folder(target) as staging:
            zf.extractall(staging)
            (staging / ".complete").touch()
    return target
