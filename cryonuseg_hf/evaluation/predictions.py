"""Any tool's predictions of the CryoNuSeg tiles, read into instance label images: one file per tile, in
whatever format the tool writes, matched to its tile by file name.

Formats, chosen by extension (:data:`FORMATS`):

- ``.tif``/``.tiff``/``.png``: instance label images, any integer dtype (0 = background), at the tile's
  512x512 resolution;
- ``.geojson``/``.json``: QuPath exports, read by :func:`cryonuseg_hf.data.outlines.read_geojson_labels`
  (detections, annotations or cells; ``Polygon`` and ``MultiPolygon`` geometries, holes honoured);
- ``.zip``: ImageJ/Fiji RoiSets, read by :func:`cryonuseg_hf.data.outlines.read_roiset_labels`;
- ``.mat``: HoVer-Net-style MATLAB files holding an ``inst_map``.

Outlines (GeoJSON, RoiSets) are rasterised exactly as the dataset's own masks were made, in the coordinate frame
of the CryoNuSeg ROIs and of ``cryonuseg-hf predict``'s exports (:mod:`cryonuseg_hf.data.outlines`).

Every file is checked against its tile before it is decoded, so the work of reading it is known first: a label
image's or ``inst_map``'s header may declare at most 4 values per tile pixel, and outlines are bounded by
:func:`cryonuseg_hf.data.outlines.check_outlines`; beyond, the file is refused with its figure.

A folder's files are matched to the 30 tiles by :func:`match_files` (each name holds a tile id such as
``Human_Larynx_01``) and read by :func:`read_predictions`; :mod:`cryonuseg_hf.evaluation.score` scores them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.folds import TILE_IDS
from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.outlines import read_geojson_labels, read_roiset_labels
from cryonuseg_hf.data.readers import HeaderTooLarge, check_declared
from cryonuseg_hf.evaluation.metrics import as_label_image

FORMATS: dict[str, str] = {
    ".tif": "labels",
    ".tiff": "labels",
    ".png": "labels",
    ".geojson": "geojson",
    ".json": "geojson",
    ".zip": "roiset",
    ".mat": "mat",
}
"""File extension -> prediction format."""
_TILE_IN_NAME = re.compile(r"(?<![A-Za-z0-9])Human_([A-Za-z]+)_(\d{2})(?!\d)", re.IGNORECASE)
_SPELLING_FIXES = {"thyreoidgland": "thyroidgland"}  # as in some released RoiSet names
_CANONICAL = {t.lower(): t for t in TILE_IDS}


# ----------------------------------------------------------------------------------------------------------
# One file -> (H, W) integer instance labels
# ----------------------------------------------------------------------------------------------------------


def _problem(error: Exception) -> str:
    """What went wrong, in words: an OSError's text without its ``[Errno N]`` and path (the message names the
    file), else the error's type and text."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"


_ADVICE = "give one label image per tile, at the tile's resolution"


def _check_declared(path: Path, declared: tuple[int, ...], shape: tuple[int, int] | None) -> None:
    """:func:`~cryonuseg_hf.data.readers.check_declared` against the tile a prediction is for (None: no check)."""
    if shape is not None:
        check_declared(path, declared, shape, _ADVICE)


def _decode_image(path: Path, shape: tuple[int, int] | None) -> tuple[np.ndarray, str | None]:
    """The pixels and PIL mode (None for a TIFF) of an image file, its header checked first."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            declared = tuple(tiff.series[0].shape)
            _check_declared(path, declared, shape)
            return tiff.asarray(), None
    from PIL import Image

    with Image.open(path) as image:
        _check_declared(path, (image.height, image.width, len(image.getbands())), shape)
        return np.asarray(image), image.mode


def read_prediction_labels(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An instance label image from a TIFF or PNG, any integer dtype; singleton axes are squeezed.

    Args:
        path: the file.
        shape: the tile it predicts: a file whose header declares far more values than that is refused before
            any decoding (a small file may claim a huge image). None: no such check.

    Raises:
        ValueError: unreadable, far larger than ``shape``, more than one channel (e.g. an RGB overlay), or not
            integer labels; the message names the file.
    """
    path = Path(path)
    try:
        array, mode = _decode_image(path, shape)
    except HeaderTooLarge as refusal:
        raise ValueError(str(refusal)) from None
    except Exception as error:  # PIL and tifffile raise many types for corrupt files
        raise ValueError(f"{path}: not a readable image ({_problem(error)})") from None
    if mode in ("RGB", "RGBA", "CMYK", "LA", "YCbCr", "HSV"):
        raise ValueError(
            f"{path}: a {mode} picture, not an instance label image; save one integer id per pixel "
            "(0 = background), e.g. the *_labels.tif of `cryonuseg-hf predict`"
        )
    array = np.squeeze(array) if array.ndim > 2 else array
    if array.ndim == 3:
        raise ValueError(
            f"{path}: has shape {array.shape}, several channels; an instance label image has one integer id "
            "per pixel (0 = background)"
        )
    return as_label_image(array, str(path))


def _mat_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Name -> dimensions of each variable of a MATLAB v5 file, from the variables' headers alone: a compressed
    variable is unpacked only as far as its header (scipy's ``whosmat`` unpacks all of it). None for other files
    (v4, v7.3), which scipy reads and names."""
    import struct
    import zlib

    shapes = {}
    with path.open("rb") as handle:
        header = handle.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return None
        order = "<" if header[126:128] == b"IM" else ">"
        if struct.unpack(order + "H", header[124:126])[0] != 0x0100:
            return None
        while len(tag := handle.read(8)) == 8:
            kind, size = struct.unpack(order + "II", tag)
            start = handle.tell()
            if kind == 15:  # miCOMPRESSED: a zlib stream holding one miMATRIX element
                body = zlib.decompressobj().decompress(handle.read(min(size, 1 << 16)), 4096)[8:]
            else:
                body = handle.read(min(size, 4096)) if kind == 14 else b""
            if body:
                name, dims = _matrix_header(body, order)
                shapes[name] = dims
            handle.seek(start + size + (0 if kind == 15 else -size % 8))
    return shapes


def _matrix_header(body: bytes, order: str) -> tuple[str, tuple[int, ...]]:
    """The name and dimensions of a MATLAB v5 miMATRIX element, from the start of its body (array flags,
    dimensions, name; each an element of its own, the small format included)."""
    import struct

    def element(at: int) -> tuple[bytes, int]:
        kind, size = struct.unpack_from(order + "II", body, at)
        if kind >> 16:  # small element: up to 4 bytes of data inside the tag
            return body[at + 4 : at + 4 + (kind >> 16)], at + 8
        return body[at + 8 : at + 8 + size], at + 8 + size + (-size % 8)

    _, at = element(0)
    dims, at = element(at)
    name, _ = element(at)
    return name.decode("latin1"), struct.unpack(f"{order}{len(dims) // 4}i", dims)


def read_hovernet_mat(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The ``inst_map`` of a HoVer-Net-style ``.mat`` file (only that variable is read).

    Args:
        path: the file.
        shape: the tile it predicts: an ``inst_map`` declared far larger is refused before it is read.

    Raises:
        ValueError: unreadable (MATLAB v7.3 files are HDF5 and need re-saving with ``-v7``), no ``inst_map``, or
            one far larger than ``shape``.
    """
    from scipy.io import loadmat, whosmat

    path = Path(path)
    try:
        declared = _mat_shapes(path)
        if declared is not None and "inst_map" in declared:
            _check_declared(path, declared["inst_map"], shape)
        contents = loadmat(path, variable_names=["inst_map"])
        if "inst_map" not in contents:
            found = sorted(declared) if declared is not None else sorted(n for n, _, _ in whosmat(path))
    except HeaderTooLarge as refusal:
        raise ValueError(str(refusal)) from None
    except NotImplementedError:  # scipy's answer to v7.3 (HDF5) files
        raise ValueError(
            f"{path}: a MATLAB v7.3 (HDF5) file; save it with save(..., '-v7') or scipy.io.savemat"
        ) from None
    except Exception as error:
        raise ValueError(f"{path}: not a readable .mat file ({_problem(error)})") from None
    if "inst_map" not in contents:
        raise ValueError(
            f"{path}: no 'inst_map' variable (found {found}); HoVer-Net writes the instances there"
        )
    return as_label_image(np.squeeze(contents["inst_map"]), f"{path}: inst_map")


def read_prediction(
    path: str | Path, shape: tuple[int, int] = TILE_SHAPE, object_types: Iterable[str] | None = None
) -> np.ndarray:
    """One prediction file of any supported format (see :data:`FORMATS`) as (H, W) instance labels.

    Args:
        path: the file.
        shape: the tile it predicts: outlines are rasterised at this size, label images must have it.
        object_types: GeoJSON only: the QuPath object types to keep (None: all).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown extension, unreadable, or the wrong shape; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prediction file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unknown prediction format {path.suffix!r}; expected one of {sorted(FORMATS)}"
        )
    if kind == "geojson":
        return read_geojson_labels(path, shape, object_types)
    if kind == "roiset":
        return read_roiset_labels(path, shape)
    labels = read_prediction_labels(path, shape) if kind == "labels" else read_hovernet_mat(path, shape)
    if labels.shape != tuple(shape):
        raise ValueError(
            f"{path}: labels of shape {labels.shape}, but the tile is {shape[0]}x{shape[1]}; predict at the "
            "tile's full resolution (resize labels back with nearest neighbour)"
        )
    return labels


# ----------------------------------------------------------------------------------------------------------
# A folder of predictions -> tiles
# ----------------------------------------------------------------------------------------------------------


def tile_id_in(name: str) -> str | None:
    """The CryoNuSeg tile id a file name holds, or None.

    >>> tile_id_in("human_thyreoidgland_02_labels.tif"), tile_id_in("Human_Kidney_01.png")
    ('Human_ThyroidGland_02', None)
    """
    for match in _TILE_IN_NAME.finditer(name):
        organ = _SPELLING_FIXES.get(match[1].lower(), match[1].lower())
        tile = _CANONICAL.get(f"human_{organ}_{match[2]}")
        if tile is not None:
            return tile
    return None


@dataclass(frozen=True)
class PredictionFiles:
    """What a folder of predictions holds, matched to the tiles."""

    folder: Path
    files: dict[str, Path]
    """tile id -> its prediction file, in tile order."""
    extra: list[Path] = field(default_factory=list)
    """Prediction files whose name holds no CryoNuSeg tile id."""
    skipped: list[Path] = field(default_factory=list)
    """Entries that are not prediction files (other extensions, sub-folders)."""

    @property
    def missing(self) -> list[str]:
        return [t for t in TILE_IDS if t not in self.files]


def match_files(folder: str | Path, pattern: str = "*", allow_extra: bool = False) -> PredictionFiles:
    """Match the prediction files of ``folder`` (not its sub-folders) to tiles by name.

    Args:
        folder: one file per tile, each name holding its tile id (``Human_Larynx_01.png``,
            ``Human_Larynx_01_labels.tif``, ``human_larynx_01.geojson``...).
        pattern: only files matching this glob (e.g. ``*_labels.tif`` in a ``cryonuseg-hf predict`` folder).
        allow_extra: list prediction files that name no tile as extra instead of raising.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no prediction file at all, a file that names no tile (unless ``allow_extra``), or two files
            for one tile; the message names the files and the way out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of predictions")
    entries = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
    candidates = [p for p in entries if p.is_file() and p.suffix.lower() in FORMATS]
    skipped = [p for p in entries if p not in candidates]
    if not candidates:
        raise ValueError(
            f"{folder}: no prediction files matching {pattern!r} (expected one file per tile: "
            f"{', '.join(sorted(FORMATS))})"
            + (f"; found only {[p.name for p in skipped[:5]]}" if skipped else "")
        )
    by_tile: dict[str, list[Path]] = {}
    extra = []
    for path in candidates:
        tile = tile_id_in(path.name)
        if tile is None:
            extra.append(path)
        else:
            by_tile.setdefault(tile, []).append(path)
    if extra and not allow_extra:
        raise ValueError(
            f"{folder}: {len(extra)} file(s) name no CryoNuSeg tile: {', '.join(p.name for p in extra[:5])}; "
            "name each file after its tile (e.g. Human_Larynx_01.png), or pass --ignore-unmatched to score "
            "the others and list these as extra"
        )
    if not by_tile:
        raise ValueError(f"{folder}: no file names a CryoNuSeg tile (e.g. Human_Larynx_01.png)")
    several = {t: paths for t, paths in by_tile.items() if len(paths) > 1}
    if several:
        tile, paths = next(iter(several.items()))
        raise ValueError(
            f"{folder}: {len(several)} tile(s) have several prediction files, e.g. {tile}: "
            f"{', '.join(p.name for p in paths)}; keep one per tile, or choose them with --pattern "
            "(e.g. --pattern '*_labels.tif')"
        )
    files = {t: by_tile[t][0] for t in TILE_IDS if t in by_tile}
    return PredictionFiles(folder, files, extra, skipped)


def read_predictions(
    matched: PredictionFiles, shape: tuple[int, int] = TILE_SHAPE, object_types: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """tile id -> instance labels of every matched file."""
    return {tile: read_prediction(path, shape, object_types) for tile, path in matched.files.items()}
