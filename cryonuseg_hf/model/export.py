"""Instance labels -> the files pathologists open: label TIFF, overlay PNG, QuPath GeoJSON, ImageJ ROIs, CSV.

Coordinates: inside, labels are (row, col) arrays. At the file boundary (GeoJSON, ROIs, CSV) positions are (x, y)
pixel coordinates in the frame of the CryoNuSeg annotations: label pixel ``[i, j]`` is the pixel whose centre the
annotations' rasteriser (:func:`cryonuseg_hf.data.masks.polygon_mask`, MATLAB's ``poly2mask``, which made the released
masks the model learned from) puts at ``(x, y) = (j + 1, i + 1)``. Predicted ROIs therefore sit where an
annotator's ROI of the same nucleus sits in Fiji or QuPath, and ``masks.instance_masks(rois.read_roi_set(zip))``
gives the label image back. (In ImageJ's own convention a pixel centre is at ``j + 0.5``: the released masks are
half a pixel off the ROIs, and the outputs follow the ROIs.) ``XY_OFFSET`` holds this, used in
:func:`instance_polygons` and :func:`nucleus_measurements` and nowhere else.

Outlines are traced between the centres of pixels inside and outside the nucleus (marching squares at level
0.5), so a polygon holds exactly the centres of its nucleus's pixels and nothing else. Each nucleus becomes one
valid simple polygon (QuPath rejects self-intersections): holes are filled, and a nucleus in several pieces keeps
the outline of its largest piece (logged; the label TIFF keeps every pixel). its largest piece (logged; the label TIFF keeps every pixel).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

OUTPUT_KINDS = ("labels", "overlay", "geojson", "rois", "csv")
MEASUREMENTS = (
    "label",
    "roi_name",
    "centroid_x",
    "centroid_y",
    "area_px",
    "perimeter_px",
    "equivalent_diameter_px",
    "major_axis_px",
    "minor_axis_px",
    "eccentricity",
    "solidity",
    "bbox_x",
    "bbox_y",
    "bbox_width",
    "bbox_height",
    "mean_red",
    "mean_green",
    "mean_blue",
)
"""CSV columns, and GeoJSON measurements (all but ``roi_name``); lengths and areas in pixels."""
OVERLAY_COLOUR = (0, 255, 0)
XY_OFFSET = 1.0
"""(x, y) of the centre of label pixel ``[0, 0]`` (see the module docstring)."""
_UUID_NAMESPACE = uuid.UUID("6f1c2f0e-5a55-4c1b-9a63-1f0c8a3e2b7d")


def output_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Where :func:`write_outputs` puts each file for an image named ``stem``."""
    out_dir = Path(out_dir)
    return {
        "labels": out_dir / f"{stem}_labels.tif",
        "overlay": out_dir / f"{stem}_overlay.png",
        "geojson": out_dir / f"{stem}.geojson",
        "rois": out_dir / f"{stem}_RoiSet.zip",
        "csv": out_dir / f"{stem}_nuclei.csv",
    }


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


def roi_names(measurements: list[dict]) -> list[str]:
    """ImageJ-style ROI names ``yyyy-xxxx`` (centroid row and column), made unique with ``-2``, ``-3``..."""
    names, seen = [], {}
    for row in measurements:
        base = f"{int(row['centroid_y']):04d}-{int(row['centroid_x']):04d}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def nucleus_measurements(labels: np.ndarray, image: np.ndarray) -> list[dict]:
    """One record per nucleus with the columns of ``MEASUREMENTS`` (x, y in image pixel coordinates)."""
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if not labels.any():
        return []
    table = regionprops_table(
        labels,
        intensity_image=image,
        properties=(
            "label",
            "centroid",
            "area",
            "perimeter",
            "equivalent_diameter_area",
            "axis_major_length",
            "axis_minor_length",
            "eccentricity",
            "solidity",
            "bbox",
            "intensity_mean",
        ),
    )
    records = []
    for i in range(len(table["label"])):
        records.append(
            {
                "label": int(table["label"][i]),
                "centroid_x": round(float(table["centroid-1"][i]) + XY_OFFSET, 3),
                "centroid_y": round(float(table["centroid-0"][i]) + XY_OFFSET, 3),
                "area_px": int(table["area"][i]),
                "perimeter_px": round(float(table["perimeter"][i]), 3),
                "equivalent_diameter_px": round(float(table["equivalent_diameter_area"][i]), 3),
                "major_axis_px": round(float(table["axis_major_length"][i]), 3),
                "minor_axis_px": round(float(table["axis_minor_length"][i]), 3),
                "eccentricity": round(float(table["eccentricity"][i]), 4),
                "solidity": round(float(table["solidity"][i]), 4),
                "bbox_x": float(table["bbox-1"][i]) + XY_OFFSET - 0.5,
                "bbox_y": float(table["bbox-0"][i]) + XY_OFFSET - 0.5,
                "bbox_width": int(table["bbox-3"][i] - table["bbox-1"][i]),
                "bbox_height": int(table["bbox-2"][i] - table["bbox-0"][i]),
                "mean_red": round(float(table["intensity_mean-0"][i]), 2),
                "mean_green": round(float(table["intensity_mean-1"][i]), 2),
                "mean_blue": round(float(table["intensity_mean-2"][i]), 2),
            }
        )
    for record, name in zip(records, roi_names(records), strict=True):
        record["roi_name"] = name
    return records


def write_label_tiff(path: Path, labels: np.ndarray) -> Path:
    """Instance labels as a zlib-compressed TIFF: uint16 when the ids fit, else uint32."""
    import tifffile

    dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    tifffile.imwrite(path, labels.astype(dtype, copy=False), compression="zlib", photometric="minisblack")
    return path


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray, band: int = 1024) -> Path:
    """The image with each nucleus's inner boundary drawn in ``OVERLAY_COLOUR``, as PNG.

    Boundaries are found in bands of ``band`` rows (with one row of context each side), so a large image needs
    only a band's worth of temporary memory.
    """
    from PIL import Image
    from skimage.segmentation import find_boundaries

    overlay = image.copy()
    for start in range(0, labels.shape[0], band):
        stop = min(start + band, labels.shape[0])
        lo, hi = max(start - 1, 0), min(stop + 1, labels.shape[0])
        edges = find_boundaries(labels[lo:hi], mode="inner")[start - lo : start - lo + stop - start]
        overlay[start:stop][edges] = OVERLAY_COLOUR
    Image.fromarray(overlay).save(path, compress_level=3)
    return path


def geojson_features(polygons: dict[int, np.ndarray], measurements: list[dict]) -> list[dict]:
    """QuPath detections: one GeoJSON Feature per nucleus with a Polygon and its measurements."""
    features = []
    for record in measurements:
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
                    "classification": {"name": "Nucleus", "color": list(OVERLAY_COLOUR)},
                    "measurements": {k: v for k, v in record.items() if k != "roi_name"},
                },
            }
        )
    return features


def write_geojson(path: Path, polygons: dict[int, np.ndarray], measurements: list[dict]) -> Path:
    """A GeoJSON FeatureCollection of detections that QuPath imports (File > Import objects)."""
    collection = {"type": "FeatureCollection", "features": geojson_features(polygons, measurements)}
    path.write_text(json.dumps(collection, separators=(",", ":")))
    return path


def write_rois(path: Path, polygons: dict[int, np.ndarray], measurements: list[dict]) -> Path:
    """An ImageJ RoiSet zip (the annotations' format), one freehand ROI per nucleus named as in the CSV."""
    from cryonuseg_hf.data.rois import Nucleus, write_roi_set

    nuclei = [
        Nucleus(
            name=record["roi_name"],
            x=polygons[record["label"]][:-1, 0].astype(np.float32),
            y=polygons[record["label"]][:-1, 1].astype(np.float32),
            roi_type="freehand",
        )
        for record in measurements
        if record["label"] in polygons
    ]
    return write_roi_set(path, nuclei)


def write_measurements_csv(path: Path, measurements: list[dict]) -> Path:
    """One row per nucleus with the ``MEASUREMENTS`` columns."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MEASUREMENTS)
        writer.writeheader()
        writer.writerows(measurements)
    return path


def write_outputs(
    image: np.ndarray, labels: np.ndarray, out_dir: str | os.PathLike, stem: str, overwrite: bool = False
) -> dict[str, Path]:
    """Write every output of one image (see :func:`output_paths`) as one set: all of them or none.

    Each file is written under a temporary name in ``out_dir`` first; only when all five are complete are they
    renamed into place. Files they replace are moved aside first and put back if any rename fails, so a failure
    leaves either the old set or nothing, never a mix of old and new files.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) integer instance labels.
        out_dir: existing folder.
        stem: base name of the files.
        overwrite: replace existing files.

    Returns:
        output kind -> path written.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is False, or an output path is not a file (nothing
            is written then).
        OSError: a file cannot be written or renamed; the old set is back in place and no new file is left.
    """
    import tempfile

    paths = output_paths(out_dir, stem)
    existing = [p for p in paths.values() if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(
            f"outputs exist already: {', '.join(map(str, existing))}; pass overwrite=True to replace them"
        )
    not_files = [str(p) for p in existing if p.is_dir() or not (p.is_file() or p.is_symlink())]
    if not_files:
        raise FileExistsError(
            f"{', '.join(not_files)}: an output path is taken by something that is not a file; move it away"
        )
    if labels.shape != image.shape[:2]:
        raise ValueError(f"{stem}: labels {labels.shape} do not match the image {image.shape[:2]}")
    measurements = nucleus_measurements(labels, image)
    polygons = instance_polygons(labels)
    writers = {
        "labels": lambda p: write_label_tiff(p, labels),
        "overlay": lambda p: write_overlay(p, image, labels),
        "geojson": lambda p: write_geojson(p, polygons, measurements),
        "rois": lambda p: write_rois(p, polygons, measurements),
        "csv": lambda p: write_measurements_csv(p, measurements),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}.writing-", dir=out_dir))
    try:
        for kind, path in paths.items():
            writers[kind](staging / path.name)
        _swap_in({staging / p.name: p for p in paths.values()}, staging)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return paths


def _swap_in(moves: dict[Path, Path], aside: Path) -> None:
    """Rename every ``new -> target`` together: old targets go into ``aside`` first and come back on failure."""
    moved_aside: list[Path] = []
    placed: list[Path] = []
    try:
        for target in moves.values():
            if target.exists() or target.is_symlink():
                os.replace(target, aside / f"old-{target.name}")
                moved_aside.append(target)
        for new, target in moves.items():
            os.replace(new, target)
            placed.append(target)
    except OSError:
        for target in placed:
            target.unlink(missing_ok=True)
        for target in moved_aside:
            os.replace(aside / f"old-{target.name}", target)
        raise
