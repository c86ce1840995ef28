"""Score any tool's nuclei on CryoNuSeg: one prediction file per tile, in whatever format the tool writes.

A folder of predictions is matched to the 30 tiles by file name (each name holds a tile id such as
``Human_Larynx_01``), every file is read into an instance label image, and :func:`cryonuseg_hf.evaluation.metrics.score`
scores it against the released ``label masks modify`` of each mark-up. Beside the predictions the report puts,
on exactly the same tiles, the SegFormer's leave-one-organ-out CV (``results/cv/metrics.json``) and the human
agreement: every other mark-up scored as a prediction against the same reference (with Annotator 1 round 2 as
the reference these are the intra- and inter-observer rows of ``results/human_agreement.json``).

Formats, chosen by extension:

- ``.tif``/``.tiff``/``.png``: instance label images, any integer dtype (0 = background), at the tile's
  512x512 resolution;
- ``.geojson``/``.json``: QuPath exports (a FeatureCollection, a list of features or one feature; detections,
  annotations or cells, whose ``nucleusGeometry`` is used); ``Polygon`` and ``MultiPolygon`` geometries, holes
  (interior rings) honoured;
- ``.zip``: ImageJ/Fiji RoiSets, read with :func:`cryonuseg_hf.data.rois.read_roi_set`;
- ``.mat``: HoVer-Net-style MATLAB files holding an ``inst_map``.

Outlines (GeoJSON, RoiSets) are rasterised exactly as the dataset's own masks were made, by
:func:`cryonuseg_hf.data.masks.instance_masks` (MATLAB's ``poly2mask``): coordinates are (x, y) pixels in the frame of
the CryoNuSeg ROIs and of :mod:`cryonuseg_hf.model.export`, polygon ``n`` of a file gets label ``n + 1`` and where
polygons overlap the later one wins, as in ``label masks modify``. GeoJSON coordinates are used as the file
stores them (float64); ROI coordinates as ImageJ stores them (float32).

:func:`score_folder` returns the report as a dict; :func:`cryonuseg_hf.reports.score.write_report` writes it
(``score.json``, ``score.md``, ``score_per_tile.csv``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.folds import ORGANS, TILE_IDS, fold_of, organ_of
from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.evaluation.metrics import COUNTS, METRICS, score

logger = logging.getLogger(__name__)

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
QUPATH_OBJECT_TYPES = {
    # QuPath 0.2 wrote the class name as the feature id; 0.3+ writes properties.objectType
    "PathDetectionObject": "detection",
    "PathAnnotationObject": "annotation",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
}
CV_METRICS = Path("results/cv/metrics.json")
"""Where the SegFormer CV scores live in a checkout (``cryonuseg-hf train --cv``)."""
_TILE_IN_NAME = re.compile(r"(?<![A-Za-z0-9])Human_([A-Za-z]+)_(\d{2})(?!\d)", re.IGNORECASE)
_SPELLING_FIXES = {"thyreoidgland": "thyroidgland"}  # as in some released RoiSet names
_CANONICAL = {t.lower(): t for t in TILE_IDS}


# ----------------------------------------------------------------------------------------------------------
# Readers: one file -> (H, W) integer instance labels
# ----------------------------------------------------------------------------------------------------------


def read_prediction_labels(path: str | Path) -> np.ndarray:
    """An instance label image from a TIFF or PNG, any integer dtype; singleton axes are squeezed.

    Raises:
        ValueError: unreadable, more than one channel (e.g. an RGB overlay), or not integer labels; the message
            names the file.
    """
    from cryonuseg_hf.evaluation.metrics import as_label_image

    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array, mode = tifffile.imread(path), None
        else:
            from PIL import Image

            with Image.open(path) as image:
                array, mode = np.asarray(image), image.mode
    except Exception as error:  # PIL and tifffile raise many types for corrupt files
        raise ValueError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None
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


def read_hovernet_mat(path: str | Path) -> np.ndarray:
    """The ``inst_map`` of a HoVer-Net-style ``.mat`` file.

    Raises:
        ValueError: unreadable (MATLAB v7.3 files are HDF5 and need re-saving with ``-v7``), or no ``inst_map``.
    """
    from scipy.io import loadmat

    from cryonuseg_hf.evaluation.metrics import as_label_image

    path = Path(path)
    try:
        contents = loadmat(path)
    except NotImplementedError:  # scipy's answer to v7.3 (HDF5) files
        raise ValueError(
            f"{path}: a MATLAB v7.3 (HDF5) file; save it with save(..., '-v7') or scipy.io.savemat"
        ) from None
    except Exception as error:
        raise ValueError(f"{path}: not a readable .mat file ({type(error).__name__}: {error})") from None
    if "inst_map" not in contents:
        keys = sorted(k for k in contents if not k.startswith("__"))
        raise ValueError(
            f"{path}: no 'inst_map' variable (found {keys}); HoVer-Net writes the instances there"
        )
    return as_label_image(np.squeeze(contents["inst_map"]), f"{path}: inst_map")


def _object_type(feature: Mapping[str, Any]) -> str | None:
    properties = feature.get("properties") or {}
    kind = properties.get("objectType") or QUPATH_OBJECT_TYPES.get(str(feature.get("id")))
    return str(kind) if kind is not None else None


def _rings(coordinates: Any, where: str) -> list[np.ndarray]:
    rings = []
    for k, ring in enumerate(coordinates):
        try:
            array = np.asarray(ring, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: ring {k} is not a list of [x, y] numbers") from None
        if array.ndim != 2 or array.shape[1] < 2 or not np.isfinite(array[:, :2]).all():
            raise ValueError(f"{where}: ring {k} is not a list of finite [x, y] positions")
        rings.append(array[:, :2])
    if not rings:
        raise ValueError(f"{where}: a polygon without rings")
    return rings


def geojson_outlines(
    data: Any, where: str = "GeoJSON", object_types: Iterable[str] | None = None
) -> list[list[list[np.ndarray]]]:
    """The nuclei of a parsed GeoJSON document as outlines.

    Args:
        data: a FeatureCollection, a list of Features, one Feature, or a bare Polygon/MultiPolygon geometry.
        where: how error messages name the document (its file).
        object_types: keep only features of these QuPath object types (``detection``, ``annotation``,
            ``cell``...); None keeps every feature. A cell contributes its ``nucleusGeometry`` where it has one.

    Returns:
        One entry per nucleus, in file order: its polygons, each a list of rings (exterior first, then holes),
        each ring an (N, 2) float64 array of (x, y).

    Raises:
        ValueError: not GeoJSON features, or a geometry that is not an area (the message names the feature).

    >>> square = [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]
    >>> len(geojson_outlines({"type": "MultiPolygon", "coordinates": [square, square]})[0])
    2
    """
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and data.get("type") in ("Polygon", "MultiPolygon"):
        features = [{"type": "Feature", "geometry": data}]
    else:
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{where}: expected a GeoJSON FeatureCollection, a list of features or a feature, got {found!r}"
        )
    if not isinstance(features, list):
        raise ValueError(f"{where}: 'features' is not a list")
    wanted = set(object_types) if object_types is not None else None
    nuclei = []
    for index, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise ValueError(f"{where}: feature {index} is not a GeoJSON object")
        if wanted is not None and _object_type(feature) not in wanted:
            continue
        geometry = feature.get("nucleusGeometry") or feature.get("geometry")
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        at = f"{where}: feature {index}"
        if kind == "Polygon":
            polygons = [_rings(geometry.get("coordinates") or [], at)]
        elif kind == "MultiPolygon":
            polygons = [_rings(p, f"{at} part {k}") for k, p in enumerate(geometry.get("coordinates") or [])]
        else:
            raise ValueError(
                f"{at}: geometry {kind!r}; a nucleus must be a Polygon or MultiPolygon outline "
                "(pass object_types / --object-type to keep only the nuclei objects)"
            )
        nuclei.append(polygons)
    return nuclei


def rasterise_outlines(
    nuclei: Sequence[Sequence[Sequence[np.ndarray]]], shape: tuple[int, int] = TILE_SHAPE
) -> np.ndarray:
    """Outlines -> instance labels with the dataset's rasteriser: nucleus ``n`` is label ``n + 1``, the later
    nucleus wins where they overlap (``label masks modify``), a MultiPolygon's parts share one label and holes
    are cleared.

    Args:
        nuclei: as returned by :func:`geojson_outlines`.
        shape: the tile (height, width).

    Returns:
        (H, W) int32 labels.

    >>> ring = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]])
    >>> rasterise_outlines([[[ring]]], (3, 4)).tolist()
    [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """
    from cryonuseg_hf.data.masks import instance_masks
    from cryonuseg_hf.data.rois import Nucleus

    def as_nuclei(rings: Iterable[np.ndarray]) -> list[Nucleus]:
        return [Nucleus(str(k), ring[:, 0], ring[:, 1], "polygon") for k, ring in enumerate(rings)]

    holed = [any(len(rings) > 1 for rings in polygons) for polygons in nuclei]
    # The exteriors of every nucleus without holes go through instance_masks at once; a part's label maps back
    # to its nucleus, and since parts are numbered in nucleus order the later nucleus still wins.
    owner = [n for n, polygons in enumerate(nuclei) if not holed[n] for _ in polygons]
    if len(owner) >= np.iinfo(np.uint16).max:
        raise ValueError(f"{len(owner)} polygons in one tile; the rasteriser labels at most 65534")
    exteriors = [rings[0] for n, polygons in enumerate(nuclei) if not holed[n] for rings in polygons]
    _, parts = instance_masks(as_nuclei(exteriors), shape)
    labels = np.concatenate([[0], np.asarray(owner, np.int32) + 1]).astype(np.int32)[parts]
    for n in np.flatnonzero(holed):
        # exterior minus holes, then the generator's rule: the larger label wins, max(mask * n, labels)
        mask = np.zeros(shape, bool)
        for rings in nuclei[n]:
            part = instance_masks(as_nuclei(rings[:1]), shape)[1] > 0
            if len(rings) > 1:
                part &= instance_masks(as_nuclei(rings[1:]), shape)[0] == 0
            mask |= part
        labels = np.maximum(labels, np.where(mask, n + 1, 0).astype(np.int32))
    return labels


def _check_inside(
    nuclei: Sequence[Sequence[Sequence[np.ndarray]]], shape: tuple[int, int], path: Path
) -> None:
    """Outlines that all lie outside the tile mean coordinates in another frame (e.g. a whole slide)."""
    points = [rings[0] for polygons in nuclei for rings in polygons if len(rings[0])]
    if not points:
        return
    xy = np.concatenate(points)
    low, high = xy.min(axis=0), xy.max(axis=0)
    height, width = shape
    if high[0] <= 0 or high[1] <= 0 or low[0] >= width or low[1] >= height:
        raise ValueError(
            f"{path}: every outline lies outside the {height}x{width} tile (x {low[0]:.1f}..{high[0]:.1f}, "
            f"y {low[1]:.1f}..{high[1]:.1f}); export coordinates relative to the tile's top-left corner"
        )


def read_geojson(
    path: str | Path, shape: tuple[int, int] = TILE_SHAPE, object_types: Iterable[str] | None = None
) -> np.ndarray:
    """Instance labels from a QuPath GeoJSON export (see :func:`geojson_outlines`, :func:`rasterise_outlines`).

    Raises:
        ValueError: not JSON, not GeoJSON features, a geometry that is not an area, or outlines that all lie
            outside the tile; the message names the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    nuclei = geojson_outlines(data, str(path), object_types)
    _check_inside(nuclei, shape, path)
    return rasterise_outlines(nuclei, shape)


def read_roiset(path: str | Path, shape: tuple[int, int] = TILE_SHAPE) -> np.ndarray:
    """Instance labels from an ImageJ RoiSet, exactly as the dataset's ``label masks modify`` were made."""
    from cryonuseg_hf.data.masks import instance_masks
    from cryonuseg_hf.data.rois import read_roi_set

    path = Path(path)
    nuclei = read_roi_set(path)
    outlines = [[[np.stack([n.x, n.y], axis=1)]] for n in nuclei]
    _check_inside(outlines, shape, path)
    return instance_masks(nuclei, shape)[1].astype(np.int32)


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
        return read_geojson(path, shape, object_types)
    if kind == "roiset":
        return read_roiset(path, shape)
    labels = read_prediction_labels(path) if kind == "labels" else read_hovernet_mat(path)
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


# ----------------------------------------------------------------------------------------------------------
# Scoring, with the SegFormer CV and the human agreement beside
# ----------------------------------------------------------------------------------------------------------


def summarise(per_tile: Mapping[str, Mapping[str, Any]], tiles: Sequence[str]) -> dict[str, Any]:
    """Means over ``tiles`` of per-tile metrics, overall, per organ and per fold (fold k = organ k).

    Returns:
        ``mean`` (metric -> value), ``per_organ`` and ``per_fold`` (group -> metric -> value, plus ``n_tiles``),
        ``per_tile`` (tile -> metrics and counts, for ``tiles`` only).
    """
    rows = {t: per_tile[t] for t in tiles}

    def means(group: Sequence[str]) -> dict[str, float]:
        values = {m: float(np.mean([rows[t][m] for t in group])) for m in METRICS}
        values["n_tiles"] = len(group)
        for count in ("n_true", "n_pred"):
            if all(count in rows[t] for t in group):
                values[count] = int(sum(rows[t][count] for t in group))
        return values

    organs = [o for o in ORGANS if any(organ_of(t) == o for t in tiles)]
    return {
        "mean": means(list(tiles)),
        "per_organ": {o: means([t for t in tiles if organ_of(t) == o]) for o in organs},
        "per_fold": {ORGANS.index(o): means([t for t in tiles if organ_of(t) == o]) for o in organs},
        "per_tile": {t: {k: rows[t][k] for k in (*METRICS, *COUNTS) if k in rows[t]} for t in tiles},
    }


def observer_relation(reference: str, other: str) -> str:
    """``intra-observer`` for two rounds of one annotator, else ``inter-observer``.

    >>> observer_relation("annotator1_round2", "annotator1_round1"), observer_relation("annotator2", "annotator1_round1")
    ('intra-observer', 'inter-observer')
    """
    return "intra-observer" if reference.split("_")[0] == other.split("_")[0] else "inter-observer"


def human_beside(
    masks: Mapping[str, Mapping[str, np.ndarray]], references: Sequence[str], tiles: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """For each reference mark-up: every other loaded mark-up scored as a prediction against it, on ``tiles``."""
    from cryonuseg_hf.evaluation.agreement import compare_markups

    beside: dict[str, dict[str, Any]] = {}
    for reference in references:
        beside[reference] = {}
        for other in masks:
            if other == reference:
                continue
            result = compare_markups(
                {t: masks[reference][t] for t in tiles}, {t: masks[other][t] for t in tiles}
            )
            beside[reference][other] = {"relation": observer_relation(reference, other)} | summarise(
                result["per_tile"], tiles
            )
    return beside


def cv_beside(
    path: str | Path | None, references: Sequence[str], tiles: Sequence[str]
) -> dict[str, Any] | None:
    """The SegFormer CV scores (``results/cv/metrics.json``) on ``tiles``, per reference; None where the file or
    a tile is missing (logged)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        logger.warning("%s: no SegFormer CV results; the report leaves them out", path)
        return None
    cv = json.loads(path.read_text())
    beside: dict[str, Any] = {"path": str(path), "command": cv.get("command")}
    for reference in references:
        rows = {row["tile_id"]: row for row in cv.get("scores", {}).get(reference, {}).get("per_tile", [])}
        lacking = [t for t in tiles if t not in rows]
        if lacking:
            logger.warning("%s: no CV score vs %s for %s; left out", path, reference, ", ".join(lacking[:3]))
            continue
        beside[reference] = summarise(rows, tiles)
    return beside


def score_predictions(
    predictions: Mapping[str, np.ndarray],
    masks: Mapping[str, Mapping[str, np.ndarray]],
    references: Sequence[str],
) -> dict[str, Any]:
    """Predicted labels (tile id -> labels) against each reference mark-up: :func:`cryonuseg_hf.evaluation.metrics.score`'s
    result per reference (means, pooled values, ``per_tile`` as tile -> row, ``per_organ``, ``per_fold``)."""
    tiles = [t for t in TILE_IDS if t in predictions]
    scored = score(
        [predictions[t] for t in tiles],
        {r: [masks[r][t] for t in tiles] for r in references},
        organs=[organ_of(t) for t in tiles],
        folds=[fold_of(t) for t in tiles],
        tile_ids=tiles,
    )
    for result in scored.values():
        result["per_tile"] = {row["tile_id"]: row for row in result["per_tile"]}
    return scored


def score_folder(
    folder: str | Path,
    source: str | Path | None = None,
    references: Sequence[str] | None = None,
    pattern: str = "*",
    object_types: Iterable[str] | None = None,
    cv_metrics: str | Path | None = CV_METRICS,
    allow_extra: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """Score a folder of predictions on CryoNuSeg, with the SegFormer CV and the human agreement beside.

    Args:
        folder: one prediction file per tile (see :func:`match_files` and :data:`FORMATS`).
        source: the raw release (default: :func:`cryonuseg_hf.data.release.default_source`).
        references: mark-ups to score against (default: all three).
        pattern: glob choosing the prediction files in ``folder``.
        object_types: GeoJSON only: QuPath object types to keep (None: all).
        cv_metrics: the SegFormer CV ``metrics.json`` to put beside (None or a missing file: left out).
        allow_extra: list files that name no tile instead of raising.
        name: what the report calls these predictions (default: the folder name).

    Returns:
        A JSON-ready report: ``name``, ``folder``, ``files`` (tile -> path), ``formats``, ``missing``, ``extra``,
        ``skipped``, ``tiles``, ``references``, ``scores`` (reference -> the metric's result),
        ``summary`` (reference -> :func:`summarise` of the predictions), ``segformer_cv`` and ``human``
        (reference -> other mark-up -> summary), all on the scored tiles; written by
        :func:`cryonuseg_hf.reports.score.write_report`.

    Raises:
        FileNotFoundError, ValueError: see :func:`match_files` and :func:`read_prediction`; an unknown mark-up.
    """
    from cryonuseg_hf.data.release import MARKUPS, default_source, open_release
    from cryonuseg_hf.evaluation.agreement import read_markup

    references = list(references or MARKUPS)
    unknown = [r for r in references if r not in MARKUPS]
    if unknown:
        raise ValueError(f"unknown mark-up(s) {unknown}; choose from {list(MARKUPS)}")
    matched = match_files(folder, pattern, allow_extra)
    release = open_release(source if source is not None else default_source())
    masks = {m: read_markup(release, m) for m in MARKUPS}
    predictions = read_predictions(matched, TILE_SHAPE, object_types)
    tiles = list(predictions)
    if matched.missing:
        logger.warning(
            "%s: no prediction for %d tile(s): %s", matched.folder, len(matched.missing), matched.missing
        )
    scores = score_predictions(predictions, masks, references)
    formats: dict[str, int] = {}
    for path in matched.files.values():
        formats[FORMATS[path.suffix.lower()]] = formats.get(FORMATS[path.suffix.lower()], 0) + 1
    return {
        "name": name or Path(folder).resolve().name,
        "folder": str(folder),
        "release": str(release.root),
        "masks": "released 'label masks modify' of each mark-up",
        "pattern": pattern,
        "object_types": sorted(object_types) if object_types is not None else None,
        "formats": formats,
        "files": {t: str(p) for t, p in matched.files.items()},
        "missing": matched.missing,
        "extra": [str(p) for p in matched.extra],
        "skipped": [str(p) for p in matched.skipped],
        "tiles": tiles,
        "references": references,
        "scores": scores,
        "summary": {r: summarise(scores[r]["per_tile"], tiles) for r in references},
        "segformer_cv": cv_beside(cv_metrics, references, tiles),
        "human": human_beside(masks, references, tiles),
    }
