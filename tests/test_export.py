"""Exported files (label TIFF, overlay, GeoJSON, ImageJ ROIs, CSV) on real annotations, and the ONNX export check."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def annotated(release):
    """A real tile and its Annotator 1 round 2 instance labels (label masks modify)."""
    from cryonuseg_hf.data.readers import read_mask
    from cryonuseg_hf.model.images import read_image

    tile = "Human_Thymus_01"  # the most crowded tile: 666 nuclei, many touching
    labels = read_mask(release.markups["annotator1_round2"].variants["label_masks_modify"][tile]).astype(
        np.int32
    )
    return read_image(release.images[tile]), labels


@pytest.fixture(scope="module")
def written(annotated, tmp_path_factory):
    from cryonuseg_hf.model.export import write_outputs

    image, labels = annotated
    return write_outputs(image, labels, tmp_path_factory.mktemp("out"), "thymus")


def _single_piece(labels: np.ndarray) -> set[int]:
    from scipy import ndimage as ndi

    keep = set()
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None and ndi.label(labels[box] == index, structure=np.ones((3, 3)))[1] == 1:
            keep.add(index)
    return keep


def test_label_tiff_and_overlay(written, annotated):
    import tifffile
    from PIL import Image

    image, labels = annotated
    back = tifffile.imread(written["labels"])
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    overlay = np.asarray(Image.open(written["overlay"]))
    assert overlay.shape == image.shape
    changed = (overlay != image).any(axis=2)
    assert changed.any() and not changed[labels == 0].any()  # contours drawn inside nuclei only


def test_geojson_is_qupath_detections_with_valid_polygons(written, annotated):
    from shapely.geometry import shape

    image, labels = annotated
    collection = json.loads(written["geojson"].read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(np.unique(labels)) - 1
    ids = set()
    for feature in features:
        props = feature["properties"]
        assert props["objectType"] == "detection"
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 4
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.is_simple, props["name"]
        x0, y0, x1, y1 = polygon.bounds
        assert 0 <= x0 and 0 <= y0 and x1 <= labels.shape[1] + 1 and y1 <= labels.shape[0] + 1
        m = props["measurements"]
        assert m["area_px"] == np.count_nonzero(labels == m["label"])
        # the centroid lies in the polygon's area for compact shapes; always within its bounds
        assert x0 <= m["centroid_x"] <= x1 and y0 <= m["centroid_y"] <= y1
        ids.add(feature["id"])
    assert len(ids) == len(features)


def test_rois_round_trip_through_the_annotation_reader(written, annotated):
    """Fiji's format: roifile reads it, and the annotations' own rasteriser gives the label image back."""
    import roifile

    from cryonuseg_hf.data.masks import instance_masks
    from cryonuseg_hf.data.rois import read_roi_set
    from cryonuseg_hf.evaluation.metrics import score_tile

    _, labels = annotated
    assert len(roifile.roiread(written["rois"])) == len(np.unique(labels)) - 1
    nuclei = read_roi_set(written["rois"])
    rows = {r["roi_name"]: int(r["label"]) for r in csv.DictReader(open(written["csv"]))}
    _, back = instance_masks(nuclei, labels.shape)
    lookup = np.array([0] + [rows[n.name] for n in nuclei])
    back = lookup[back]
    assert score_tile(labels, back)["pq"] > 0.99
    # exact for every nucleus in one piece (the rest keep the outline of their largest piece)
    for index in _single_piece(labels):
        assert np.array_equal(back == index, labels == index), index


def test_csv_has_one_row_per_nucleus(written, annotated):
    from cryonuseg_hf.model.export import MEASUREMENTS

    image, labels = annotated
    rows = list(csv.DictReader(open(written["csv"])))
    assert tuple(rows[0]) == MEASUREMENTS
    assert sorted(int(r["label"]) for r in rows) == sorted(np.unique(labels)[1:].tolist())
    assert sum(int(r["area_px"]) for r in rows) == np.count_nonzero(labels)
    first = next(r for r in rows if int(r["label"]) == int(labels.max()))
    rr, cc = np.nonzero(labels == int(first["label"]))
    assert float(first["centroid_x"]) == pytest.approx(cc.mean() + 1.0, abs=1e-3)  # XY_OFFSET frame
    assert float(first["mean_red"]) == pytest.approx(image[rr, cc, 0].mean(), abs=0.01)
    assert len({r["roi_name"] for r in rows}) == len(rows)


def test_outputs_never_overwritten_silently(tmp_path):
    from cryonuseg_hf.model.export import write_outputs

    image = np.full((20, 20, 3), 200, np.uint8)
    labels = np.zeros((20, 20), np.int32)
    labels[5:9, 5:10] = 1
    paths = write_outputs(image, labels, tmp_path, "x")
    paths["csv"].write_text("mine")
    with pytest.raises(FileExistsError, match="x_nuclei.csv"):
        write_outputs(image, labels, tmp_path, "x")
    assert paths["csv"].read_text() == "mine"
    write_outputs(image, labels, tmp_path, "x", overwrite=True)
    assert paths["csv"].read_text() != "mine"


def test_empty_and_tiny_instances():
    from cryonuseg_hf.data.outlines import geojson_features, instance_polygons
    from cryonuseg_hf.model.export import nucleus_measurements

    image = np.zeros((1, 1, 3), np.uint8)
    assert nucleus_measurements(np.zeros((1, 1), np.int32), image) == []
    one = np.ones((1, 1), np.int32)
    polygons = instance_polygons(one)
    assert len(polygons[1]) == 5
    assert len(geojson_features(polygons, nucleus_measurements(one, image))) == 1


def test_self_touching_shapes_become_valid_polygons():
    """Pixels joined only at a corner would make a bow-tie outline, which QuPath rejects."""
    from shapely.geometry import Polygon

    from cryonuseg_hf.data.outlines import instance_polygons

    labels = np.zeros((8, 8), np.int32)
    labels[1:3, 1:3] = 1
    labels[3:5, 3:5] = 1  # touches the first square at one corner
    labels[2:7, 5] = 2
    labels[4, 4:7] = 2
    for ring in instance_polygons(labels).values():
        assert Polygon(ring).is_valid


# ------------------------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    from cryonuseg_hf.model.segformer import build_model, save_checkpoint

    return save_checkpoint(
        build_model("tiny", input_scale=2.0, seed=1), tmp_path_factory.mktemp("tiny2"), fp16=False
    )


@pytest.fixture(scope="module")
def exported(checkpoint, release, tmp_path_factory):
    """The tiny checkpoint exported once, checked on a whole real tile and a non-square crop of another."""
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.onnx_backend import export_onnx

    tiles = [read_image(release.images[t]) for t in ("Human_Skin_01", "Human_Testes_02")]
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    report = export_onnx(checkpoint, path, images=[tiles[0], tiles[1][10:210, 30:330]])
    return path, report, tiles


def test_onnx_export_matches_torch_on_real_tiles(exported):
    from cryonuseg_hf.model.onnx_backend import LOGIT_TOLERANCE

    path, report, _ = exported
    assert path.is_file()
    assert report["max_abs_logit_diff"] <= LOGIT_TOLERANCE
    assert report["images"] == [[512, 512, 3], [200, 300, 3]]


def test_onnx_mismatch_fails_loudly(checkpoint, exported, tmp_path):
    """A session that computes something else must be caught by the comparison and refused by the export."""
    import onnxruntime as ort
    import torch

    from cryonuseg_hf.model.onnx_backend import OnnxMismatchError, compare_with_torch, export_onnx
    from cryonuseg_hf.model.segformer import load_torch_module

    path, _, tiles = exported
    tile = tiles[0][:128, :128]
    module, _ = load_torch_module(checkpoint)
    with torch.no_grad():
        module.model.decode_head.classifier.bias[1] += 0.01  # a small change of one class's logit
    session = ort.InferenceSession(str(path))
    report = compare_with_torch(
        module, lambda b: tuple(session.run(["probabilities", "logits"], {"images": b})), [tile]
    )
    assert report["max_abs_logit_diff"] == pytest.approx(0.01, abs=1e-3)
    with pytest.raises(OnnxMismatchError, match="differs from torch"):
        export_onnx(checkpoint, tmp_path / "b.onnx", images=[tile], tolerance=-1.0)
    assert not (tmp_path / "b.onnx").exists() and not list(tmp_path.glob("*.partial"))


def test_onnx_cache_is_keyed_by_checkpoint_hash(checkpoint, tmp_path, monkeypatch):
    import shutil

    import cryonuseg_hf.model.onnx_backend as onnx_backend

    exports = []

    def fake_export(model_path, out_path, head="stock"):  # the export itself is tested above; here the cache
        exports.append(model_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(b"onnx")

    monkeypatch.setattr(onnx_backend, "export_onnx", fake_export)
    monkeypatch.setenv("CRYONUSEG_HF_CACHE", str(tmp_path / "cache"))
    first = onnx_backend.cached_onnx(checkpoint)
    assert first.parent == tmp_path / "cache" and exports == [checkpoint]
    assert onnx_backend.cached_onnx(checkpoint) == first and len(exports) == 1  # no second export
    changed = tmp_path / "changed"
    shutil.copytree(checkpoint, changed)
    config = json.loads((changed / "config.json").read_text())
    config["cryonuseg_input_scale"] = 1.0
    (changed / "config.json").write_text(json.dumps(config))
    assert onnx_backend.checkpoint_hash(changed) != onnx_backend.checkpoint_hash(checkpoint)
    assert onnx_backend.cached_onnx(changed) != first and exports == [checkpoint, changed]
