"""cryonuseg-hf score: readers of every prediction format, matching files to tiles, and scores that agree with the
label images, with results/cv and with results/human_agreement.json on the real tiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cryonuseg_hf.data.masks import instance_masks
from cryonuseg_hf.data.outlines import geojson_outlines, rasterise_outlines, read_geojson_labels
from cryonuseg_hf.data.rois import Nucleus
from cryonuseg_hf.evaluation.predictions import match_files, read_prediction, tile_id_in
from cryonuseg_hf.evaluation.score import score_folder

REPO = Path(__file__).resolve().parents[1]
CV = REPO / "results" / "cv"
SHAPE = (16, 16)
HOLE_FREE = ("Human_AdrenalGland_03", "Human_ThyroidGland_01")
"""CV predictions without background pockets inside a nucleus (export.py fills such holes)."""


def _square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


def _poly2mask(ring: list[list[float]], shape=SHAPE) -> np.ndarray:
    xy = np.asarray(ring, np.float64)
    return instance_masks([Nucleus("", xy[:, 0], xy[:, 1], "polygon")], shape)[1] > 0


def _geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _feature(geometry: dict, object_type: str = "detection", **extra) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": {"objectType": object_type}, **extra}


@pytest.fixture(scope="module")
def cv_predictions() -> Path:
    folder = CV / "predictions"
    if not (CV / "metrics.json").is_file() or len(list(folder.glob("*.png"))) != 30:
        pytest.skip(
            f"{folder}: the CV predictions are not in this checkout (`cryonuseg-hf train --cv` writes them)"
        )
    return folder


# ---------------------------------------------------------------------------------------------- tile names


def test_tile_ids_are_found_in_any_spelling_of_a_file_name():
    assert tile_id_in("Human_Larynx_01.png") == "Human_Larynx_01"
    assert tile_id_in("HUMAN_LARYNX_01_labels.tif") == "Human_Larynx_01"
    assert tile_id_in("run3-Human_ThyreoidGland_03_RoiSet.zip") == "Human_ThyroidGland_03"
    assert tile_id_in("Human_Larynx_011.png") is None  # not tile 01
    assert tile_id_in("Human_Kidney_01.png") is None
    assert tile_id_in("overlay.png") is None


def test_files_are_matched_to_tiles_and_the_rest_reported(tmp_path):
    for name in ("Human_Larynx_01.png", "human_skin_02.geojson", "notes.csv"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    matched = match_files(tmp_path)
    assert list(matched.files) == ["Human_Larynx_01", "Human_Skin_02"]
    assert sorted(p.name for p in matched.skipped) == ["notes.csv", "sub"]
    assert len(matched.missing) == 28 and "Human_Larynx_02" in matched.missing

    (tmp_path / "Human_Kidney_01.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Human_Kidney_01\.png.*--ignore-unmatched"):
        match_files(tmp_path)
    assert [p.name for p in match_files(tmp_path, allow_extra=True).extra] == ["Human_Kidney_01.png"]

    (tmp_path / "Human_Larynx_01_labels.tif").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"Human_Larynx_01: Human_Larynx_01\.png, Human_Larynx_01_labels\.tif"
    ):
        match_files(tmp_path, allow_extra=True)
    assert list(match_files(tmp_path, pattern="*.tif").files) == ["Human_Larynx_01"]


def test_an_empty_or_absent_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}: no prediction files"):
        match_files(tmp_path)
    (tmp_path / "README.txt").write_text("x")
    with pytest.raises(ValueError, match=r"found only \['README.txt'\]"):
        match_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope: no such folder"):
        match_files(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- label images


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_label_tiffs_of_any_integer_type_read_as_they_are(tmp_path, dtype):
    import tifffile

    labels = np.zeros(SHAPE, dtype)
    labels[2:5, 3:9] = 7
    labels[10:, :4] = 200
    path = tmp_path / "Human_Larynx_01.tif"
    tifffile.imwrite(path, labels[None])  # a leading singleton axis, as some tools write
    got = read_prediction(path, SHAPE)
    assert got.shape == SHAPE and np.array_equal(got, labels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_pngs_read_as_they_are(tmp_path, dtype):
    from PIL import Image

    labels = np.zeros(SHAPE, dtype)
    labels[1:4, 1:4] = 3
    labels[8:12, 8:12] = 250
    path = tmp_path / "t.png"
    Image.fromarray(labels).save(path)
    assert np.array_equal(read_prediction(path, SHAPE), labels)


def test_bad_label_images_name_the_file(tmp_path):
    import tifffile
    from PIL import Image

    rgb = tmp_path / "Human_Larynx_01_overlay.png"
    Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError, match=f"{rgb}: a RGB picture, not an instance label image"):
        read_prediction(rgb, SHAPE)
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match=rf"{small}: labels of shape \(8, 8\), but the tile is 16x16"):
        read_prediction(small, SHAPE)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=f"{broken}: not a readable image"):
        read_prediction(broken, SHAPE)
    fractional = tmp_path / "fractional.tif"
    tifffile.imwrite(fractional, np.full(SHAPE, 0.5, np.float32))
    with pytest.raises(ValueError, match=f"{fractional}: label image has non-integer values"):
        read_prediction(fractional, SHAPE)
    with pytest.raises(ValueError, match=r"unknown prediction format '\.npy'"):
        (tmp_path / "x.npy").write_bytes(b"")
        read_prediction(tmp_path / "x.npy", SHAPE)


def test_hovernet_mat_reads_its_inst_map(tmp_path):
    from scipy.io import savemat

    labels = np.zeros(SHAPE, np.int32)
    labels[3:7, 3:7] = 5
    savemat(tmp_path / "a.mat", {"inst_map": labels, "inst_type": np.ones((1, 1))})
    assert np.array_equal(read_prediction(tmp_path / "a.mat", SHAPE), labels)
    savemat(tmp_path / "b.mat", {"labels": labels})
    with pytest.raises(ValueError, match=r"b\.mat: no 'inst_map' variable \(found \['labels'\]\)"):
        read_prediction(tmp_path / "b.mat", SHAPE)


# ---------------------------------------------------------------------------------------------- outlines


def test_geojson_polygons_are_rasterised_by_the_datasets_own_rasteriser(tmp_path):
    first, second = _square(1.5, 1.5, 5), _square(4.5, 4.5, 5)  # overlapping: the later one wins
    path = _geojson(
        tmp_path / "t.geojson",
        [
            _feature({"type": "Polygon", "coordinates": [first]}),
            _feature({"type": "Polygon", "coordinates": [second]}),
        ],
    )
    expected = np.zeros(SHAPE, np.int32)
    expected[_poly2mask(first)] = 1
    expected[_poly2mask(second)] = 2
    got = read_geojson_labels(path, SHAPE)
    assert np.array_equal(got, expected)
    assert (got == 1).sum() == 25 - 4 and (got == 2).sum() == 25


def test_multipolygons_share_a_label_and_holes_are_cleared(tmp_path):
    outer, hole, inner, far = (
        _square(0.5, 0.5, 10),
        _square(3.5, 3.5, 4),
        _square(4.5, 4.5, 2),
        _square(12.5, 12.5, 3),
    )
    features = [
        _feature(
            {"type": "Polygon", "coordinates": [inner]}
        ),  # earlier than the ring around it: shows through
        _feature({"type": "MultiPolygon", "coordinates": [[outer, hole], [far]]}),
        {
            "type": "Feature",
            "geometry": None,
            "nucleusGeometry": {"type": "Polygon", "coordinates": [_square(12.5, 0.5, 2)]},
        },
    ]
    got = read_geojson_labels(_geojson(tmp_path / "t.geojson", features), SHAPE)
    expected = np.zeros(SHAPE, np.int32)
    expected[_poly2mask(outer) & ~_poly2mask(hole)] = 2
    expected[_poly2mask(far)] = 2
    expected[_poly2mask(inner)] = 1
    expected[_poly2mask(_square(12.5, 0.5, 2))] = 3
    assert np.array_equal(got, expected)
    assert (got == 0)[_poly2mask(hole) & ~_poly2mask(inner)].all()


def test_geojson_layouts_and_object_types():
    square = {"type": "Polygon", "coordinates": [_square(1, 1, 3)]}
    cells = [
        _feature(square, "annotation"),
        _feature(square, "detection"),
        {"type": "Feature", "id": "PathCellObject", "geometry": square, "properties": {}},
    ]
    assert len(geojson_outlines(cells)) == 3
    assert len(geojson_outlines(cells, object_types=["detection", "cell"])) == 2
    assert len(geojson_outlines(cells[0])) == 1
    assert geojson_outlines({"type": "FeatureCollection", "features": []}) == []
    assert rasterise_outlines([], SHAPE).max() == 0


def test_bad_geojson_names_the_file_and_the_feature(tmp_path):
    point = _geojson(tmp_path / "p.geojson", [_feature({"type": "Point", "coordinates": [3, 3]})])
    with pytest.raises(ValueError, match=f"{point}: feature 0: geometry 'Point'"):
        read_geojson_labels(point, SHAPE)
    broken = tmp_path / "b.geojson"
    broken.write_text('{"type": "FeatureCollection", ')
    with pytest.raises(ValueError, match=f"{broken}: not a readable JSON file"):
        read_geojson_labels(broken, SHAPE)
    elsewhere = _geojson(
        tmp_path / "w.geojson", [_feature({"type": "Polygon", "coordinates": [_square(9000, 50, 8)]})]
    )
    with pytest.raises(ValueError, match=f"{elsewhere}: every outline lies outside the 16x16 tile"):
        read_geojson_labels(elsewhere, SHAPE)
    nonsense = _geojson(tmp_path / "n.geojson", [_feature({"type": "Polygon", "coordinates": [["a", "b"]]})])
    with pytest.raises(ValueError, match=f"{nonsense}: feature 0: ring 0"):
        read_geojson_labels(nonsense, SHAPE)


def test_roisets_read_as_the_dataset_masks_are_made(tmp_path):
    from skimage.draw import ellipse_perimeter

    from cryonuseg_hf.data.rois import read_roi_set, write_roi_set

    nuclei = []
    for k, (row, col) in enumerate([(5, 5), (9, 10), (12, 4)]):
        rr, cc = ellipse_perimeter(row, col, 3, 2, shape=SHAPE)
        order = np.argsort(np.arctan2(rr - row, cc - col))
        nuclei.append(
            Nucleus(
                f"n{k}", cc[order].astype(np.float32) + 0.7, rr[order].astype(np.float32) + 1.2, "polygon"
            )
        )
    path = write_roi_set(tmp_path / "Human_Larynx_01_RoiSet.zip", nuclei)
    got = read_prediction(path, SHAPE)
    assert np.array_equal(got, instance_masks(read_roi_set(path), SHAPE)[1])
    assert set(np.unique(got)) == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------------- real tiles


def _export(labels: np.ndarray, image: np.ndarray, folder: Path, tile: str) -> None:
    """The files `cryonuseg-hf predict` writes for a nucleus map: QuPath GeoJSON and the ImageJ RoiSet."""
    from cryonuseg_hf.data.outlines import instance_polygons, write_geojson, write_roiset
    from cryonuseg_hf.model.export import nucleus_measurements

    polygons, measurements = instance_polygons(labels), nucleus_measurements(labels, image)
    write_geojson((folder / "geojson").joinpath(f"{tile}.geojson"), polygons, measurements)
    write_roiset((folder / "roiset").joinpath(f"{tile}_RoiSet.zip"), polygons, measurements)


def test_exported_geojson_and_roisets_score_as_the_label_images(tmp_path, release, cv_predictions):
    """The round trip export -> file -> rasteriser gives back every pixel, so every score agrees (to 1e-6)."""
    import tifffile
    from PIL import Image

    for kind in ("labels", "geojson", "roiset"):
        (tmp_path / kind).mkdir()
    for tile in HOLE_FREE:
        shutil.copy(cv_predictions / f"{tile}.png", tmp_path / "labels")
        labels = np.asarray(Image.open(cv_predictions / f"{tile}.png")).astype(np.int32)
        _export(labels, tifffile.imread(release.images[tile]), tmp_path, tile)
        back = read_prediction(tmp_path / "geojson" / f"{tile}.geojson")
        assert np.array_equal(np.unique(labels[back > 0]), np.unique(labels)[1:])
        assert ((back > 0) == (labels > 0)).all()
    reports = {
        kind: score_folder(
            tmp_path / kind, source=release.root, references=["annotator1_round2"], cv_metrics=None
        )
        for kind in ("labels", "geojson", "roiset")
    }
    assert reports["geojson"]["formats"] == {"geojson": 2} and reports["roiset"]["formats"] == {"roiset": 2}
    for kind in ("geojson", "roiset"):
        for tile in HOLE_FREE:
            want = reports["labels"]["scores"]["annotator1_round2"]["per_tile"][tile]
            got = reports[kind]["scores"]["annotator1_round2"]["per_tile"][tile]
            assert got["n_pred"] == want["n_pred"] > 50
            for metric in ("dice", "aji", "aji_plus", "pq", "dq", "sq", "precision", "recall"):
                assert got[metric] == pytest.approx(want[metric], abs=1e-6), (kind, tile, metric)


def test_geojson_of_a_nucleus_with_a_hole_gives_it_back_filled(tmp_path, release, cv_predictions):
    """export.py outlines each nucleus without its holes (QuPath polygons); reading gives exactly that back.

    Post-processing leaves no holes, so one is punched into the largest nucleus of a real CV prediction.
    """
    import tifffile
    from PIL import Image
    from scipy import ndimage as ndi

    tile = "Human_Larynx_03"
    filled = np.asarray(Image.open(cv_predictions / f"{tile}.png")).astype(np.int32)
    largest = int(np.argmax(np.bincount(filled.ravel())[1:])) + 1
    inner = ndi.binary_erosion(filled == largest, iterations=4)
    labels = filled.copy()
    labels[inner] = 0
    assert inner.sum() > 0 and (labels != filled).sum() == inner.sum()
    (tmp_path / "geojson").mkdir()
    (tmp_path / "roiset").mkdir()
    _export(labels, tifffile.imread(release.images[tile]), tmp_path, tile)
    back = read_prediction(tmp_path / "geojson" / f"{tile}.geojson")
    assert np.array_equal(np.unique(back), np.unique(filled))
    assert np.array_equal(back, filled)  # feature k is label k + 1: the ids come back too


def test_the_cv_predictions_score_as_results_cv_with_the_human_agreement_beside(
    tmp_path, release, cv_predictions
):
    report = score_folder(cv_predictions, source=release.root, cv_metrics=CV / "metrics.json", name="CV")
    cv = json.loads((CV / "metrics.json").read_text())["scores"]
    human = json.loads((REPO / "results" / "human_agreement.json").read_text())
    assert report["missing"] == [] and len(report["tiles"]) == 30
    for reference, result in cv.items():
        mine = report["scores"][reference]
        for tile, row in result["per_tile"].items():
            for key, value in row.items():
                assert mine["per_tile"][tile][key] == pytest.approx(value, abs=1e-12), (reference, key)
        for metric in ("dice", "aji", "aji_plus", "pq", "dice_pooled", "aji_pooled"):
            assert mine[metric] == pytest.approx(result[metric], abs=1e-12)
        assert report["segformer_cv"][reference]["mean"]["aji"] == pytest.approx(result["aji"], abs=1e-12)
    for name, other in (("intra_observer", "annotator1_round1"), ("inter_observer", "annotator2")):
        beside = report["human"]["annotator1_round2"][other]
        assert beside["relation"] == name.replace("_", "-")
        for metric, value in human[name]["mean"].items():
            assert beside["mean"][metric] == pytest.approx(value, abs=1e-12)
        for organ, values in human[name]["per_organ"].items():
            assert beside["per_organ"][organ]["pq"] == pytest.approx(values["pq"], abs=1e-12)


def test_missing_tiles_are_reported_and_everything_is_compared_on_the_same_tiles(
    tmp_path, release, cv_predictions
):
    from cryonuseg_hf.reports.score import report_markdown

    tiles = ["Human_Larynx_02", "Human_Skin_01", "Human_Skin_03"]
    for tile in tiles:
        shutil.copy(cv_predictions / f"{tile}.png", tmp_path / f"{tile}_labels.png")
    (tmp_path / "Human_Kidney_01.png").write_bytes(b"")
    report = score_folder(
        tmp_path,
        source=release.root,
        references=["annotator2"],
        cv_metrics=CV / "metrics.json",
        allow_extra=True,
    )
    assert report["tiles"] == tiles and len(report["missing"]) == 27
    assert [Path(p).name for p in report["extra"]] == ["Human_Kidney_01.png"]
    summary = report["summary"]["annotator2"]
    assert summary["mean"]["n_tiles"] == 3 and sorted(summary["per_organ"]) == ["Larynx", "Skin"]
    assert summary["per_fold"][6]["n_tiles"] == 2
    # the SegFormer CV is these very predictions, so on the same tiles it scores the same
    assert report["segformer_cv"]["annotator2"]["mean"]["aji"] == pytest.approx(
        summary["mean"]["aji"], abs=1e-12
    )
    from cryonuseg_hf.evaluation.agreement import compare_markups, read_markup

    a2, a1 = read_markup(release, "annotator2"), read_markup(release, "annotator1_round1")
    direct = compare_markups({t: a2[t] for t in tiles}, {t: a1[t] for t in tiles})
    assert report["human"]["annotator2"]["annotator1_round1"]["mean"]["pq"] == pytest.approx(
        direct["mean"]["pq"]
    )
    text = report_markdown(report)
    assert "scored on 3 of 30 tiles" in text and "Human_Kidney_01.png" in text and "| 6 | Skin | 2 |" in text
    assert "SegFormer CV" in text and "leave-one-organ-out CV" in text
    # without the CV beside (as for the CV's own predictions) no column or sentence names it
    alone = report_markdown({**report, "segformer_cv": None})
    assert "SegFormer CV" not in alone and "leave-one-organ-out" not in alone
    assert "Beside them, on the same tiles: the human agreement" in alone


def test_cli_writes_the_reports_and_fails_clearly(tmp_path, release_path, cv_predictions, capsys):
    from cryonuseg_hf.cli import main

    folder = tmp_path / "predictions"
    folder.mkdir()
    for tile in HOLE_FREE:
        shutil.copy(cv_predictions / f"{tile}.png", folder)
    argv = ["score", str(folder), "--source", str(release_path), "--out", str(tmp_path / "out")]
    assert main([*argv, "--reference", "annotator1_round2", "--cv", str(CV / "metrics.json")]) == 0
    assert "vs annotator1_round2: dice" in capsys.readouterr().out
    rows = (tmp_path / "out" / "score_per_tile.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4  # 2 tiles x (these predictions, SegFormer CV, two other mark-ups)
    document = json.loads((tmp_path / "out" / "score.json").read_text())
    assert document["tiles"] == list(HOLE_FREE)
    assert "## Per organ vs annotator1_round2" in (tmp_path / "out" / "score.md").read_text()
    assert main(argv) == 2
    assert "exist already; pass --overwrite" in capsys.readouterr().err
    (folder / "Human_Larynx_01.png").write_bytes(b"\x89PNG broken")
    assert main([*argv, "--overwrite"]) == 2
    assert f"{folder / 'Human_Larynx_01.png'}: not a readable image" in capsys.readouterr().err
