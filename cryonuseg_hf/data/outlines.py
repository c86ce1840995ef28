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
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.masks import instance_masks
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
    holes are cleared.

    Args:
        nuclei: see :data:`Outlines`.
        shape: the image (height, width).

    Returns:
        (H, W) int32 labels.

    >>> ring = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]])
    >>> rasterise_outlines([[[ring]]], (3, 4)).tolist()
    [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """

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
    wanted = set(object_types) if object_types is not None else None
    nuclei = []
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
    return nuclei


def read_geojson_labels(
    path: str | Path, shape: tuple[int, int] = TILE_SHAPE, object_types: Iterable[str] | None = None
) -> np.ndarray:
    """Instance labels from a QuPath GeoJSON file (see :func:`geojson_outlines`, :func:`rasterise_outlines`).

    Raises:
        ValueError: not JSON, not GeoJSON features, a geometry that is not an area, or outlines that all lie
            outside the image; the message names the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    nuclei = geojson_outlines(data, str(path), object_types)
    _check_inside(nuclei, shape, path)
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
            outlines that all lie outside the image. The message names the file.
    """
    path = Path(path)
    nuclei = read_roi_set(path)
    outlines = [[[np.stack([n.x, n.y], axis=1)]] for n in nuclei]
    _check_inside(outlines, shape, path)
    return instance_masks(nuclei, shape)[1].astype(np.int32)
