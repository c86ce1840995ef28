"""cryonuseg_hf.data.outlines: label images written as GeoJSON and RoiSets read back pixel for pixel, in the frame
of the CryoNuSeg annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryonuseg_hf.data.outlines import (
    XY_OFFSET,
    instance_polygons,
    read_geojson_labels,
    read_roiset_labels,
    write_geojson,
    write_roiset,
)

PREDICTIONS = Path(__file__).resolve().parents[1] / "results" / "cv" / "predictions"


def _round_trip(labels: np.ndarray, folder: Path, stem: str) -> dict[str, np.ndarray]:
    """``labels`` written as GeoJSON and as a RoiSet and read back, with the original ids."""
    polygons = instance_polygons(labels)
    # zero-padded names: a RoiSet is read in file-name order, and that is the label order here
    records = [{"label": k, "roi_name": f"{k:05d}"} for k in polygons]
    original = np.array([0, *polygons])
    geojson = write_geojson(folder / f"{stem}.geojson", polygons, records)
    roiset = write_roiset(folder / f"{stem}_RoiSet.zip", polygons, records)
    return {
        "geojson": original[read_geojson_labels(geojson, labels.shape)],
        "roiset": original[read_roiset_labels(roiset, labels.shape)],
    }


def test_a_pixel_is_centred_at_the_annotations_coordinates(tmp_path):
    labels = np.zeros((6, 8), np.int32)
    labels[2, 5] = 3
    ring = instance_polygons(labels)[3]
    assert ring[:-1].mean(axis=0).tolist() == [5 + XY_OFFSET, 2 + XY_OFFSET]  # (x, y) of pixel [2, 5]
    for kind, back in _round_trip(labels, tmp_path, "one").items():
        assert np.array_equal(back, labels), kind


def test_nuclei_on_the_border_and_touching_come_back(tmp_path):
    from skimage.draw import disk

    labels = np.zeros((40, 50), np.int32)
    for k, (centre, radius) in enumerate([((0, 0), 6), ((20, 49), 7), ((20, 25), 8), ((20, 38), 5)], 1):
        labels[disk(centre, radius, shape=labels.shape)] = k
    for kind, back in _round_trip(labels, tmp_path, "disks").items():
        assert np.array_equal(back, labels), kind


def test_every_cv_prediction_comes_back_pixel_for_pixel(tmp_path):
    """The CV's predictions have no background pockets inside a nucleus (post-processing fills them), so their
    outlines give back every pixel: GeoJSON and RoiSet exports score exactly as the label images."""
    from PIL import Image

    files = sorted(PREDICTIONS.glob("Human_*.png"))
    if len(files) != 30:
        pytest.skip(f"{PREDICTIONS}: the CV predictions are not in this checkout (`cryonuseg-hf train --cv`)")
    for path in files:
        labels = np.asarray(Image.open(path)).astype(np.int32)
        for kind, back in _round_trip(labels, tmp_path, path.stem).items():
            assert np.array_equal(back, labels), (path.name, kind)
