"""The README's main job: the demo on the shipped example tiles, with the shipped checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from cryonuseg_hf import EXAMPLES_PATH, MODEL_PATH
from cryonuseg_hf.apps.demo import example_tiles, run_demo
from cryonuseg_hf.cli import main


def test_examples_are_real_tiles_with_their_annotations(release):
    from PIL import Image

    from cryonuseg_hf.data.rois import read_roi_set

    pairs = example_tiles()
    assert [image.stem for image, _ in pairs] == ["Human_Larynx_01", "Human_Skin_01"]
    for image, rois in pairs:
        shipped = np.asarray(Image.open(image))
        assert np.array_equal(shipped, tifffile.imread(release.images[image.stem]))
        original = read_roi_set(release.markups["annotator1_round2"].rois[image.stem])
        assert [n.name for n in read_roi_set(rois)] == [n.name for n in original]


@pytest.mark.skipif(not (MODEL_PATH / "config.json").exists(), reason="no shipped checkpoint")
def test_demo_predicts_exports_and_scores(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--backend", "torch"]) == 0
    printed = capsys.readouterr().out
    assert "Human_Larynx_01" in printed and "trained on all 30 tiles" in printed
    summary = json.loads((tmp_path / "demo" / "scores.json").read_text())
    by_tile = {r["tile_id"]: r for r in summary["tiles"]}
    # the annotation is rebuilt from the RoiSet as the release does (metadata/instance_counts.csv): every ROI
    # is read, and the 3 of Skin_01 that later ROIs cover completely leave no label
    assert [by_tile[t]["nuclei_annotated"] for t in ("Human_Larynx_01", "Human_Skin_01")] == [227, 137]
    assert [by_tile[t]["n_true"] for t in ("Human_Larynx_01", "Human_Skin_01")] == [227, 134]
    for record in summary["tiles"]:
        assert record["n_pred"] > 0 and 0.0 < record["aji"] <= 1.0 and 0.0 < record["dice"] <= 1.0
        labels = tifffile.imread(record["files"]["labels"])
        assert labels.shape == (512, 512) and len(np.unique(labels)) - 1 == record["n_pred"]
    # a second run refuses to overwrite the first
    assert main(["demo", "--out", str(tmp_path / "demo"), "--backend", "torch"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(FileExistsError):
        run_demo(tmp_path / "demo", backend="torch")


def test_examples_folder_is_checked(tmp_path):
    (tmp_path / "Human_Skin_01.png").write_bytes((EXAMPLES_PATH / "Human_Skin_01.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="annotator1_round2_RoiSet.zip is missing"):
        example_tiles(tmp_path)
