"""Bounded work in the metric, `score` and `agreement`: inputs valid in form that ask for a huge amount of work
(pairs, vertices, pixels, bytes) are scored within seconds and a few hundred MB, or refused before any work with the
file, the nucleus and the figure named; and their messages name the user's files, never a cache folder or a raw
``[Errno N]``.

Inputs start from real files: the CV's predicted label images (``results/cv/predictions``), their outlines written
as GeoJSON and RoiSets, and the released masks; only the bounds themselves are made in code.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from robustness.helpers import (
    assert_user_error,
    bounded,
    claimed_png,
    claimed_tiff,
    mirror_release,
    replace_file,
    run_cli,
    tiff_bytes,
    zip_bytes,
)

PREDICTIONS = Path(__file__).resolve().parents[2] / "results" / "cv" / "predictions"
TILE = "Human_Larynx_01"


def _prediction(tile: str = TILE) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(PREDICTIONS / f"{tile}.png")).astype(np.int32)


def _outlines(tile: str = TILE) -> tuple[dict, list[dict]]:
    """The outlines of a real predicted tile, and their records (as `predict` exports them)."""
    from cryonuseg_hf.data.outlines import instance_polygons

    polygons = instance_polygons(_prediction(tile))
    return polygons, [{"label": k, "roi_name": f"{k:05d}"} for k in polygons]


def _geojson(path: Path, change=None) -> Path:
    """A real tile's predicted nuclei as QuPath GeoJSON; ``change(features)`` edits them first."""
    from cryonuseg_hf.data.outlines import geojson_features

    features = geojson_features(*_outlines())
    if change is not None:
        change(features)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _score(folder: Path, tmp_path: Path, release_path: Path, *more: str):
    return run_cli("score", folder, "--source", release_path, "--out", tmp_path / "report", "--cv", "", *more)


def _touching_grid(side: int = 4000, cell: int = 16) -> tuple[np.ndarray, np.ndarray]:
    n = -(-side // cell)
    grid = np.arange(1, n * n + 1, dtype=np.int32).reshape(n, n).repeat(cell, 0).repeat(cell, 1)[:side, :side]
    return grid, np.roll(grid, (cell // 2, cell // 2), axis=(0, 1))


# ------------------------------------------------------------------------------------------------ metric


def test_large_pair_of_touching_nuclei():
    """A 4000x4000 pair with 62,500 touching nuclei a side, every one overlapping four: scored within seconds and a
    few hundred MB (was: a 29 GiB dense table and a MemoryError)."""
    from cryonuseg_hf.evaluation.metrics import score_tile

    truth, prediction = _touching_grid()
    score_tile(truth[:64, :64], prediction[:64, :64])  # scipy's imports outside the bound
    with bounded(seconds=60, megabytes=600) as cost:
        scores = score_tile(truth, prediction)
    # Every pair has IoU 64/448 = 1/7; a perfect one-to-one pairing exists (the grid wraps around).
    assert scores["n_true"] == scores["n_pred"] == 62_500
    assert scores["aji_plus"] == pytest.approx(1 / 7, abs=1e-12) and scores["pq"] == 0.0
    assert scores["dice"] == 1.0
    assert cost.peak_mb > 50  # the bound measured something


def test_mosaic_of_real_tiles_scores_as_its_tiles(release):
    """The 30 real tiles' CV predictions and Annotator 1's masks laid out as one 3072x2560 image: scored within
    seconds, and every count equals the sum over the 30 tiles scored alone."""
    from cryonuseg_hf.evaluation.agreement import read_markup
    from cryonuseg_hf.evaluation.metrics import score_tile

    reference = read_markup(release, "annotator1_round2")
    tiles = release.tile_ids
    truth_rows, pred_rows, offset = [], [], 0
    for row in range(6):
        truth_row, pred_row = [], []
        for tile in tiles[5 * row : 5 * row + 5]:
            truth, prediction = reference[tile].astype(np.int64), _prediction(tile).astype(np.int64)
            truth_row.append(np.where(truth > 0, truth + offset, 0))
            pred_row.append(np.where(prediction > 0, prediction + offset, 0))
            offset += 1 << 16
        truth_rows.append(np.hstack(truth_row))
        pred_rows.append(np.hstack(pred_row))
    with bounded(seconds=30, megabytes=500):
        mosaic = score_tile(np.vstack(truth_rows), np.vstack(pred_rows))
    alone = [score_tile(reference[t], _prediction(t)) for t in tiles]
    for count in ("n_true", "n_pred", "tp", "dice_intersection", "aji_intersection", "aji_plus_union"):
        assert mosaic[count] == sum(s[count] for s in alone), count
    assert mosaic["iou_sum"] == pytest.approx(sum(s["iou_sum"] for s in alone), abs=1e-9)


@pytest.mark.parametrize("top", [2**31, 2**62], ids=["2^31", "2^62"])
def test_huge_label_values(top):
    """A real predicted tile whose ids start at 2^31 or 2^62: scored within a second and a few MB, the same as
    with its own ids."""
    from cryonuseg_hf.evaluation.metrics import score_tile

    truth, prediction = _prediction("Human_Skin_03"), _prediction()
    expected = score_tile(truth, prediction)
    spread = np.where(prediction > 0, prediction.astype(np.int64) + (top - 1), 0)
    with bounded(seconds=10, megabytes=100):
        assert score_tile(truth, spread) == expected


def test_huge_label_value_through_score(release_path, tmp_path):
    """`score` on the CV's predictions with one tile saved as uint32 TIFF with ids from 2^31: the same scores as the
    PNG, within a minute (the release is read and the human agreement scored too)."""
    folder = tmp_path / "predictions"
    folder.mkdir()
    for path in PREDICTIONS.glob("*.png"):
        (folder / path.name).symlink_to(path)
    prediction = _prediction()
    (folder / f"{TILE}.png").unlink()
    spread = np.where(prediction > 0, prediction.astype(np.uint32) + np.uint32(2**31), 0).astype(np.uint32)
    (folder / f"{TILE}.tif").write_bytes(tiff_bytes(spread))
    result = _score(folder, tmp_path, release_path)
    assert result.code == 0, result.err[-2000:]
    assert result.seconds < 120
    report = json.loads((tmp_path / "report" / "score.json").read_text())
    cv = json.loads((PREDICTIONS.parent / "metrics.json").read_text())["scores"]["annotator1_round2"]
    rows = cv["per_tile"] if isinstance(cv["per_tile"], dict) else {r["tile_id"]: r for r in cv["per_tile"]}
    assert report["scores"]["annotator1_round2"]["per_tile"][TILE]["aji"] == pytest.approx(rows[TILE]["aji"])


# ------------------------------------------------------------------------------------------------ outlines


def test_geojson_coordinate_of_1e12(release_path, tmp_path):
    """`score` on a real tile's GeoJSON with one vertex at x = 1e12: refused at once naming the file, the feature
    and the coordinate (was: terabytes asked for by the rasteriser)."""

    def far(features):
        features[7]["geometry"]["coordinates"][0][2][0] = 1e12

    folder = tmp_path / "predictions"
    folder.mkdir()
    path = _geojson(folder / f"{TILE}.geojson", far)
    with bounded(seconds=60, megabytes=300):
        result = _score(folder, tmp_path, release_path)
    assert_user_error(result, str(path), "feature 7", "vertex (1e+12,", "far outside the 512x512 image")
    assert not (tmp_path / "report").exists()


def test_outline_wholly_outside_the_tile(tmp_path):
    """A real tile's GeoJSON with one nucleus moved 600 px right (outside the tile, within one tile side): refused
    naming the feature, instead of that nucleus vanishing from the labels."""
    from cryonuseg_hf.evaluation.predictions import read_prediction

    def moved(features):
        ring = features[3]["geometry"]["coordinates"][0]
        features[3]["geometry"]["coordinates"][0] = [[x + 600, y] for x, y in ring]

    path = _geojson(tmp_path / f"{TILE}.geojson", moved)
    with bounded(seconds=10, megabytes=100), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: feature 3 lies wholly outside the 512x512 image" in str(refusal.value)


def test_roiset_with_too_many_vertices(tmp_path):
    """A RoiSet of a real tile's nuclei, each outline resampled to 20,000 vertices (12 million in all): refused
    before rasterising, with the count and the bound."""
    from cryonuseg_hf.data.rois import Nucleus, write_roi_set
    from cryonuseg_hf.evaluation.predictions import read_prediction

    polygons, _ = _outlines()
    nuclei = []
    for label, ring in list(polygons.items())[:600]:
        t = np.linspace(0, len(ring) - 1, 20_000)
        x, y = np.interp(t, np.arange(len(ring)), ring[:, 0]), np.interp(t, np.arange(len(ring)), ring[:, 1])
        nuclei.append(Nucleus(f"{label:05d}", x.astype(np.float32), y.astype(np.float32), "polygon"))
    path = write_roi_set(tmp_path / f"{TILE}_RoiSet.zip", nuclei[:40])
    with bounded(seconds=30, megabytes=300), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: 800,000 vertices, more than the 524,288" in str(refusal.value)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_roiset_vertex_far_outside(tmp_path):
    """A RoiSet of a real tile's nuclei with one ROI's vertex at y = -3e9 (float32 sub-pixel coordinates): refused
    naming the ROI and the vertex."""
    from cryonuseg_hf.data.outlines import write_roiset
    from cryonuseg_hf.data.rois import read_roi_set, write_roi_set
    from cryonuseg_hf.evaluation.predictions import read_prediction

    polygons, records = _outlines()
    nuclei = read_roi_set(write_roiset(tmp_path / "real_RoiSet.zip", polygons, records))
    nuclei[5].y[1] = -3e9
    path = write_roi_set(tmp_path / f"{TILE}_RoiSet.zip", nuclei)
    with bounded(seconds=10, megabytes=100), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: ROI {nuclei[5].name}: vertex (" in str(refusal.value)
    assert "-3e+09) lies far outside the 512x512 image" in str(refusal.value)


def test_outlines_too_long(tmp_path):
    """A real tile's GeoJSON plus 300 zigzag outlines crossing the tile 100 times each (15 million px of outline,
    few vertices): refused with the length and the bound (was: about 7 GB and a minute of rasterising)."""
    from cryonuseg_hf.evaluation.predictions import read_prediction

    def zigzags(features):
        ring = [[x, y] for x, y in zip(np.tile([1.0, 511.0], 50), np.linspace(1, 511, 100), strict=True)]
        features += [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}] * 300

    path = _geojson(tmp_path / f"{TILE}.geojson", zigzags)
    with bounded(seconds=10, megabytes=200), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: the outlines are 15,3" in str(refusal.value)
    assert "px long in all, more than the 262,144 px" in str(refusal.value)


def test_outlines_fill_too_many_pixels(tmp_path):
    """A real tile's GeoJSON plus 100 polygons covering the whole tile (26 million pixels to fill): refused with
    the figure (was: about 1.2 GB of pixel lists)."""
    from cryonuseg_hf.evaluation.predictions import read_prediction

    square = [[0.5, 0.5], [512.5, 0.5], [512.5, 512.5], [0.5, 512.5], [0.5, 0.5]]

    def covering(features):
        features += [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}}] * 100

    path = _geojson(tmp_path / f"{TILE}.geojson", covering)
    with bounded(seconds=10, megabytes=200), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: the outlines' bounding boxes cover 26," in str(refusal.value)
    assert "(16 layers of the 512x512 image)" in str(refusal.value)


def test_geojson_file_far_too_big(tmp_path):
    """A 2 GB GeoJSON file named after a tile (sparse on disk): refused by its size before it is read."""
    from cryonuseg_hf.evaluation.predictions import read_prediction

    path = tmp_path / f"{TILE}.geojson"
    with path.open("wb") as handle:
        handle.truncate(2 * 2**30)
    with bounded(seconds=5, megabytes=20), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: 2,147,483,648 bytes of outlines for a 512x512 image" in str(refusal.value)


def test_roiset_zip_bomb(tmp_path):
    """A RoiSet zip (a real tile's ROIs) with one more member that unpacks to 200 MB of zeros: refused by the sizes
    its zip declares, before any member is unpacked."""
    from cryonuseg_hf.data.outlines import write_roiset
    from cryonuseg_hf.evaluation.predictions import read_prediction

    real = write_roiset(tmp_path / "real_RoiSet.zip", *_outlines())
    path = tmp_path / f"{TILE}_RoiSet.zip"
    path.write_bytes(real.read_bytes())
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("9999-9999.roi", "w", force_zip64=True) as member:
            for _ in range(200):
                member.write(bytes(2**20))
    with bounded(seconds=10, megabytes=50), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: 2" in str(refusal.value) and "bytes of outlines for a 512x512 image" in str(
        refusal.value
    )


# ------------------------------------------------------------------------------------------------ label files


@pytest.mark.parametrize("kind", ["tif", "png"])
def test_label_file_claiming_a_huge_image(kind, tmp_path):
    """A real predicted tile saved as a label image whose header claims 100000x100000 (TIFF) or 20000x4000 (PNG,
    under Pillow's own bomb limit): refused from the header, before decoding, naming the file and the shape."""
    from cryonuseg_hf.evaluation.predictions import read_prediction

    labels = _prediction().astype(np.uint16)
    path = tmp_path / f"{TILE}.{kind}"
    claim = (100_000, 100_000) if kind == "tif" else (20_000, 4_000)
    path.write_bytes(claimed_tiff(labels, *claim) if kind == "tif" else claimed_png(labels, *claim))
    with bounded(seconds=5, megabytes=20), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: its header declares an image of shape ({claim[0]}, {claim[1]}" in str(refusal.value)
    assert "far larger than the 512x512 tile" in str(refusal.value)


def test_mat_declaring_a_huge_inst_map(tmp_path):
    """A HoVer-Net .mat whose compressed inst_map unpacks to 80 MB (20000x4000): refused from its header."""
    from scipy.io import savemat

    from cryonuseg_hf.evaluation.predictions import read_prediction

    path = tmp_path / f"{TILE}.mat"
    savemat(path, {"inst_map": np.zeros((20_000, 4_000), np.uint8)}, do_compression=True)
    with bounded(seconds=5, megabytes=20), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert f"{path}: its header declares an image of shape (20000, 4000)" in str(refusal.value)


def test_released_mask_claiming_a_huge_image(release, release_path, tmp_path):
    """`score` with a release whose one `label masks modify` TIFF claims 100000x100000: refused naming that file,
    before decoding it (was: a 19 GiB allocation)."""
    root = mirror_release(release.root, tmp_path / "release")
    mask = root / release.markups["annotator2"].variants["label_masks_modify"][TILE].relative_to(release.root)
    labels = _prediction().astype(np.uint16)
    replace_file(mask, claimed_tiff(labels, 100_000, 100_000))
    with bounded(seconds=60, megabytes=400):
        result = _score(PREDICTIONS, tmp_path, root, "--pattern", "*.png")
    assert_user_error(result, str(mask), "a mask of shape (100000, 100000), but a tile's mask is 512x512")


# ------------------------------------------------------------------------------------------------ messages


def test_agreement_out_is_a_file(tmp_path):
    """agreement --out naming a file: refused at once, naming it, without an errno (was: `[Errno 17] File exists`
    after the whole agreement was computed)."""
    out = tmp_path / "taken"
    out.write_text("mine")
    with bounded(seconds=5, megabytes=50):
        result = run_cli("agreement", "--out", out)
    assert_user_error(result, f"{out}: is a file, not a folder")
    assert "Errno" not in result.err and out.read_text() == "mine"


def test_score_out_under_a_file(tmp_path):
    """score --out under a file: refused at once, naming the file in the way, without an errno."""
    (tmp_path / "taken").write_text("mine")
    result = run_cli("score", PREDICTIONS, "--out", tmp_path / "taken" / "report")
    assert_user_error(result, f"cannot be created, {tmp_path / 'taken'} is a file, not a folder")
    assert "Errno" not in result.err and result.seconds < 5


@pytest.mark.parametrize("command", ["agreement", "score"])
def test_release_zip_problems_name_the_zip(command, release, tmp_path, monkeypatch):
    """agreement / score --source a zip lacking the mark-ups: the problems name the zip (and the members inside
    it), never the cache folder it was unpacked into."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "cache"))  # the zip is unpacked under tmp_path
    (tmp_path / "cache").mkdir()
    members = {
        f"tissue images/{p.name}": p.read_bytes() for p in sorted(release.images.values())[:2]
    }  # a release zip without its annotation folders
    archive = tmp_path / "cryonuseg.zip"
    archive.write_bytes(zip_bytes(members))
    extra = [PREDICTIONS] if command == "score" else []
    result = run_cli(command, *extra, "--source", archive, "--out", tmp_path / "out")
    assert_user_error(result, f"{archive}: not a complete CryoNuSeg release")
    assert str(tmp_path / "cache") not in result.err and "Errno" not in result.err
    assert (tmp_path / "cache" / "cryonuseg_hf-releases").is_dir()  # unpacked there, named as the zip
    assert not (tmp_path / "out").exists()


def test_unreadable_prediction_file_without_errno(tmp_path, monkeypatch):
    """A prediction file the system refuses to read (permissions): named with the reason in words, without
    `[Errno 13]`."""
    import tifffile

    from cryonuseg_hf.evaluation.predictions import read_prediction

    path = tmp_path / f"{TILE}.tif"
    path.write_bytes(tiff_bytes(_prediction().astype(np.uint16)))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tifffile, "TiffFile", refuse)
    with pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert str(refusal.value) == f"{path}: not a readable image (Permission denied)"


def test_metric_space_upload_claiming_a_huge_image(tmp_path):
    """The metric Space's upload reader on a real predicted tile's PNG whose header claims 20000x4000: refused from
    the header with the size and the limit, before decoding."""
    import importlib.util

    from cryonuseg_hf import METRIC_PATH

    spec = importlib.util.spec_from_file_location("metric_space_app", METRIC_PATH / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    path = tmp_path / f"{TILE}.png"
    path.write_bytes(claimed_png(_prediction().astype(np.uint16), 20_000, 4_000))
    with bounded(seconds=5, megabytes=20), pytest.raises(ValueError) as refusal:
        app.read_labels(path)
    assert f"{TILE}.png: a 4000x20000 image; the Space scores images of at most 64,000,000 pixels" in str(
        refusal.value
    )


def test_geojson_nested_thousands_deep(tmp_path):
    """A GeoJSON file of lists nested 100,000 deep (a few hundred kB): refused as not GeoJSON, naming the file,
    instead of a RecursionError."""
    from cryonuseg_hf.evaluation.predictions import read_prediction

    path = tmp_path / f"{TILE}.geojson"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with bounded(seconds=5, megabytes=50), pytest.raises(ValueError) as refusal:
        read_prediction(path)
    assert str(refusal.value) == f"{path}: JSON nested thousands of levels deep; not GeoJSON outlines"


@pytest.mark.parametrize("kind", ["not-json", "a-list", "odd-rows"])
def test_score_cv_file_that_is_not_cv_metrics(kind, release_path, tmp_path):
    """score --cv naming a file that is not the CV's metrics.json (text, a JSON list, rows without metrics): refused
    naming the file and the way out, exit 2 (was: a bare JSON error or an AttributeError reported as a bug)."""
    cv = tmp_path / "metrics.json"
    cv.write_text(
        {"not-json": "not json", "a-list": "[1, 2]", "odd-rows": '{"scores": {"annotator2": 5}}'}[kind]
    )
    result = run_cli(
        "score", PREDICTIONS, "--source", release_path, "--out", tmp_path / "report", "--cv", cv, "--reference",
        "annotator2",
    )  # fmt: skip
    assert_user_error(result, f"{cv}: ")
    assert not (tmp_path / "report").exists()
