"""Bounds of `predict` on tiles and whole slides: work that would explode is refused before it starts, and inputs
that cannot be what they claim (reversed channels, a fluorescence scan, an implausible µm/px, a region outside the
slide, a truncated pyramid) get an error that says so, never an empty result.

Bad inputs are made from the example tiles the package ships, the real release and the real slide samples; small
pyramidal slides are written here with ``write_pyramid``. Each case is timed and its allocations bounded.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from test_slide_samples import CMU, NDPI, wsi_samples  # noqa: F401 (the fixture)

from robustness.helpers import assert_user_error, bounded, png_bytes, run_cli

MODEL = ("--backend", "torch", "--device", "cpu", "--threads", "1")
EXAMPLE = "Human_Larynx_01.png"


@pytest.fixture(scope="module")
def tile() -> np.ndarray:
    """The example tile the package ships (512 x 512, many nuclei)."""
    from cryonuseg_hf.core.paths import EXAMPLES_PATH
    from cryonuseg_hf.model.images import read_image

    return read_image(EXAMPLES_PATH / EXAMPLE)


@pytest.fixture(scope="module")
def predictor():
    """The shipped model on torch, whose every model call fails: a refused case must never reach it."""
    from cryonuseg_hf.model.predict import load_predictor

    def no_model(batch):
        raise AssertionError("the model ran on a refused input")

    return dataclasses.replace(load_predictor(backend="torch", device="cpu", threads=1), run=no_model)


def _slide(tmp_path, mosaic, mpp, name="slide.tif"):
    from cryonuseg_hf.model.slides.pyramid import write_pyramid

    return write_pyramid(tmp_path / name, mosaic, mpp, steps=(1, 4))


@pytest.fixture(scope="module")
def mosaic(tile) -> np.ndarray:
    """A 1024 x 1024 slide image: the example tile on white glass."""
    image = np.full((1024, 1024, 3), 255, np.uint8)
    image[256:768, 256:768] = tile
    return image


# --------------------------------------------------------------------------------------- work without a bound


@pytest.mark.parametrize(
    ("side", "options", "fragments"),
    [
        (128, ("--tile-size", "64", "--margin", "0"), ("16384 windows", "128x128", "at least 84 px")),
        (300, ("--tile-size", "160", "--margin", "64"), ("add nothing", "at least 255 px")),
        (
            700,
            ("--tile-size", "256", "--margin", "72"),
            ("225 windows", "700x700", "about 27 times", "at least 276 px"),
        ),
    ],
)
def test_tiles_that_own_almost_nothing_are_refused(tile, tmp_path, side, options, fragments):
    """predict --no-blend --tile-size 64 --margin 0 on a 128x128 tile (and neighbours): refused before any window
    runs, naming the window count, the image and the least useful tile size, in words (no "align - 1")."""
    image = np.tile(tile, (2, 2, 1))[:side, :side]
    (tmp_path / "tile.png").write_bytes(png_bytes(image))
    with bounded(60, 300):
        result = run_cli(
            "predict", tmp_path / "tile.png", "-o", tmp_path / "out", "--no-blend", *options, *MODEL
        )
    assert_user_error(result, "--tile-size", "the model's 64 px grid", *fragments, code=1)
    assert "align" not in result.err
    assert not list((tmp_path / "out").glob("tile*"))


@pytest.mark.parametrize(
    ("side", "options", "fragments"),
    [
        (128, ("--tile-size", "64"), ("--overlap 64", "add nothing", "at least 128 px")),
        (
            1100,
            ("--tile-size", "512", "--overlap", "440"),
            ("100 windows", "--overlap 440", "64 times", "at least 632 px"),
        ),
    ],
)
def test_blended_windows_that_add_almost_nothing_are_refused(tile, tmp_path, side, options, fragments):
    """predict (blended, the default) --tile-size 64 with the default --overlap 64 on a 128x128 tile, and 512 px
    windows overlapping by 440 on a 1100 px image: refused before any window runs, with the count and the fix."""
    image = np.tile(tile, (3, 3, 1))[:side, :side]
    (tmp_path / "tile.png").write_bytes(png_bytes(image))
    with bounded(60, 300):
        result = run_cli("predict", tmp_path / "tile.png", "-o", tmp_path / "out", *options, *MODEL)
    assert_user_error(result, *fragments, code=1)


@pytest.mark.parametrize(("size", "margin", "blend"), [(64, 0, False), (96, 32, False), (64, 64, True)])
def test_python_api_refuses_the_same_tiling(tile, predictor, size, margin, blend):
    """predict_instances(tile_size=64, margin=0) on a 128x128 array (and neighbours): ValueError before the model
    runs, with the same rule as the command line."""
    from cryonuseg_hf.model.predict import predict_instances

    with bounded(10, 100), pytest.raises(ValueError, match="windows"):
        predict_instances(tile[:128, :128], predictor, tile_size=size, margin=margin, blend=blend)


def test_slide_tiles_and_blocks_are_refused_before_the_tissue_search(mosaic, tmp_path, monkeypatch):
    """predict_slide with 64 px tiles and no margin, or 256 px blocks with 100 px margins: refused before the
    tissue search and before any block is read."""
    from cryonuseg_hf.model.slides import predict as slide_predict

    def no_search(*args, **kwargs):
        raise AssertionError("the tissue search ran")

    monkeypatch.setattr(slide_predict, "tissue_map", no_search)
    slide = _slide(tmp_path, mosaic, 0.25)
    with bounded(10, 200):
        with pytest.raises(ValueError, match="--tile-size 64 with --margin 0 .* makes 1048576 windows"):
            slide_predict.predict_slide(slide, tmp_path / "a", _blank, tile_size=64, margin=0, align=64)
        with pytest.raises(ValueError, match="--block-size 256 with --margin 100 .*add nothing"):
            slide_predict.predict_slide(slide, tmp_path / "b", _blank, block_size=256, margin=100, align=64)


def _blank(window: np.ndarray) -> np.ndarray:
    return np.zeros(window.shape[:2], np.int32)


# --------------------------------------------------------------------------------- implausible µm per pixel


@pytest.mark.parametrize("mpp", [25.0, 4.0, 0.05, 0.001])
def test_slide_tagged_with_an_implausible_mpp_is_refused(mosaic, tmp_path, mpp):
    """A slide whose metadata says 25 µm/px (upsampled 100x before) or 0.001 (ended "0 nuclei", exit 0), and
    neighbours: refused at once, naming the value, the plausible range and --mpp; --mpp 0.25 then predicts it."""
    slide = _slide(tmp_path, mosaic, mpp)
    with bounded(20, 200):
        result = run_cli("predict", slide, "-o", tmp_path / "out", *MODEL)
    assert_user_error(result, "slide.tif: its metadata says", "0.1 to 2 µm/px", "--mpp", code=1)
    assert list((tmp_path / "out").iterdir()) == []
    from cryonuseg_hf.model.slides.reader import open_slide

    assert open_slide(slide, mpp=0.25).scale == 1.0


@pytest.mark.parametrize("mpp", ["25", "0.01"])
def test_implausible_mpp_given_on_the_command_line_is_refused(mosaic, tmp_path, mpp):
    """predict --mpp 25 (a typo for 0.25) on a good slide: refused, naming --mpp and the range."""
    slide = _slide(tmp_path, mosaic, 0.25)
    with bounded(20, 200):
        result = run_cli("predict", slide, "-o", tmp_path / "out", "--mpp", mpp, *MODEL)
    assert_user_error(result, f"--mpp gives {mpp} µm per pixel", "0.1 to 2 µm/px", code=1)


def test_slide_larger_than_a_glass_slide_is_refused(tmp_path):
    """A 41000 px wide strip tagged 2 µm/px (82 mm, wider than a 75 mm glass slide): refused before reading."""
    strip = np.full((64, 41000, 3), 255, np.uint8)
    slide = _slide(tmp_path, strip, 2.0)
    with bounded(20, 300):
        result = run_cli("predict", slide, "-o", tmp_path / "out", *MODEL)
    assert_user_error(result, "82 x 0 mm", "larger than a glass slide", "--mpp", code=1)


# ------------------------------------------------------------------------------------------------- the ROI


@pytest.mark.parametrize("roi", ["5000,5000,100,100", "1024,0,10,10", "0,1024,2000,2000"])
def test_roi_wholly_outside_the_slide_is_an_error(mosaic, tmp_path, roi):
    """predict --roi wholly outside a 1024x1024 slide (ended "0 nuclei", exit 0): an error naming the ROI and the
    slide's size, before any work."""
    slide = _slide(tmp_path, mosaic, 0.25)
    with bounded(20, 200):
        result = run_cli("predict", slide, "-o", tmp_path / "out", "--roi", roi, *MODEL)
    assert_user_error(result, f"--roi {roi} lies wholly outside the slide", "1024x1024 pixels", code=1)


@pytest.mark.parametrize(
    ("roi", "clipped"),
    [((900, 900, 500, 500), (900, 900, 124, 124)), ((0, 1000, 2000, 30), (0, 1000, 1024, 24))],
)
def test_roi_partly_outside_is_clipped_and_said(mosaic, tmp_path, caplog, roi, clipped):
    """predict_slide with an ROI reaching past the slide: clipped, a warning says to what, the summary holds it."""
    from cryonuseg_hf.model.slides.predict import predict_slide

    slide = _slide(tmp_path, mosaic, 0.25)
    with bounded(30, 300), caplog.at_level(logging.WARNING):
        summary = predict_slide(slide, tmp_path / "out", _blank, roi=roi)
    assert summary["roi"] == list(clipped)
    assert f"clipped to {','.join(map(str, clipped))}" in caplog.text


# --------------------------------------------------------------------------------------- reversed channels


def test_reversed_channels_of_the_30_tiles_are_told_apart(release):
    """The colour check on the 30 CryoNuSeg tiles and their channel-reversed copies: no real tile is refused by
    any rule, every reversed copy is, and the margin (the least score, against REVERSED_SCORE) is wide."""
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.tissue import (
        REVERSED_SCORE,
        blue_with_darkness,
        channel_order_problem,
        tissue_problem,
    )

    scores = {}
    with bounded(60, 300):
        for name, path in release.images.items():
            image = read_image(path)
            scores[name] = blue_with_darkness(image)
            assert tissue_problem(image) is None, name
            assert "reversed" in channel_order_problem(image[..., ::-1]), name
    least = min(score for score, _ in scores.values())
    assert (
        len(scores) == 30 and least > 0.24 and least - REVERSED_SCORE > 0.3
    )  # measured 0.246 (Human_Pleura_01)
    assert min(shift for _, shift in scores.values()) > 0.02  # measured 0.021 (Human_LymphNodes_03)


@pytest.mark.parametrize("name", ["Human_Larynx_01.png", "Human_Skin_01.png"])
def test_bgr_array_through_the_python_api_is_refused(predictor, name):
    """predict_instances on a shipped example tile with its channels reversed (as cv2.imread gives it; was: 0
    nuclei without a word): ValueError saying the channels look reversed and how to pass RGB, before the model."""
    from cryonuseg_hf.core.paths import EXAMPLES_PATH
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.predict import predict_instances

    bgr = read_image(EXAMPLES_PATH / name)[..., ::-1]
    with bounded(10, 200), pytest.raises(ValueError, match=r"channels look reversed .*image\[\.\.\., ::-1\]"):
        predict_instances(bgr, predictor)


def test_bgr_file_through_the_command_line_is_refused(tile, tmp_path):
    """predict on a PNG saved with its channels reversed: refused, saying so, with --allow-non-tissue."""
    (tmp_path / "bgr.png").write_bytes(png_bytes(np.ascontiguousarray(tile[..., ::-1])))
    with bounded(60, 300):
        result = run_cli("predict", tmp_path / "bgr.png", "-o", tmp_path / "out", *MODEL)
    assert_user_error(
        result, "bgr.png: not an H&E tissue image", "channels look reversed", "--allow-non-tissue", code=1
    )


# ------------------------------------------------------------------------------------------ fluorescence


@pytest.mark.parametrize("roi", [None, (0, 0, 500, 500), (100, 4500, 300, 300)])
@pytest.mark.parametrize("entry", ["python", "cli", "cohort"])
def test_fluorescence_slide_is_refused_by_every_entry(wsi_samples, tmp_path, entry, roi):  # noqa: F811
    """The DAPI NDPI through predict_slide, the command line and a cohort's slide task, whole or with an ROI that
    holds none of its glowing nuclei (was: 0 nuclei, exit 0): refused as not H&E, before the model runs."""
    from cryonuseg_hf.apps.cohort import ModelChoice, predict_one
    from cryonuseg_hf.model.slides.predict import predict_slide

    slide, out = wsi_samples / NDPI, tmp_path / "out"
    options = {"roi": roi, "block_size": 1024}
    with bounded(60, 400):
        if entry == "python":
            with pytest.raises(ValueError, match="not an H&E slide: .*fluorescence"):
                predict_slide(slide, out, lambda w: pytest.fail("the model ran"), **options)
        elif entry == "cohort":
            row = predict_one(
                str(slide), str(out), ModelChoice(backend="torch", device="cpu", threads=1), options
            )
            assert row["status"] == "failed" and "not an H&E slide" in row["error"]
        else:
            extra = ("--roi", ",".join(map(str, roi))) if roi else ()
            result = run_cli("predict", slide, "-o", out, *extra, *MODEL)
            assert_user_error(
                result, f"{NDPI}: not an H&E slide", "fluorescence", "--allow-non-tissue", code=1
            )
    assert not out.exists() or list(out.iterdir()) == []


def test_he_slide_with_an_roi_on_glass_is_not_refused(wsi_samples, tmp_path):  # noqa: F811
    """The H&E CMU slide with an ROI on its blank corner: not taken for fluorescence (no nuclei, no error)."""
    from cryonuseg_hf.model.slides.predict import predict_slide

    with bounded(60, 400):
        summary = predict_slide(wsi_samples / CMU, tmp_path, _blank, roi=(0, 0, 64, 64))
    assert summary["tissue_problem"] is None


# ---------------------------------------------------------------------------------- truncated pyramids


@pytest.mark.parametrize(
    ("keep", "says"), [(0.001, "truncated"), (0.3, "truncated"), (0.67, "truncated"), (0.99, "truncated")]
)
def test_truncated_pyramidal_tiff_is_a_damaged_slide(mosaic, tmp_path, keep, says):
    """predict on a pyramidal TIFF cut short (a fraction of its bytes kept): reported as a truncated or damaged
    slide file by name (was: read as a plain image, "cannot be reshaped" or a codec error)."""
    data = _slide(tmp_path, mosaic, 0.25).read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: max(16, int(len(data) * keep))])
    with bounded(20, 200):
        result = run_cli("predict", tmp_path / "cut.tif", "-o", tmp_path / "out", *MODEL)
    assert_user_error(result, f"{tmp_path / 'cut.tif'}: truncated", says, "copy it again", code=1)
    assert "reshape" not in result.err
