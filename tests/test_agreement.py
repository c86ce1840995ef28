"""cryonuseg_hf.evaluation.agreement: the human agreement between the mark-ups, on the real release and on tiny data."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from cryonuseg_hf.cli import main
from cryonuseg_hf.core.folds import ORGANS, TILE_IDS
from cryonuseg_hf.evaluation.agreement import (
    COMPARISONS,
    PAPER,
    compare_markups,
    human_agreement,
    read_markup,
)
from cryonuseg_hf.evaluation.metrics import METRICS


@pytest.fixture(scope="module")
def agreement(release):
    return human_agreement(release)


def test_reproduces_the_papers_aji_and_pq(agreement):
    assert set(agreement) == set(COMPARISONS) == {"intra_observer", "inter_observer"}
    for name, quoted in PAPER.items():
        for metric, value in quoted.items():
            assert agreement[name]["mean"][metric] == pytest.approx(value, abs=5e-4), (name, metric)


def test_return_format(agreement):
    for name, (reference, prediction) in COMPARISONS.items():
        result = agreement[name]
        assert (result["reference"], result["prediction"]) == (reference, prediction)
        assert set(result["mean"]) == set(result["pooled"]) == set(METRICS)
        assert list(result["per_organ"]) == list(ORGANS)
        assert list(result["per_tile"]) == list(TILE_IDS)
        assert result["per_tile"]["Human_Skin_02"]["organ"] == "Skin"
        organ_mean = np.mean([result["per_tile"][f"Human_Skin_0{i}"]["aji"] for i in (1, 2, 3)])
        assert result["per_organ"]["Skin"]["aji"] == pytest.approx(organ_mean)
        assert result["mean"]["aji"] == pytest.approx(
            np.mean([row["aji"] for row in result["per_tile"].values()])
        )
        assert all(0.0 < v < 1.0 for v in result["mean"].values())
    # Annotator 1 agrees more with themself than with Annotator 2.
    assert agreement["intra_observer"]["mean"]["aji"] > agreement["inter_observer"]["mean"]["aji"]


def test_orientation_changes_aji_only(release):
    round2 = read_markup(release, "annotator1_round2")
    round1 = read_markup(release, "annotator1_round1")
    tiles = list(TILE_IDS[:6])
    forward = compare_markups({t: round2[t] for t in tiles}, {t: round1[t] for t in tiles})
    backward = compare_markups({t: round1[t] for t in tiles}, {t: round2[t] for t in tiles})
    for metric in ("dice", "aji_plus", "pq", "dq", "sq"):
        assert forward["mean"][metric] == pytest.approx(backward["mean"][metric], abs=1e-12), metric
    assert abs(forward["mean"]["aji"] - backward["mean"]["aji"]) > 1e-3
    assert forward["mean"]["precision"] == pytest.approx(backward["mean"]["recall"])


def test_compare_on_tiny_masks():
    truth = np.array([[1, 1, 0, 2, 2]])
    reference = {"Human_Skin_01": truth, "Human_Larynx_01": truth}
    prediction = {"Human_Skin_01": np.array([[5, 5, 0, 0, 0]]), "Human_Larynx_01": truth * 3}
    result = compare_markups(reference, prediction)
    assert result["per_organ"]["Skin"]["aji"] == pytest.approx(0.5)
    assert result["per_organ"]["Larynx"]["aji"] == 1.0
    assert result["mean"]["aji"] == pytest.approx(0.75)
    assert result["pooled"]["aji"] == pytest.approx((2 + 4) / (4 + 4))


def test_missing_masks_are_named(release):
    markups = dict(release.markups)
    markups["annotator2"] = dataclasses.replace(markups["annotator2"], variants={})
    broken = dataclasses.replace(release, markups=markups)
    with pytest.raises(ValueError, match="'annotator2' has no 'label_masks_modify' masks"):
        read_markup(broken, "annotator2")


def test_cli_writes_json_markdown_and_csv(release_path, tmp_path, capsys):
    assert main(["agreement", "--source", str(release_path), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "inter_observer (annotator2 vs reference annotator1_round2)" in printed
    document = json.loads((tmp_path / "human_agreement.json").read_text())
    assert document["inter_observer"]["mean"]["aji"] == pytest.approx(
        PAPER["inter_observer"]["aji"], abs=5e-4
    )
    assert len(document["orientations"]) == 6
    markdown = (tmp_path / "human_agreement.md").read_text()
    assert "Both reproduce to the third decimal" in markdown and "| Thymus |" in markdown
    with (tmp_path / "human_agreement_per_tile.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and {row["comparison"] for row in rows} == set(COMPARISONS)
