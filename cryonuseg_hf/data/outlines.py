"""Nuclei outlines in files: label images traced into (x, y) polygons and written as QuPath GeoJSON or ImageJ
RoiSets, and such files read back into label images.

The coordinate convention, written once for both directions: inside the package, label images are (row, col)
arrays; in files, positions are (x, y) pixel coordinates in the frame of the CryoNuSeg annotations (the ImageJ
ROIs). Label pixel ``[i, j]`` has its centre at ``(x, y) = (j + XY_OFFSET, i + XY_OFFSET)``, ``XY_OFFSET = 1``:
the point at which the annotations' rasteriser (:func:`cryonuseg_hf.data.masks.instance_masks`, MATLAB's
``poly2mask``, which made the released masks) tests that pixel. So

- writing, :func:`instance_polygons` traces each nucleus between the centres of its pixels and of the pixels
  around it (marching squares at level 0.5) and shifts the trace by ``XY_OFFSET``;
- reading, :func:`rasterise_outlines` hands the (x, y) outlines to that same rasteriser, unchanged,

and an outline written here reads back as the pixels it was traced from. A predicted nucleus therefore sits where
an annotator's ROI of it sits in Fiji or QuPath. (In ImageJ's own convention a pixel centre is at ``j + 0.5``: the
released masks are half a pixel off the ROIs, and the files follow the ROIs.)

Writing: each nucleus becomes one valid simple polygon (QuPath rejects self-intersections): holes are filled, and
a nucleus in several pieces keeps the outline of its largest piece (logged; a label image keeps every pixel).
GeoJSON holds QuPath detections with their measurements; a RoiSet one freehand ROI per nucleus (written by
:func:`cryonuseg_hf.data.rois.write_roi_set`).

Reading: polygon ``n`` of a file gets label ``n + 1`` and where polygons overlap the later one wins, as in the
released ``label masks modify``. GeoJSON (QuPath exports: a FeatureCollection, a list of features, one feature or
a bare geometry; detections, annotations or cells, whose ``nucleusGeometry`` is used) may hold ``Polygon`` and
``MultiPolygon`` geometries with holes; its coordinates are used as the file stores them (float64). RoiSets are
read by :func:`cryonuseg_hf.data.rois.read_roi_set`, coordinates as ImageJ stores them (float32).

Before any rasterising, :func:`check_outlines` measures the work a file asks for against the image it belongs to
and refuses, naming the file, the nucleus and the figure, a file far bigger than a tile's nuclei need, outlines
with a vertex far outside the image or wholly outside it, too many vertices, too long outlines or too much area to
fill: a hostile or mistaken file (coordinates of 1e12, a slide's frame) is refused at once instead of asking for
terabytes.
"""

from __future__ import annotations

import json
import logging
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.masks import polygon_pixels
from cryonuseg_hf.data.rois import Nucleus, read_roi_set, write_roi_set

logger = logging.getLogger(__name__)

XY_OFFSET = 1.0
"""(x, y) of the centre of label pixel ``[0, 0]`` in files (see the module docstring)."""
NUCLEUS_COLOUR = (0, 255, 0)
"""RGB of the ``Nucleus`` class in GeoJSON (and of the outlines drawn on overlays)."""
QUPATH_OBJECT_TYPES = {
    # QuPath 0.2 wrote the class name as the feature id; 0.3+ writes properties.objectType
    "PathDetectionObject": "detection",
    "PathAnnotationObject": "annotation",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
}
_UUID_NAMESPACE = uuid.UUID("6f1c2f0e-5a55-4c1b-9a63-1f0c8a3e2b7d")

# What the files of one image may ask for, per pixel of the image (with a floor for small images). The real
# CryoNuSeg RoiSets need at most 110,399 vertices, 48,252 px of outline and 256,798 px of bounding boxes for a
# 512x512 tile (0.42, 0.18 and 0.98 per pixel); these bounds leave 4x to 16x room and keep reading a tile under
# about 250 MB (the rasteriser needs about 100 bytes per sub-pixel step of outline and 40 per pixel filled).
_MAX_VERTICES_PER_PIXEL = 2
_MAX_OUTLINE_PX_PER_PIXEL = 1
_MAX_FILLED_PER_PIXEL = 16
_MAX_FILE_BYTES_PER_PIXEL = 128  # GeoJSON text or RoiSet members: 32 MB for a 512x512 tile
_FLOOR = 1 << 16

Outlines = Sequence[Sequence[Sequence[np.ndarray]]]
"""Nuclei read from a file: per nucleus its polygons, per polygon its rings (exterior first, then holes), each
ring an (N, 2) array of (x, y)."""


# ----------------------------------------------------------------------------------------------------------
# Label images <-> (x, y) outlines
# ----------------------------------------------------------------------------------------------------------


def _outline(mask: np.ndarray):
    """The outline of a binary mask as a valid shapely Polygon in (col, row) mask coordinates, or None."""
    from scipy import ndimage as ndi
    from shapely import make_valid
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    filled = ndi.binary_fill_holes(mask)
    padded = np.pad(filled, 1).astype(np.float32)
    contours = find_contours(padded, 0.5, fully_connected="high")
    polygons = [Polygon(c[:, ::-1] - 1.0) for c in contours if len(c) >= 4]
    polygons = [p for p in polygons if p.area > 0]
    if not polygons:
        return None, 0
    polygon = max(polygons, key=lambda p: p.area)
    if not polygon.is_valid:
        fixed = make_valid(polygon)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon"]
        polygon = max(parts, key=lambda p: p.area) if parts else None
        if polygon is None:
            return None, len(polygons)
        polygon = Polygon(polygon.exterior)
    # drop collinear vertices (marching squares puts one on every pixel edge)
    simplified = polygon.simplify(0.0, preserve_topology=True)
    polygon = simplified if simplified.is_valid and simplified.geom_type == "Polygon" else polygon
    return polygon, len(polygons)


def instance_polygons(labels: np.ndarray) -> dict[int, np.ndarray]:
    """One closed outline per nucleus: label -> (N, 2) float64 (x, y) vertices, first vertex repeated last.

    Small nuclei still get a polygon: a single pixel becomes a diamond through its four edge midpoints.

    >>> labels = np.zeros((4, 4), np.int32); labels[1, 1] = 7
    >>> instance_polygons(labels)[7].tolist()
    [[2.0, 2.5], [1.5, 2.0], [2.0, 1.5], [2.5, 2.0], [2.0, 2.5]]
    """
    from scipy import ndimage as ndi
    from shapely.geometry.polygon import orient

    labels = np.asarray(labels)
    polygons: dict[int, np.ndarray] = {}
    pieces = 0
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        polygon, n_parts = _outline(labels[box] == index)
        if polygon is None:
            continue
        pieces += n_parts > 1
        polygon = orient(polygon, sign=1.0)
        xy = np.asarray(polygon.exterior.coords, dtype=np.float64)
        xy[:, 0] += box[1].start + XY_OFFSET  # crop (col, row) -> image (x, y)
        xy[:, 1] += box[0].start + XY_OFFSET
        polygons[index] = xy
    if pieces:
        logger.info("%d nuclei are in several pieces; their polygons outline the largest piece", pieces)
    return polygons


def rasterise_outlines(nuclei: Outlines, shape: tuple[int, int] = TILE_SHAPE) -> np.ndarray:
    """(x, y) outlines -> instance labels with the dataset's rasteriser: nucleus ``n`` is label ``n + 1``, the
    later nucleus wins where they overlap (``label masks modify``), a MultiPolygon's parts share one label and
    holes are cleared. Every ring is rasterised in one pass, so the work grows with the outlines' length and the
    pixels they fill (bounded beforehand by :func:`check_outlines` when reading files).

    Args:
        nuclei: see :data:`Outlines`.
        shape: the image (height, width).

    Returns:
        (H, W) int32 labels.

    >>> ring = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]])
    >>> rasterise_outlines([[[ring]]], (3, 4)).tolist()
    [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """
    rings, ring_part, is_hole, part_owner = [], [], [], []
    for n, polygons in enumerate(nuclei):
        for part in polygons:
            for k, ring in enumerate(part):
                rings.append(Nucleus(str(len(rings)), ring[:, 0], ring[:, 1], "polygon"))
                ring_part.append(len(part_owner))
                is_hole.append(k > 0)
            part_owner.append(n)
    size = shape[0] * shape[1]
    ring_index, pixel = polygon_pixels(rings, shape)
    keys = np.asarray(ring_part, np.int64)[ring_index] * size + pixel  # (part, pixel)
    hole = np.asarray(is_hole, bool)[ring_index]
    filled = keys[~hole]
    if hole.any():  # a part is its exterior's pixels less those of its holes
        filled = filled[~np.isin(filled, keys[hole])]
    part, pixel = np.divmod(filled, size)
    labels = np.zeros(size, np.int32)
    np.maximum.at(labels, pixel, np.asarray(part_owner, np.int32)[part] + 1)  # the later nucleus wins
    return labels.reshape(shape)


def _check_inside(nuclei: Outlines, shape: tuple[int, int], path: Path) -> None:
    """Outlines that all lie outside the image mean coordinates in another frame (e.g. a whole slide)."""
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


def _bound(per_pixel: int, shape: tuple[int, int]) -> int:
    return max(_FLOOR, per_pixel * shape[0] * shape[1])


def check_file_size(path: Path, size: int, shape: tuple[int, int]) -> None:
    """Refuse an outline file of ``size`` bytes (a RoiSet: its members unpacked) far beyond a tile's nuclei."""
    limit = _bound(_MAX_FILE_BYTES_PER_PIXEL, shape)
    if size > limit:
        raise ValueError(
            f"{path}: {size:,} bytes of outlines for a {shape[0]}x{shape[1]} image, more than the {limit:,} its "
            "nuclei could need; is this the file of one tile (not of a slide or a whole project)?"
        )


def check_outlines(nuclei: Outlines, shape: tuple[int, int], path: Path, names: Sequence[str]) -> None:
    """Refuse outlines that cannot be this image's nuclei, before any rasterising, so that a file's work is
    bounded by its image: every vertex within one image side of the image, no nucleus wholly outside it, at
    most 2 vertices and 1 px of outline per pixel of the image and 16 pixels filled per pixel (each with a floor
    of 65,536; see the measurements beside :data:`_MAX_VERTICES_PER_PIXEL`).

    Args:
        nuclei: see :data:`Outlines`.
        shape: the image (height, width).
        path: the file, for messages.
        names: how messages call each nucleus (``feature 12``, ``ROI 0001-0042``).

    Raises:
        ValueError: naming the file, the nucleus and the figure, and what to do.
    """
    height, width = shape
    _check_inside(nuclei, shape, path)
    rings = [ring for polygons in nuclei for part in polygons for ring in part]
    counts = np.array([len(ring) for ring in rings], dtype=np.int64)
    limit = _bound(_MAX_VERTICES_PER_PIXEL, shape)
    if counts.sum() > limit:
        raise ValueError(
            f"{path}: {counts.sum():,} vertices, more than the {limit:,} a {height}x{width} image's nuclei could "
            "need; simplify the outlines (e.g. QuPath's Simplify shape) or give the file of one tile"
        )
    if not counts.sum():
        return
    owner = np.repeat([n for n, polygons in enumerate(nuclei) for part in polygons for _ in part], counts)
    xy = np.concatenate(rings)
    far = np.flatnonzero(
        (xy[:, 0] < -width) | (xy[:, 0] > 2 * width) | (xy[:, 1] < -height) | (xy[:, 1] > 2 * height)
    )
    if far.size:
        x, y = xy[far[0]]
        raise ValueError(
            f"{path}: {names[owner[far[0]]]}: vertex ({x:g}, {y:g}) lies far outside the {height}x{width} image "
            f"(x within {-width}..{2 * width} and y within {-height}..{2 * height} expected); {far.size:,} "
            "vertices do; export the tile's nuclei in its pixel coordinates"
        )
    _check_each_overlaps(xy, owner, len(nuclei), shape, path, names)
    start = np.cumsum(counts) - counts
    steps = np.abs(xy - np.roll(xy, 1, axis=0)).max(axis=1)  # each vertex to the one before it
    closing = counts > 0
    steps[start[closing]] = np.abs(xy[start[closing]] - xy[(start + counts - 1)[closing]]).max(axis=1)
    length, limit = float(steps.sum()), _bound(_MAX_OUTLINE_PX_PER_PIXEL, shape)
    if length > limit:
        raise ValueError(
            f"{path}: the outlines are {length:,.0f} px long in all, more than the {limit:,} px a "
            f"{height}x{width} image's nuclei could need; give the file of one tile, or fewer nuclei"
        )
    low = np.clip(np.minimum.reduceat(xy, start[closing]), 0, [width, height])
    high = np.clip(np.maximum.reduceat(xy, start[closing]), 0, [width, height])
    filled, limit = int(np.prod(high - low + 1, axis=1).sum()), _bound(_MAX_FILLED_PER_PIXEL, shape)
    if filled > limit:
        raise ValueError(
            f"{path}: the outlines' bounding boxes cover {filled:,} pixels in all, more than {limit:,} "
            f"({_MAX_FILLED_PER_PIXEL} layers of the {height}x{width} image); are these nuclei, and of this image?"
        )


def _check_each_overlaps(xy, owner, n_nuclei, shape, path: Path, names: Sequence[str]) -> None:
    """Refuse a nucleus whose every vertex lies on one side outside the image: it would vanish from the labels."""
    height, width = shape
    low = np.full((n_nuclei, 2), np.inf)
    high = np.full((n_nuclei, 2), -np.inf)
    np.minimum.at(low, owner, xy)
    np.maximum.at(high, owner, xy)
    present = np.isfinite(low[:, 0])
    outside = present & ((high[:, 0] <= 0) | (high[:, 1] <= 0) | (low[:, 0] >= width) | (low[:, 1] >= height))
    if outside.any():
        n = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{path}: {names[n]} lies wholly outside the {height}x{width} image (x {low[n, 0]:g}..{high[n, 0]:g}, "
            f"y {low[n, 1]:g}..{high[n, 1]:g}); {int(outside.sum())} nuclei do; remove them, or export the tile's "
            "nuclei in its pixel coordinates"
        )


# ----------------------------------------------------------------------------------------------------------
# QuPath GeoJSON
# ----------------------------------------------------------------------------------------------------------


def geojson_features(polygons: Mapping[int, np.ndarray], records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """QuPath detections: one GeoJSON Feature per nucleus with its Polygon and its measurements.

    Args:
        polygons: label -> (x, y) outline, as :func:`instance_polygons` gives.
        records: one per nucleus, in the order of the features: its ``label``, its ``roi_name`` (the feature's
            name) and its measurements (every other key).
    """
    features = []
    for record in records:
        label = record["label"]
        if label not in polygons:
            continue
        ring = np.round(polygons[label], 3).tolist()
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(_UUID_NAMESPACE, f"{label}:{ring[0]}")),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "name": record["roi_name"],
                    "classification": {"name": "Nucleus", "color": list(NUCLEUS_COLOUR)},
                    "measurements": {k: v for k, v in record.items() if k != "roi_name"},
                },
            }
        )
    return features


def write_geojson(
    path: Path, polygons: Mapping[int, np.ndarray], records: Sequence[Mapping[str, Any]]
) -> Path:
    """A GeoJSON FeatureCollection of detections that QuPath imports (File > Import objects); see
    :func:`geojson_features`."""
    collection = {"type": "FeatureCollection", "features": geojson_features(polygons, records)}
    path.write_text(json.dumps(collection, separators=(",", ":")))
    return path


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


def _features(data: Any, where: str) -> list:
    """The features of a parsed GeoJSON document, whatever its layout."""
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
    return features


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
        One entry per nucleus, in file order (see :data:`Outlines`), rings as float64 (x, y).

    Raises:
        ValueError: not GeoJSON features, or a geometry that is not an area (the message names the feature).

    >>> square = [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]
    >>> len(geojson_outlines({"type": "MultiPolygon", "coordinates": [square, square]})[0])
    2
    """
    return _geojson_nuclei(data, where, object_types)[0]


def _geojson_nuclei(data: Any, where: str, object_types: Iterable[str] | None) -> tuple[list, list[str]]:
    """:func:`geojson_outlines`, and how messages call each nucleus (``feature 12``: its index in the file)."""
    wanted = set(object_types) if object_types is not None else None
    nuclei, names = [], []
    for index, feature in enumerate(_features(data, where)):
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
        names.append(f"feature {index}")
    return nuclei, names


def read_geojson_labels(
    path: str | Path, shape: tuple[int, int] = TILE_SHAPE, object_types: Iterable[str] | None = None
) -> np.ndarray:
    """Instance labels from a QuPath GeoJSON file (see :func:`geojson_outlines`, :func:`rasterise_outlines`).

    Raises:
        ValueError: not JSON, not GeoJSON features, a geometry that is not an area, or outlines that cannot be the
            image's nuclei (:func:`check_file_size`, :func:`check_outlines`); the message names the file.
    """
    path = Path(path)
    try:
        check_file_size(path, path.stat().st_size, shape)
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    except RecursionError:  # lists nested thousands deep: no GeoJSON nests deeper than five
        raise ValueError(f"{path}: JSON nested thousands of levels deep; not GeoJSON outlines") from None
    except OSError as error:
        raise OSError(f"{path}: cannot be read ({error.strerror or error})") from None
    nuclei, names = _geojson_nuclei(data, str(path), object_types)
    check_outlines(nuclei, shape, path, names)
    return rasterise_outlines(nuclei, shape)


# ----------------------------------------------------------------------------------------------------------
# ImageJ RoiSets
# ----------------------------------------------------------------------------------------------------------


def write_roiset(
    path: Path, polygons: Mapping[int, np.ndarray], records: Sequence[Mapping[str, Any]]
) -> Path:
    """An ImageJ RoiSet zip (the annotations' format), one freehand ROI per nucleus named by its record's
    ``roi_name`` (records as for :func:`geojson_features`)."""
    nuclei = [
        Nucleus(
            name=record["roi_name"],
            x=polygons[record["label"]][:-1, 0].astype(np.float32),
            y=polygons[record["label"]][:-1, 1].astype(np.float32),
            roi_type="freehand",
        )
        for record in records
        if record["label"] in polygons
    ]
    return write_roi_set(path, nuclei)


def read_roiset_labels(path: str | Path, shape: tuple[int, int] = TILE_SHAPE) -> np.ndarray:
    """Instance labels from an ImageJ RoiSet, exactly as the dataset's ``label masks modify`` were made.

    Raises:
        ValueError: (:class:`cryonuseg_hf.data.rois.RoiError`) not a RoiSet, or a ROI that is not an area; or
            outlines that cannot be the image's nuclei (:func:`check_file_size`, :func:`check_outlines`). The
            message names the file.
    """
    path = Path(path)
    try:
        check_file_size(path, _roiset_bytes(path), shape)
    except OSError as error:
        raise OSError(f"{path}: cannot be read ({error.strerror or error})") from None
    nuclei = read_roi_set(path)
    outlines = [[[np.stack([n.x, n.y], axis=1)]] for n in nuclei]
    check_outlines(outlines, shape, path, [f"ROI {n.name}" for n in nuclei])
    return rasterise_outlines(outlines, shape)


def _roiset_bytes(path: Path) -> int:
    """The bytes of a RoiSet's ``.roi`` files, unpacked (a zip's own record of its members), before reading any."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.roi"))
    if path.suffix.lower() != ".zip" or not zipfile.is_zipfile(path):
        return path.stat().st_size if path.is_file() else 0  # read_roi_set names what is wrong
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(m.file_size for m in archive.infolist() if m.filename.lower().endswith(".roi"))
    except zipfile.BadZipFile:
        return path.stat().st_size  # read_roi_set names what is wrong
