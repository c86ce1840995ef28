"""ImageJ ROI sets: the annotators' polygons, read and written with ``roifile``.

Every CryoNuSeg nucleus is an ImageJ ROI, one ``.roi`` file per nucleus, zipped per tile (a "RoiSet"). This
module turns a RoiSet into a list of :class:`Nucleus` polygons and back. Coordinates stay exactly as ImageJ
stores them (float32 sub-pixel vertices, x to the right and y down, 0 at the top-left corner of the top-left
pixel); the conversion to pixels happens in :mod:`cryonuseg_hf.data.masks`, in one place, and
:mod:`cryonuseg_hf.data.outlines` writes predicted nuclei in the same frame.

Order matters: the authors' MATLAB generator unzips a set and labels nucleus ``n`` with the ``n``-th ``.roi``
file of a directory listing, i.e. sorted by file name. :func:`read_roi_set` returns the nuclei in that order,
so ``label = index + 1`` reproduces the released label values.

Nothing is dropped: a ROI that cannot be a nucleus (a line, a point) or cannot be decoded raises
:class:`RoiError` naming the file and the member; a ROI that is degenerate (fewer than 3 distinct vertices,
zero area) or reaches outside the tile is kept and reported by
:func:`cryonuseg_hf.data.roi_checks.check_nuclei`.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

POLYGON_TYPES = ("polygon", "freehand", "traced")
"""ROI types stored as vertex lists; ovals and rectangles are converted to polygons on reading."""


class RoiError(ValueError):
    """A ROI set that cannot be read: not a zip, no ROI in it, or a member that is not a usable ImageJ ROI."""


@dataclass(frozen=True, eq=False)
class Nucleus:
    """One annotated nucleus: a closed polygon in ImageJ coordinates.

    Attributes:
        name: the ROI's file name without ``.roi`` (unique within a set; ImageJ names them ``yyyy-xxxx``).
        x: vertex x coordinates (columns), float32, as ImageJ stores them.
        y: vertex y coordinates (rows), float32.
        roi_type: the ImageJ type it was read from: ``polygon``, ``freehand``, ``traced``, ``oval`` or
            ``rectangle`` (the last two already converted to polygons).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    roi_type: str


@dataclass(frozen=True)
class RoiFinding:
    """A ROI that needs a word in the report: what is odd about it and what was done with it."""

    source: str
    name: str
    problem: str
    action: str

    def __str__(self) -> str:
        return f"{self.source}: ROI {self.name}: {self.problem}; {self.action}"


def _sort_key(member: str) -> tuple[str, str]:
    # MATLAB's dir() on Windows (the authors' platform) lists names in case-insensitive order.
    return (member.upper(), member)


MAX_OVAL_SIDE = 2**16
"""The widest oval ROI read (its polygon has about one vertex per pixel of perimeter)."""


def _decode(data: bytes, name: str, where: str) -> Nucleus:
    """One ``.roi`` payload -> :class:`Nucleus`; ``where`` names the file (and member) for errors."""
    from roifile import ROI_TYPE, ImagejRoi

    try:
        roi = ImagejRoi.frombytes(data)
    except Exception as error:  # roifile raises ValueError, struct.error, IndexError on corrupt data
        raise RoiError(f"{where}: not a readable ImageJ ROI ({type(error).__name__}: {error})") from None
    kinds = {ROI_TYPE.POLYGON: "polygon", ROI_TYPE.FREEHAND: "freehand", ROI_TYPE.TRACED: "traced"}
    if roi.composite:
        raise RoiError(
            f"{where}: composite (shape) ROI; a nucleus must be a single polygon, oval or rectangle"
        )
    if roi.roitype in kinds:
        roi_type = kinds[roi.roitype]
        if roi.subpixel_coordinates is not None:
            coords = np.asarray(roi.subpixel_coordinates, dtype=np.float32)
        elif roi.integer_coordinates is not None:
            coords = (np.asarray(roi.integer_coordinates) + [roi.left, roi.top]).astype(np.float32)
        else:
            coords = np.empty((0, 2), np.float32)
    elif roi.roitype in (ROI_TYPE.OVAL, ROI_TYPE.RECT):
        if roi.subpixelrect:
            left, top, right, bottom = roi.xd, roi.yd, roi.xd + roi.widthd, roi.yd + roi.heightd
        else:
            left, top, right, bottom = roi.left, roi.top, roi.right, roi.bottom
        if roi.roitype == ROI_TYPE.OVAL:
            roi_type = "oval"
            sides = (right - left, bottom - top)
            if not all(np.isfinite(sides)) or max(sides) > MAX_OVAL_SIDE:
                raise RoiError(
                    f"{where}: oval of {sides[0]:.6g} x {sides[1]:.6g} px; a nucleus oval is at most "
                    f"{MAX_OVAL_SIDE} px across (the file is damaged or not a nucleus outline)"
                )
            # About one vertex per pixel of perimeter, at least 32: the polygon follows the ellipse to well
            # under a tenth of a pixel for nucleus-sized ovals.
            n = max(33, int(np.ceil(np.pi * ((right - left) + (bottom - top)) / 2)) + 1)
            angle = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
            cx, cy, rx, ry = (left + right) / 2, (top + bottom) / 2, (right - left) / 2, (bottom - top) / 2
            coords = np.stack([cx + rx * np.cos(angle), cy + ry * np.sin(angle)], axis=1)
        else:
            roi_type = "rectangle"
            coords = np.array([[left, top], [right, top], [right, bottom], [left, bottom]], np.float32)
    else:
        raise RoiError(
            f"{where}: ROI of type {ROI_TYPE(roi.roitype).name}; a nucleus must be an area "
            "(polygon, freehand, traced, oval or rectangle)"
        )
    coords = np.asarray(coords, dtype=np.float32)
    return Nucleus(name=name, x=coords[:, 0].copy(), y=coords[:, 1].copy(), roi_type=roi_type)


def read_roi_set(path: str | Path) -> list[Nucleus]:
    """Read an ImageJ RoiSet: a ``.zip`` of ``.roi`` files, a folder of them, or one ``.roi`` file.

    Args:
        path: the RoiSet.

    Returns:
        One :class:`Nucleus` per ``.roi`` file, sorted by file name (the MATLAB generator's label order).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RoiError: not a zip, a set without any ``.roi``, or a member that is not a usable ImageJ ROI; the
            message names the file and the member.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such ROI set")
    if path.is_dir():
        files = sorted(path.glob("*.roi"), key=lambda p: _sort_key(p.name))
        if not files:
            raise RoiError(f"{path}: folder holds no .roi files")
        return [_decode(p.read_bytes(), p.stem, str(p)) for p in files]
    if path.suffix.lower() == ".roi":
        return [_decode(path.read_bytes(), path.stem, str(path))]
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise RoiError(f"{path}: not a readable zip file ({error}); expected an ImageJ RoiSet .zip") from None
    with archive:
        members = [
            m
            for m in archive.namelist()
            if m.lower().endswith(".roi") and not m.startswith("__MACOSX/") and not m.endswith("/")
        ]
        if not members:
            raise RoiError(f"{path}: zip holds no .roi files (members: {len(archive.namelist())})")
        others = len(archive.namelist()) - len(members)
        if others:
            logger.debug("%s: ignored %d member(s) that are not .roi files", path, others)
        members.sort(key=lambda m: _sort_key(m.rsplit("/", 1)[-1]))
        nuclei = []
        for member in members:
            name = member.rsplit("/", 1)[-1][:-4]
            try:
                data = archive.read(member)
            except (zipfile.BadZipFile, OSError) as error:
                raise RoiError(f"{path}: member {member}: cannot be extracted ({error})") from None
            nuclei.append(_decode(data, name, f"{path}: member {member}"))
    return nuclei


def polygon_area(nucleus: Nucleus) -> float:
    """Unsigned shoelace area in square pixels (0 for fewer than 3 vertices)."""
    x = nucleus.x.astype(np.float64)
    y = nucleus.y.astype(np.float64)
    if x.size < 3:
        return 0.0
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _encode(nucleus: Nucleus):
    from roifile import ROI_TYPE, ImagejRoi

    points = np.stack([nucleus.x, nucleus.y], axis=1).astype(np.float32)
    if len(points) == 0:
        raise ValueError(f"nucleus {nucleus.name!r}: no vertices; an ImageJ ROI needs at least one")
    roi = ImagejRoi.frompoints(points, name=nucleus.name)
    roi.roitype = {"polygon": ROI_TYPE.POLYGON, "traced": ROI_TYPE.TRACED}.get(
        nucleus.roi_type, ROI_TYPE.FREEHAND
    )
    return roi


def write_roi_set(path: str | Path, nuclei: Iterable[Nucleus]) -> Path:
    """Write nuclei as an ImageJ RoiSet zip that ImageJ/Fiji and :func:`read_roi_set` open.

    Vertices are stored as float32 sub-pixel coordinates, so ``read_roi_set(write_roi_set(p, n))`` gives back
    the same names and vertices. Polygon and traced ROIs keep their type; every other type (freehand, and ovals
    and rectangles already turned into polygons) is written as a freehand ROI. Names must be unique.

    Args:
        path: the ``.zip`` to create (overwritten if it exists).
        nuclei: the polygons to write.

    Returns:
        ``path``.

    Raises:
        ValueError: duplicate or empty names, or a nucleus without vertices.
    """
    path = Path(path)
    nuclei = list(nuclei)
    names = [n.name for n in nuclei]
    if any(not name for name in names):
        raise ValueError(f"{path}: every nucleus needs a non-empty name to become a .roi file")
    duplicates = (
        sorted({name for name in names if names.count(name) > 1}) if len(set(names)) < len(names) else []
    )
    if duplicates:
        raise ValueError(
            f"{path}: duplicate ROI names would overwrite each other: {', '.join(duplicates[:5])}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for nucleus in nuclei:
            archive.writestr(f"{nucleus.name}.roi", _encode(nucleus).tobytes())
    return path
