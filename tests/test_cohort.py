"""A cohort of slides on a real Dask LocalCluster of two workers.

The slides are small pyramidal TIFFs written here (pink tissue with purple disks on white glass) and one of them
is truncated; the model is a tiny SegFormer with random weights (what it finds does not matter here). The
command is stopped with Ctrl-C once two slides are done, then run again.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("torch")

GOOD = 8


def _slide(path: Path, seed: int, side: int = 512) -> Path:
    """A pyramidal TIFF at 0.25 µm/px: a block of tissue with nuclei-like disks, white glass around it."""
    from skimage.draw import disk

    from cryonuseg_hf.model.slides.pyramid import write_pyramid

    rng = np.random.default_rng(seed)
    image = np.full((side, side, 3), 245, np.uint8)
    tissue = np.zeros((side, side), bool)
    tissue[side // 8 : -side // 8, side // 8 : -side // 4] = True
    nuclei = np.zeros((side, side), bool)
    for _ in range(side * side // 4000):
        rr, cc = disk(tuple(rng.integers(0, side, 2)), rng.integers(5, 10), shape=(side, side))
        nuclei[rr, cc] = True
    image[tissue] = (235, 170, 205)
    image[tissue & nuclei] = (95, 55, 145)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return write_pyramid(path, image, 0.25, steps=(1, 4))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    """``GOOD`` slides and a truncated one in a folder, and a tiny checkpoint."""
    from cryonuseg_hf.model.segformer import build_model, save_checkpoint

    root = tmp_path_factory.mktemp("cohort")
    (root / "slides").mkdir()
    for k in range(GOOD):
        _slide(root / "slides" / f"slide_{k}.tif", seed=k)
    data = (root / "slides" / "slide_0.tif").read_bytes()
    (root / "slides" / "slide_cut.tif").write_bytes(data[: len(data) * 2 // 3])
    model = save_checkpoint(build_model("tiny", input_scale=1.0, seed=0), root / "tiny", fp16=False)
    return {"slides": root / "slides", "model": model}


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "cohort_summary.csv", newline="") as handle:
        return {Path(r["slide"]).stem: r for r in csv.DictReader(handle)}


def test_find_slides_reads_folders_globs_and_lists(cohort, tmp_path):
    from cryonuseg_hf.apps.cohort import find_slides
    from cryonuseg_hf.model.slides.outputs import slide_output_paths

    folder = cohort["slides"]
    slides, others = find_slides([folder])
    assert [p.name for p in slides] == [f"slide_{k}.tif" for k in range(GOOD)] + ["slide_cut.tif"]
    assert others == []
    # alone too, a truncated pyramidal TIFF is a slide (its first page points to its levels), reported as damaged
    assert find_slides([folder / "slide_cut.tif"]) == ([folder / "slide_cut.tif"], [])
    assert [p.name for p in find_slides([str(folder / "slide_[1-3].tif")])[0]] == [
        "slide_1.tif",
        "slide_2.tif",
        "slide_3.tif",
    ]
    listing = tmp_path / "cohort.txt"
    listing.write_text(
        f"# two slides and a missing one\n{folder}/slide_4.tif\n\n{folder}/slide_2.tif\nnope.svs\n"
    )
    slides, others = find_slides([listing, folder / "slide_2.tif"])
    assert [p.name for p in slides] == ["slide_4.tif", "slide_2.tif", "nope.svs"]  # by suffix, reported later
    assert others == []
    assert find_slides([str(tmp_path / "*.png")]) == ([], [tmp_path / "*.png"])  # matches nothing: reported
    # the outputs a slide prediction left in a folder (a label pyramid is a pyramidal TIFF) are not slides
    out = tmp_path / "mixed"
    out.mkdir()
    _slide(out / "a.tif", seed=0, side=256)
    _slide(slide_output_paths(out, "a")["labels"], seed=1, side=256)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(slide_output_paths(out, "a")["overview"])
    Image.new("RGB", (8, 8)).save(out / "tile.png")
    assert find_slides([out]) == ([out / "a.tif"], [out / "tile.png"])


def _predict(cohort, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "cryonuseg_hf.cli", "predict", str(cohort["slides"]), "-o", str(out), "--model",
        str(cohort["model"]), "--backend", "torch", "--workers", "2", "--threads", "1",
    ]  # fmt: skip


def _complete(out: Path) -> set[str]:
    from cryonuseg_hf.apps.cohort import finished_summary

    return {f"slide_{k}" for k in range(GOOD) if finished_summary(f"slide_{k}.tif", out) is not None}


def test_cohort_on_two_workers_stops_on_ctrl_c_and_resumes(cohort, tmp_path):
    from cryonuseg_hf.model.slides.outputs import slide_output_paths

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Ctrl-C in a terminal reaches the whole process group: the command and its workers
    run = subprocess.Popen(
        _predict(cohort, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(_complete(out)) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr[-3000:]
    assert "the same command again predicts the slides left" in stderr
    first = _complete(out)
    assert 2 <= len(first) < GOOD
    rows = _rows(out)  # the summary of the interrupted run says what it did
    assert {s for s, r in rows.items() if r["status"] == "done"} == first
    assert {r["status"] for s, r in rows.items() if s not in first} <= {"not run", "failed"}
    # no half-written output: every file there belongs to a slide whose outputs are complete
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    expected = {p.name for s in first for k, p in slide_output_paths(out, s).items() if k != "labels"}
    assert visible == expected | {"cohort_summary.csv", "cohort_summary.md"}
    times = {s: slide_output_paths(out, s)["summary"].stat().st_mtime_ns for s in first}

    again = subprocess.run(_predict(cohort, out), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 1  # the truncated slide failed, and said so
    assert "slide_cut.tif: truncated" in again.stderr
    rows = _rows(out)
    assert {s for s, r in rows.items() if r["status"] == "done earlier"} == first
    every = {f"slide_{k}" for k in range(GOOD)}
    assert {s for s, r in rows.items() if r["status"] == "done"} == every - first
    assert rows["slide_cut"]["status"] == "failed" and "truncated" in rows["slide_cut"]["error"]
    assert times == {s: slide_output_paths(out, s)["summary"].stat().st_mtime_ns for s in first}  # not redone
    # two workers, each loading the model once, for its first slide
    ran = [r for r in rows.values() if r["worker"]]
    assert {r["worker"] for r in ran} <= {"0", "1"}
    assert sum(r["model_load_seconds"] != "" for r in ran) == len({r["worker"] for r in ran})
    summary = (out / "cohort_summary.md").read_text()
    assert f"{GOOD + 1} slides: {GOOD} done ({len(first)} of them in an earlier run), 1 failed" in summary
    assert "| slide_cut.tif | failed |" in summary and "on 2 workers" in summary
