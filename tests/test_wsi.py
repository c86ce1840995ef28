"""Whole slides: pyramidal TIFFs written here from real CryoNuSeg tiles at known level-0 positions.

The tiles sit on white glass, so the slide has blank areas that tissue detection must skip. Most tests use the
local stand-in model of ``test_predict`` (dark blobs), which depends only on a small neighbourhood: the slide's
nuclei must then equal, exactly, those of the stand-in run on the whole mosaic in memory.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_predict import _local_nuclei

MPP = 0.2485  # a TCGA slide's (Human_AdrenalGland_01's); the model's is the median, 0.2505
SPOTS = {  # tile -> (row, col) of its top-left corner at level 0
    "Human_Skin_01": (0, 512),
    "Human_Larynx_02": (0, 1024),
    "Human_Thymus_01": (512, 1024),
    "Human_Pleura_03": (1024, 2048),
}


@pytest.fixture(scope="module")
def mosaic(release):
    from cryonuseg_hf.model.images import read_image

    image = np.full((1536, 2560, 3), 255, np.uint8)
    for tile, (row, col) in SPOTS.items():
        image[row : row + 512, col : col + 512] = read_image(release.images[tile])
    return image


@pytest.fixture(scope="module")
def slide(mosaic, tmp_path_factory):
    from cryonuseg_hf.model.slides.pyramid import write_pyramid

    return write_pyramid(tmp_path_factory.mktemp("slide") / "slide.tif", mosaic, MPP, steps=(1, 4, 16))


@pytest.fixture(scope="module")
def whole(mosaic):
    """The stand-in's nuclei of the whole mosaic, labelled in one piece."""
    from cryonuseg_hf.model.tiling import predict_tiled

    return predict_tiled(mosaic, _local_nuclei, tile_size=4096)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _centroids(labels, image, scale=1.0):
    """Sorted (x, y) centroids of labels in an image whose pixel is ``scale`` level-0 pixels (export frame)."""
    from cryonuseg_hf.model.export import nucleus_measurements

    xy = [(r["centroid_x"], r["centroid_y"]) for r in nucleus_measurements(labels, image)]
    return sorted(((x - 0.5) * scale + 0.5, (y - 0.5) * scale + 0.5) for x, y in xy)


def test_slide_nuclei_equal_the_mosaic_exactly_and_blank_glass_is_skipped(slide, mosaic, whole, tmp_path):
    import tifffile

    from cryonuseg_hf.data.masks import instance_masks
    from cryonuseg_hf.data.rois import Nucleus
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.slides.predict import predict_slide
    from cryonuseg_hf.model.tissue import tissue_pixels

    seen = []

    def model(window):
        seen.append(tissue_pixels(window).any())
        return _local_nuclei(window)

    # blocks of 1024 model pixels: the mosaic is cut into 2x3 blocks whose seams run through the tiles
    summary = predict_slide(slide, tmp_path, model, labels=True, block_size=1024, tile_size=512)
    out = {k: tmp_path / p.split("/")[-1] for k, p in summary["outputs"].items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in out.values())

    # every nucleus exactly once, at its level-0 pixels: the label pyramid's level 0 is the mosaic's labelling
    labels = tifffile.imread(out["labels"]).astype(np.int32)
    assert (
        labels.shape == whole.shape and summary["nuclei"] == labels.max() == len(np.unique(whole)) - 1 > 300
    )
    assert score_tile(whole, labels)["pq"] == 1.0 and ((labels > 0) == (whole > 0)).all()
    # the CSV's centroids are those of the mosaic's nuclei, to the digit
    rows = _rows(out["csv"])
    got = sorted((float(r["centroid_x"]), float(r["centroid_y"])) for r in rows)
    np.testing.assert_allclose(got, _centroids(whole, mosaic), atol=1e-3)
    # each nucleus sits on one of the tiles placed at known positions, none on glass
    for x, y in got:
        assert any(r <= y - 1 < r + 512 and c <= x - 1 < c + 512 for r, c in SPOTS.values()), (x, y)
    # the GeoJSON outlines rasterise back to the same nuclei (holes filled: PQ just under 1)
    features = json.loads(out["geojson"].read_text())["features"]
    assert len(features) == len(rows) and features[0]["properties"]["objectType"] == "detection"
    assert {"area_px", "area_um2", "solidity"} <= set(features[0]["properties"]["measurements"])
    nuclei = [
        Nucleus(str(i), *np.asarray(f["geometry"]["coordinates"][0], np.float32)[:-1].T, "polygon")
        for i, f in enumerate(features)
    ]
    assert score_tile(whole, instance_masks(nuclei, whole.shape)[1].astype(np.int32))["pq"] >= 0.99

    # tissue: the four tiles (4 x 0.0162 mm2, plus a one-pixel rim at 4 um/px); glass never reaches the model
    assert 0.064 <= summary["tissue_mm2"] <= 0.075
    assert summary["blocks_with_tissue"] < summary["blocks"] and summary["tiles_skipped_blank"] > 0
    assert all(seen) and len(seen) == summary["tiles_run"]
    assert summary["duplicates_dropped"] == summary["touching_cut_edge"] == 0
    assert json.loads(out["summary"].read_text())["nuclei"] == summary["nuclei"]


def test_roi_keeps_the_nuclei_centred_inside(slide, mosaic, whole, tmp_path):
    from cryonuseg_hf.model.slides.predict import predict_slide
    from cryonuseg_hf.model.slides.roi import parse_roi

    x, y, w, h = parse_roi("700,100,700,300")
    seen = []

    def model(window):
        seen.append(window.shape)
        return _local_nuclei(window)

    summary = predict_slide(slide, tmp_path, model, roi=(x, y, w, h), block_size=1024)
    # only the ROI and its margin of 64 px are read: one block of 1024 px, its tiles at most 300 + 2 x 64 high
    assert summary["blocks"] == 1 and seen and max(rows for rows, _, _ in seen) <= 300 + 2 * 64
    got = sorted(
        (float(r["centroid_x"]), float(r["centroid_y"])) for r in _rows(tmp_path / "slide_nuclei.csv")
    )
    inside = [
        (cx, cy) for cx, cy in _centroids(whole, mosaic) if x <= cx - 0.5 < x + w and y <= cy - 0.5 < y + h
    ]
    assert summary["nuclei"] == len(got) == len(inside) > 20
    np.testing.assert_allclose(got, inside, atol=1e-3)
    with pytest.raises(ValueError, match="x,y,width,height"):
        parse_roi("10,10,0,5")


def test_level_closest_to_the_model_and_level0_coordinates(mosaic, tmp_path):
    """An 80x slide (0.124 um/px): the model reads level 1 (1:2, the tiles' own pixels) as it is."""
    from cryonuseg_hf.model.slides.predict import predict_slide
    from cryonuseg_hf.model.slides.pyramid import write_pyramid
    from cryonuseg_hf.model.slides.reader import MODEL_MPP, open_slide, read_model_region
    from cryonuseg_hf.model.tiling import predict_tiled

    part = mosaic[:512, 512:1536]
    fine = np.repeat(np.repeat(part, 2, axis=0), 2, axis=1)
    path = write_pyramid(tmp_path / "x80.tif", fine, MPP / 2, steps=(1, 2, 8, 32))
    slide = open_slide(path)
    assert (slide.level, slide.scale, slide.shape, slide.per_level0) == (1, 1.0, (512, 1024), (0.5, 0.5))
    predict_slide(path, tmp_path / "out", _local_nuclei)
    got = sorted(
        (float(r["centroid_x"]), float(r["centroid_y"])) for r in _rows(tmp_path / "out/x80_nuclei.csv")
    )
    expected = _centroids(predict_tiled(part, _local_nuclei, tile_size=4096), part, scale=2.0)
    assert len(got) > 50
    np.testing.assert_allclose(got, expected, atol=1e-3)

    # a 20x slide (0.497 um/px) is upsampled about 2x to the model's pixel size
    coarse = write_pyramid(tmp_path / "x20.tif", part[::2, ::2], MPP * 2, steps=(1, 4))
    slide = open_slide(coarse)
    scale = MPP * 2 / MODEL_MPP
    assert slide.level == 0 and slide.scale == pytest.approx(scale)
    assert slide.shape == (round(256 * scale), round(512 * scale))
    assert read_model_region(slide, slice(0, 100), slice(0, 50)).shape == (100, 50, 3)
    # the last model pixels reach past the level's last pixel: its edge is repeated, not an error
    rows, cols = slice(slide.shape[0] - 64, slide.shape[0]), slice(slide.shape[1] - 64, slide.shape[1])
    assert read_model_region(slide, rows, cols).shape == (64, 64, 3)
    # --mpp overrides the metadata: told it is 40x, the same file is read as it is
    assert open_slide(coarse, mpp=MPP).scale == 1.0


def test_a_slide_of_one_level_gives_the_nuclei_of_its_pyramid(slide, mosaic, tmp_path):
    """No pyramid (an Aperio region, say): the tissue is found on level 0 itself, the nuclei are the same."""
    import tifffile

    from cryonuseg_hf.model.slides.predict import predict_slide

    tifffile.imwrite(tmp_path / "flat.svs", mosaic, tile=(256, 256), compression="zlib")
    flat = predict_slide(tmp_path / "flat.svs", tmp_path / "flat", _local_nuclei, mpp=MPP)
    pyramid = predict_slide(slide, tmp_path / "pyramid", _local_nuclei)
    assert flat["level_read"] == 0 and flat["nuclei"] == pyramid["nuclei"] > 300
    assert _rows(tmp_path / "flat/flat_nuclei.csv") == _rows(tmp_path / "pyramid/slide_nuclei.csv")
    assert flat["tissue_mm2"] == pytest.approx(pyramid["tissue_mm2"], rel=0.05)


def test_bad_slides_are_clear_errors(slide, tmp_path):
    import tifffile

    from cryonuseg_hf.model.slides.pyramid import write_pyramid
    from cryonuseg_hf.model.slides.reader import is_slide, open_slide

    data = slide.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match="cut.tif: truncated"):
        open_slide(tmp_path / "cut.tif")
    tifffile.imwrite(tmp_path / "flat.svs", np.zeros((64, 64, 3), np.uint8), tile=(32, 32))
    with pytest.raises(ValueError, match="flat.svs: one resolution level only .*--max-pixels"):
        open_slide(tmp_path / "flat.svs", mpp=0.25, max_pixels=64 * 64 - 1)
    assert open_slide(tmp_path / "flat.svs", mpp=0.25).level == 0  # small enough to read whole
    nompp = write_pyramid(tmp_path / "nompp.tif", np.zeros((64, 64, 3), np.uint8), None, steps=(1, 4))
    with pytest.raises(ValueError, match="nompp.tif: .*--mpp"):
        open_slide(nompp)
    assert open_slide(nompp, mpp=0.25).mpp == (0.25, 0.25)
    (tmp_path / "text.svs").write_text("not a slide")
    with pytest.raises(ValueError, match="text.svs: not a slide"):
        open_slide(tmp_path / "text.svs")
    (tmp_path / "a.mrxs").write_text("")
    with pytest.raises(ValueError, match="MIRAX slides are not supported"):
        open_slide(tmp_path / "a.mrxs")
    with pytest.raises(FileNotFoundError, match="missing.svs"):
        open_slide(tmp_path / "missing.svs")
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8, 3), np.uint8))
    assert is_slide(slide) and is_slide(tmp_path / "a.mrxs") and not is_slide(tmp_path / "plain.tif")


def test_interrupted_run_leaves_no_output(slide, tmp_path):
    from cryonuseg_hf.model.slides.predict import predict_slide

    calls = []

    def interrupted(window):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _local_nuclei(window)

    with pytest.raises(KeyboardInterrupt):
        predict_slide(slide, tmp_path, interrupted, labels=True, block_size=1024)
    assert list(tmp_path.iterdir()) == []


def test_cli_predicts_slides_beside_images(slide, mosaic, tmp_path, capsys):
    from PIL import Image

    from cryonuseg_hf.cli import main
    from cryonuseg_hf.model.segformer import build_model, save_checkpoint

    checkpoint = save_checkpoint(build_model("tiny", input_scale=1.0, seed=0), tmp_path / "tiny", fp16=False)
    Image.fromarray(mosaic[:128, 512:640]).save(tmp_path / "small.png")
    (tmp_path / "broken.svs").write_text("")
    argv = ["predict", str(slide), str(tmp_path / "small.png"), "-o", str(tmp_path / "out"), "--model"]
    argv += [str(checkpoint), "--backend", "torch", "--threads", "1", "--roi", "1024,512,256,256"]
    assert main(argv) == 0
    assert "slide.tif:" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {
        "slide.geojson",
        "slide_nuclei.csv",
        "slide_overview.png",
        "slide_summary.json",
        "small.geojson",
    } <= names
    assert main(argv[:2] + [str(tmp_path / "broken.svs")] + argv[3:]) == 1
    assert "broken.svs: not a slide" in capsys.readouterr().err


def test_shipped_model_on_a_slide_equals_the_image(release, tmp_path):
    """The real model: the slide path reads, tiles and places exactly what predict_instances does in memory."""
    import tifffile

    import cryonuseg_hf
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.predict import load_predictor
    from cryonuseg_hf.model.slides.predict import predict_slide
    from cryonuseg_hf.model.slides.pyramid import write_pyramid

    if not (cryonuseg_hf.MODEL_PATH / "config.json").is_file():
        pytest.skip(f"{cryonuseg_hf.MODEL_PATH} holds no checkpoint")
    image = np.full((512, 1024, 3), 255, np.uint8)
    image[:, 512:] = read_image(release.images["Human_Larynx_01"])
    path = write_pyramid(tmp_path / "larynx.tif", image, MPP, steps=(1, 4, 16))
    predictor = load_predictor(backend="torch", threads=1)
    summary = predict_slide(path, tmp_path / "out", predictor, labels=True)
    labels = tifffile.imread(tmp_path / "out/larynx_labels.tif").astype(np.int32)
    expected = cryonuseg_hf.predict_instances(image, predictor)
    assert summary["nuclei"] > 50 and score_tile(expected, labels)["pq"] >= 0.99


def test_model_mpp_is_the_median_of_the_slide_sheet(release):
    import statistics

    from cryonuseg_hf.data.metadata import read_slide_metadata
    from cryonuseg_hf.model.slides.reader import MODEL_MPP

    sheet = read_slide_metadata(release.root / "metadata" / "Selected_WSIs.xlsx")
    values = [r["microns_per_pixel"] for r in sheet.values() if r["microns_per_pixel"]]
    assert MODEL_MPP == statistics.median(values)
