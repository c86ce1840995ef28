"""Real scanner files: what ``cryonuseg-hf predict`` does with each slide of the ``wsi_samples`` folder.

- ``CMU-1-Small-Region.svs``: Aperio, 20x (0.499 µm/px), one level (no pyramid): read whole, upsampled to the
  model's µm/px, outputs in level-0 pixels.
- ``tcga-cr-7395-01a-01-ts1.svs``: a TCGA frozen section in JPEG 2000 tiles, with no resolution in its metadata:
  refused with a message that names ``--mpp``, predicted with it.
- ``test3-DAPI-2-387.ndpi``: Hamamatsu, a fluorescence (DAPI) scan, not H&E: refused by the tissue check in
  seconds, predicted only with ``--allow-non-tissue``.

The folder is ``$CRYONUSEG_WSI_SAMPLES`` (default: ``datasets/wsi_samples`` beside the release's folder); missing,
the tests are skipped on a developer's machine and fail in CI. Full runs take minutes on a CPU, so the model only
sees small regions (``--roi``).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
NDPI = "test3-DAPI-2-387.ndpi"
SAMPLES_ENV = "CRYONUSEG_WSI_SAMPLES"


@pytest.fixture(scope="session")
def wsi_samples() -> Path:
    """The folder of the three sample slides; skipped when missing, failed in CI."""
    from cryonuseg_hf.data.release import default_source

    path = Path(os.environ.get(SAMPLES_ENV, default_source().parent / "wsi_samples"))
    missing = [name for name in (CMU, TCGA, NDPI) if not (path / name).is_file()]
    if missing:
        message = f"slide samples {missing} not found in {path}; set ${SAMPLES_ENV}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def predictor():
    """The shipped model, loaded once (onnxruntime when it is installed, as the command line does)."""
    from cryonuseg_hf.model.predict import load_predictor

    return load_predictor(threads=2)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _inside(rows: list[dict], roi: tuple[int, int, int, int]) -> bool:
    """Every centroid (file convention: pixel ``j`` centred at ``j + 1``) lies in the level-0 region ``roi``."""
    x, y, w, h = roi
    return all(
        x <= float(r["centroid_x"]) - 0.5 < x + w and y <= float(r["centroid_y"]) - 0.5 < y + h for r in rows
    )


def test_aperio_region_without_a_pyramid_is_read_at_the_model_mpp(wsi_samples, predictor, tmp_path):
    from cryonuseg_hf.model.slides.predict import predict_slide
    from cryonuseg_hf.model.slides.reader import MODEL_MPP, open_slide

    slide = open_slide(wsi_samples / CMU)
    assert slide.dimensions == (2220, 2967) and slide.level == 0
    assert slide.scale == pytest.approx(0.499 / MODEL_MPP) and slide.model_mpp == pytest.approx(
        MODEL_MPP, rel=1e-3
    )
    assert slide.shape == (round(2967 * slide.scale), round(2220 * slide.scale))

    roi = (1000, 2150, 128, 128)  # epidermis: 128 level-0 px, 255 model px, one window of the model
    summary = predict_slide(wsi_samples / CMU, tmp_path, predictor, roi=roi)
    rows = _rows(tmp_path / "CMU-1-Small-Region_nuclei.csv")
    assert summary["tiles_run"] == 1 and summary["tissue_problem"] is None
    assert summary["nuclei"] == len(rows) >= 10 and _inside(rows, roi)
    # sizes in level-0 pixels of 0.499 um, not in the model's pixels of 0.2505 um
    area_px = statistics.median(float(r["area_px"]) for r in rows)
    area_um2 = statistics.median(float(r["area_um2"]) for r in rows)
    assert area_um2 == pytest.approx(area_px * 0.499**2, rel=0.01) and 15 <= area_um2 <= 80


def test_slide_without_a_resolution_needs_mpp_and_reads_jpeg2000(wsi_samples, predictor, tmp_path):
    from cryonuseg_hf.model.slides.predict import predict_slide
    from cryonuseg_hf.model.slides.reader import level_pixels, open_slide

    with pytest.raises(ValueError, match=f"{TCGA}: the slide does not say its µm per pixel.*--mpp"):
        open_slide(wsi_samples / TCGA)
    slide = open_slide(wsi_samples / TCGA, mpp=0.25)
    assert slide.dimensions == (4443, 3567) and (slide.level, slide.scale) == (0, 1.0)
    centre = level_pixels(slide, 0, slice(1527, 2039), slice(1965, 2477))  # JPEG 2000 tiles, by imagecodecs
    np.testing.assert_allclose(centre.reshape(-1, 3).mean(axis=0), (200, 113, 158), atol=2)

    # the model runs on the decoded tiles (this extract is not at nuclei scale: few nuclei, whatever --mpp says)
    roi = (1800, 1300, 256, 256)
    summary = predict_slide(wsi_samples / TCGA, tmp_path, predictor, mpp=0.25, roi=roi)
    rows = _rows(tmp_path / "tcga-cr-7395-01a-01-ts1_nuclei.csv")
    assert summary["level0_mpp"] == [0.25, 0.25] and summary["tissue_problem"] is None
    assert summary["tiles_run"] == 1 and summary["nuclei"] == len(rows) and _inside(rows, roi)


def test_fluorescence_slide_is_refused_quickly_unless_allowed(wsi_samples, tmp_path):
    from cryonuseg_hf.model.slides.predict import predict_slide

    def no_model(window):
        raise AssertionError("the model must not run on a refused slide")

    started = time.perf_counter()
    with pytest.raises(ValueError, match=f"{NDPI}: not an H&E slide: .*fluorescence.*--allow-non-tissue"):
        predict_slide(wsi_samples / NDPI, tmp_path / "refused", no_model)
    assert time.perf_counter() - started < 30  # the tissue check reads a 1:8 level: well under a second alone
    assert list((tmp_path / "refused").iterdir()) == []

    roi = (1800, 2200, 128, 128)
    summary = predict_slide(
        wsi_samples / NDPI,
        tmp_path / "allowed",
        lambda window: np.zeros(window.shape[:2], np.int32),
        roi=roi,
        allow_non_tissue=True,
    )
    assert "fluorescence" in summary["tissue_problem"] and summary["nuclei"] == 0
    assert json.loads((tmp_path / "allowed/test3-DAPI-2-387_summary.json").read_text())["tissue_problem"]


def test_command_line_on_the_three_samples(wsi_samples, tmp_path, capsys):
    """What a user sees: the 20x region is predicted, the slide without a resolution and the fluorescence scan
    are refused with the option that overrides each, and work with it."""
    from cryonuseg_hf.cli import main

    out = tmp_path / "out"
    common = ["-o", str(out), "--threads", "2", "--roi"]
    assert main(["predict", str(wsi_samples / CMU), *common, "1000,2150,128,128"]) == 0
    assert f"{CMU}: " in capsys.readouterr().out
    assert (
        main(["predict", str(wsi_samples / TCGA), str(wsi_samples / NDPI), *common, "1800,1500,128,128"]) == 1
    )
    errors = capsys.readouterr().err
    assert (
        f"failed: {wsi_samples / TCGA}: the slide does not say its µm per pixel" in errors
        and "--mpp" in errors
    )
    assert f"failed: {wsi_samples / NDPI}: not an H&E slide" in errors and "--allow-non-tissue" in errors
    assert main(["predict", str(wsi_samples / TCGA), *common, "1800,1300,128,128", "--mpp", "0.25"]) == 0
    assert main(["predict", str(wsi_samples / NDPI), *common, "1800,2200,128,128", "--allow-non-tissue"]) == 0
    summary = json.loads((out / "CMU-1-Small-Region_summary.json").read_text())
    assert {"seconds", "blocks", "tissue_mm2", "nuclei", "seconds_per_tissue_mm2"} <= set(summary)
