"""The Gradio app: its warnings against the real tiles, the Space folder, and the app driven in headless Chromium.

The browser test starts ``cryonuseg-hf app`` in a subprocess on a free port of 127.0.0.1, uploads a real tile in
Debian's Chromium through playwright, and checks what a user gets: the nuclei count equals
``predict_instances`` on that tile, and each download opens with the package's own readers. It skips, saying
why, where Gradio, playwright or a Chromium binary is missing (``.ci/run`` installs all three). Set
``CRYONUSEG_APP_SCREENSHOT=results/app_screenshot.png`` to keep its screenshot; otherwise it stays in tmp_path.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cryonuseg_hf import EXAMPLES_PATH, MODEL_PATH, PACKAGE_DIR
from cryonuseg_hf.apps.app import NUCLEUS_MEDIAN_AREA_RANGE, input_warnings, output_stem, result_warnings
from cryonuseg_hf.core.paths import SPACE_TEMPLATE

SPACE = SPACE_TEMPLATE
TILE = EXAMPLES_PATH / "Human_Skin_01.png"
SCREENSHOT_ENV = "CRYONUSEG_APP_SCREENSHOT"
CHROMIUM_ENV = "CRYONUSEG_CHROMIUM"
needs_checkpoint = pytest.mark.skipif(
    not (MODEL_PATH / "config.json").exists(), reason="no shipped checkpoint"
)


# ------------------------------------------------------------------------------------------------- warnings


def test_no_tile_of_the_dataset_trips_a_warning_and_the_area_range_holds(release):
    median_areas = []
    for tile_id, path in sorted(release.images.items()):
        assert input_warnings(tifffile.imread(path)[..., :3]) == [], tile_id
        labels = tifffile.imread(release.markups["annotator1_round2"].variants["label_masks_modify"][tile_id])
        areas = np.bincount(labels.ravel().astype(np.int64))[1:]
        areas = areas[areas > 0]
        assert result_warnings(areas) == [], tile_id
        median_areas.append(np.median(areas))
    assert (min(median_areas), max(median_areas)) == NUCLEUS_MEDIAN_AREA_RANGE


def test_warnings_name_the_problem():
    rng = np.random.default_rng(0)
    tile = np.asarray(Image.open(TILE).convert("RGB"))
    noise = rng.integers(-20, 21, (512, 512, 1))
    grey = np.clip(140 + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
    glass = np.full((512, 512, 3), 235, np.uint8)
    glass[:100, :100] = tile[:100, :100]
    cases = {
        "black": (np.zeros((512, 512, 3), np.uint8), "can read: almost black"),
        "grey": (grey, "can read: grey"),
        "glass": (glass, "can read: blank: 9"),  # 96 % glass, plus the white in the patch
        "small": (tile[:100, :300], "only 300x100 pixels"),
    }
    for name, (image, message) in cases.items():
        warnings = input_warnings(image)
        assert len(warnings) == 1 and message in warnings[0], (name, warnings)
    assert input_warnings(tile) == []
    # a tile at 20x: nuclei a quarter of the area; at 80x: four times
    assert "smaller than at 40x" in result_warnings([40] * 50)[0]
    assert "larger than at 40x" in result_warnings([900] * 50)[0]
    assert result_warnings([40] * 5) == []  # too few nuclei to judge their size
    assert result_warnings([]) == ["No nuclei were found."]


def test_docstring_examples():
    import doctest

    import cryonuseg_hf.apps.app

    result = doctest.testmod(cryonuseg_hf.apps.app, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_output_stem_is_safe():
    assert output_stem("C:/x/../my image (2).TIFF") == "my_image_2"
    assert output_stem("/tmp/.png") == "png"
    assert output_stem("/tmp/__.png") == "image"


# ------------------------------------------------------------------------------------------------- analysis


@pytest.fixture(scope="module")
def predictor():
    """The shipped checkpoint as the app loads it on the CPU (onnxruntime, one thread here and in the server).

    Loading it here first exports it to ONNX in this session's cache, which the app's subprocess then reads
    instead of exporting it again.
    """
    from cryonuseg_hf.model.predict import load_predictor

    return load_predictor(device="cpu", threads=1)


@needs_checkpoint
def test_analyse_is_predict_instances_and_write_outputs(predictor, tmp_path):
    """A 512x640 image (an example tile and a strip of the other) is tiled, and the app's labels are the API's."""
    from cryonuseg_hf import predict_instances
    from cryonuseg_hf.apps.app import analyse

    tiles = [
        np.asarray(Image.open(EXAMPLES_PATH / f"{t}.png").convert("RGB"))
        for t in ("Human_Skin_01", "Human_Larynx_01")
    ]
    wide = tmp_path / "two tiles.png"
    Image.fromarray(np.concatenate([tiles[0], tiles[1][:, :128]], axis=1)).save(wide)
    analysis = analyse(wide, predictor, tmp_path)
    expected = predict_instances(str(wide), predictor)
    assert np.array_equal(analysis.labels, expected)
    assert analysis.n_tiles == 2 and analysis.n_nuclei == len(np.unique(expected)) - 1 > 100
    assert analysis.warnings == []
    assert sorted(p.name for p in analysis.files.values()) == sorted(
        [
            "two_tiles_labels.tif",
            "two_tiles_overlay.png",
            "two_tiles.geojson",
            "two_tiles_RoiSet.zip",
            "two_tiles_nuclei.csv",
        ]
    )
    with pytest.raises(ValueError, match="larger than the limit"):
        analyse(wide, predictor, tmp_path, max_pixels=512 * 512)


# ------------------------------------------------------------------------------------------------- the Space


def test_space_folder_is_a_gradio_space():
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(SPACE / "README.md")
    data = card.data.to_dict()
    assert data["sdk"] == "gradio" and (SPACE / data["app_file"]).is_file()
    assert data["license"] == "cc-by-nc-sa-4.0" and len(data["short_description"]) <= 60
    try:  # the Space runs the Gradio major version the app is tested with
        installed = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None:
        assert data["sdk_version"].split(".")[0] == installed.split(".")[0]
    # the Space's requirements are the package's own, with the same versions
    tomllib = pytest.importorskip("tomllib")

    declared = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[<>=!~ ]", d)[0].lower(): d for d in declared}
    lines = [ln.strip() for ln in (SPACE / "requirements.txt").read_text().splitlines()]
    requirements = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(requirements) >= 10
    for line in requirements:
        assert declared.get(re.split(r"[<>=!~ ]", line)[0].lower()) == line, line
    assert "from cryonuseg_hf.apps.app import build_app, serve" in (SPACE / "app.py").read_text()


# ------------------------------------------------------------------------------------------------- the browser


def _chromium() -> str:
    for candidate in (os.environ.get(CHROMIUM_ENV), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    pytest.skip(
        f"no Chromium binary (set ${CHROMIUM_ENV}, or on Debian: apt-get install chromium; .ci/run does so as root)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serving(command: list[str], url: str, log: Path, cwd: Path | None = None, env: dict | None = None):
    """Run ``command`` (a server) until ``url`` answers 200; stop it on exit. Fails with the server's log."""
    with open(log, "w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        deadline = time.monotonic() + 240  # model loading on a busy 2-core CPU
        while True:
            if server.poll() is not None:
                pytest.fail(f"the app exited with {server.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url} within 240 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, predictor):
    """``cryonuseg-hf app`` serving on 127.0.0.1 in a subprocess, stopped after the module's tests."""
    pytest.importorskip("gradio", reason="the app needs Gradio: pip install -e '.[app]'")
    port = _free_port()
    command = [sys.executable, "-m", "cryonuseg_hf.cli", "app", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path_factory.mktemp("app") / "server.log"
    with _serving([*command, "--threads", "1"], f"http://127.0.0.1:{port}/", log) as url:
        yield url


@needs_checkpoint
def test_space_folder_serves_the_app_as_a_space_starts_it(predictor, tmp_path):  # predictor: ONNX cached
    """The Space folder with the package copied beside app.py (as hub-export lays it out) serves the page."""
    pytest.importorskip("gradio", reason="the app needs Gradio: pip install -e '.[app]'")
    space = tmp_path / "space"
    shutil.copytree(SPACE, space, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        PACKAGE_DIR, space / "cryonuseg_hf", ignore=shutil.ignore_patterns("__pycache__", "space")
    )
    port = _free_port()
    # a Space runs `python app.py` with GRADIO_SERVER_NAME/PORT set; print which package it imported first
    script = (
        "import runpy, cryonuseg_hf; print('package:', cryonuseg_hf.__file__, flush=True); "
        "runpy.run_path('app.py', run_name='__main__')"
    )
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    log = tmp_path / "space.log"
    with _serving(
        [sys.executable, "-c", script], f"http://127.0.0.1:{port}/", log, cwd=space, env=env
    ) as url:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert "CryoNuSeg nuclei" in response.read().decode()
    assert f"package: {space / 'cryonuseg_hf' / '__init__.py'}" in log.read_text()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs playwright: pip install -e '.[app]'"
    )
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _save_screenshot(png: bytes, tmp_path: Path) -> Path:
    """The screenshot in tmp_path and, where ``$CRYONUSEG_APP_SCREENSHOT`` names a file, there too."""
    from PIL.PngImagePlugin import PngInfo

    path = tmp_path / "app_screenshot.png"
    path.write_bytes(png)
    target = os.environ.get(SCREENSHOT_ENV)
    if target:
        info = PngInfo()
        info.add_text(
            "Comment",
            f"made by: {SCREENSHOT_ENV}={target} python -m pytest tests/test_app.py -k browser "
            "(cryonuseg-hf app in headless Chromium, Human_Skin_01 uploaded)",
        )
        Image.open(path).save(target, pnginfo=info)
    return path


@needs_checkpoint
def test_browser_upload_count_downloads_and_warning(app_url, browser, predictor, tmp_path):
    from cryonuseg_hf import predict_instances
    from cryonuseg_hf.data.outlines import read_geojson_labels, read_roiset_labels
    from cryonuseg_hf.data.rois import read_roi_set
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.export import write_overlay
    from cryonuseg_hf.model.images import read_image

    expected = predict_instances(TILE, predictor)
    n_expected = len(np.unique(expected)) - 1

    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(120_000)  # a busy 2-core CI machine is slow to answer every click
    page.goto(app_url)
    page.set_input_files("#input-image input[type=file]", str(TILE))
    page.click("#run")
    page.wait_for_selector("#download-csv a.download-link", timeout=180_000)

    count = int(page.locator("#nuclei-count input").input_value())
    assert count == n_expected > 50
    assert f"{count} nuclei" in page.inner_text("#summary")
    assert "No warnings" in page.inner_text("#warnings")
    rows = page.locator("#nuclei-table tbody tr").count()
    assert rows > 0  # the table renders (virtualised: only the visible rows are in the page)

    # the overlay on screen is the package's overlay of exactly these nuclei
    src = page.locator("#overlay img").get_attribute("src")
    shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
    reference = tmp_path / "reference_overlay.png"
    write_overlay(reference, read_image(TILE), expected)
    differ = (shown != np.asarray(Image.open(reference).convert("RGB"))).any(axis=2)
    assert not differ.any(), f"{differ.sum()} pixels of the overlay shown differ from the package's ({src})"
    assert (shown != read_image(TILE)).any(axis=2).sum() > 20 * count  # outlines drawn on the tile

    downloads = {}
    for kind in ("labels", "geojson", "rois", "csv"):
        with page.expect_download() as info:
            page.click(f"#download-{kind} a.download-link")
        downloads[kind] = tmp_path / info.value.suggested_filename
        info.value.save_as(downloads[kind])
    assert downloads["labels"].name == "Human_Skin_01_labels.tif"
    assert np.array_equal(tifffile.imread(downloads["labels"]), expected)
    features = json.loads(downloads["geojson"].read_text())["features"]
    assert len(features) == count and {f["properties"]["objectType"] for f in features} == {"detection"}
    assert len(read_roi_set(downloads["rois"])) == count
    with open(downloads["csv"], newline="") as handle:
        assert sorted(int(r["label"]) for r in csv.DictReader(handle)) == list(range(1, count + 1))
    # the outlines rasterise back to the same nuclei, as the dataset's masks are made from ROIs
    for labels in (read_geojson_labels(downloads["geojson"]), read_roiset_labels(downloads["rois"])):
        scores = score_tile(expected, labels)
        assert len(np.unique(labels)) - 1 == count and scores["pq"] > 0.99

    page.wait_for_timeout(500)  # let the table and images finish drawing
    screenshot = _save_screenshot(page.screenshot(full_page=True), tmp_path)
    assert Image.open(screenshot).size[0] == 1400

    # an image that is not H&E: the app says so beside the result
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(black)
    page.set_input_files("#input-image input[type=file]", str(black))
    page.click("#run")
    page.wait_for_function(
        "() => document.querySelector('#warnings').innerText.includes('almost black')", timeout=120_000
    )
    page.close()
