"""Instance labels -> the files pathologists open: label TIFF, overlay PNG, QuPath GeoJSON, ImageJ ROIs, CSV.

The outlines in GeoJSON and ROIs, their coordinate convention and their readers are in
:mod:`cryonuseg_hf.data.outlines`; this module adds the per-nucleus measurements (CSV columns and GeoJSON
measurements, positions in the same (x, y) frame: :data:`cryonuseg_hf.data.outlines.XY_OFFSET`), the label TIFF
and the overlay, and writes the five files of an image as one set.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.files import staged_files
from cryonuseg_hf.data.outlines import (
    NUCLEUS_COLOUR,
    XY_OFFSET,
    instance_polygons,
    write_geojson,
    write_roiset,
)

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
    """The image with each nucleus's inner boundary drawn in ``NUCLEUS_COLOUR``, as PNG.

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
        overlay[start:stop][edges] = NUCLEUS_COLOUR
    Image.fromarray(overlay).save(path, compress_level=3)
    return path


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
    """Write every output of one image (see :func:`output_paths`) as one set: all of them or none
    (:func:`cryonuseg_hf.core.files.staged_files`).

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
        "rois": lambda p: write_roiset(p, polygons, measurements),
        "csv": lambda p: write_measurements_csv(p, measurements),
    }
    with staged_files(paths) as staged:
        for kind, path in staged.items():
            writers[kind](path)
    return paths
