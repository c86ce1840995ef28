"""Robustness of `train`/`pretrain` arguments, the `evaluate` metric's inputs and `load_dataset` on a build."""

from __future__ import annotations

import numpy as np
import pytest

from robustness.helpers import assert_user_error, mirror_release, run_cli, swap_files

# ------------------------------------------------------------------------------------------------ train


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--markup", "annotator3"), ("--markup", "invalid choice: 'annotator3'", "annotator1_round2")),
        (("--steps", "0"), ("--steps", "expected a whole number >= 1, got 0")),
        (("--batch-size", "0"), ("--batch-size", "expected a whole number >= 1, got 0")),
        (("--crop", "7"), ("--crop", "expected a whole number >= 32, got 7")),
        (("--crop", "1024"), ("--crop 1024: expected at most 512 (the tile side)",)),
        (("--threads", "0"), ("--threads", ">= 1")),
        (("--variant", "b9"), ("--variant", "invalid choice: 'b9'")),
        (("--lr", "0"), ("--lr 0.0: expected a number > 0",)),
        (("--scale-jitter", "1.5"), ("--scale-jitter 1.5: expected a number in [0, 1)",)),
        (("--ema-decay", "1"), ("--ema-decay 1.0: expected a number in [0, 1) (0 = no average)",)),
        (("--fold", "12"), ("--fold 12: expected a fold 0..9",)),
        (("--steps", "many"), ("--steps", "expected a whole number, got 'many'")),
    ],
    ids=[
        "markup",
        "steps",
        "batch-size",
        "crop-small",
        "crop-large",
        "threads",
        "variant",
        "lr",
        "jitter",
        "ema-decay",
        "fold",
        "steps-text",
    ],
)
def test_train_bad_argument(args, fragments, tmp_path):
    """train with one bad option: exit 2 at once (before loading data), the option and its valid values named."""
    result = run_cli("train", "--fold", "1", *args, "--out", tmp_path / "cv")
    assert_user_error(result, *fragments)
    assert result.seconds < 30 and not (tmp_path / "cv").exists()  # seconds on a quiet machine


def test_train_with_nothing_to_do(tmp_path):
    """train without --fold/--cv/--final/--pack: says what to give."""
    assert_user_error(run_cli("train", "--out", tmp_path / "cv"), "nothing to do: give --fold K")


def test_pretrain_data_folder_missing(tmp_path):
    """pretrain --data naming a folder without images/ and labels/: named, exit 2."""
    result = run_cli("pretrain", "--data", tmp_path / "nodata", "--out", tmp_path / "start", "--steps", "1")
    assert_user_error(result, f"{tmp_path / 'nodata'}: expected images/ and labels/")
    assert not (tmp_path / "start").exists()


def test_train_config_checked_for_library_callers():
    """TrainConfig built in code is checked by validate_config too."""
    from cryonuseg_hf.training.config import TrainConfig, validate_config

    with pytest.raises(ValueError, match="--batch-size 0: expected a whole number >= 1"):
        validate_config(TrainConfig(batch_size=0))
    assert validate_config(TrainConfig()) == TrainConfig()


def test_train_refuses_a_release_whose_files_do_not_belong(release, tmp_path, monkeypatch):
    """train --data on a release with two swapped label masks: refused before training (was: trained on them)."""
    root = mirror_release(release.root, tmp_path / "release")
    masks = release.markups["annotator1_round2"].variants["label_masks_modify"]
    swap_files(*(root / masks[t].relative_to(release.root) for t in ("Human_Skin_01", "Human_Testes_01")))
    result = run_cli("train", "--fold", "1", "--steps", "1", "--data", root, "--out", tmp_path / "cv")
    assert_user_error(result, "Human_Skin_01.tif", "carry their own label", "put back the right file")
    assert not (tmp_path / "cv").exists()


# ----------------------------------------------------------------------------------------------- metric


@pytest.fixture(scope="module")
def metric():
    import evaluate

    import cryonuseg_hf

    return evaluate.load(str(cryonuseg_hf.METRIC_PATH))


@pytest.fixture(scope="module")
def label_pair(release):
    """A real reference (annotator1_round2) and prediction (annotator2) of Human_Skin_01, cropped to 96 x 96."""
    from skimage.segmentation import relabel_sequential

    from cryonuseg_hf.data.readers import read_mask

    crop = (slice(200, 296), slice(200, 296))
    reference = read_mask(
        release.markups["annotator1_round2"].variants["label_masks_modify"]["Human_Skin_01"]
    )
    prediction = read_mask(release.markups["annotator2"].variants["label_masks_modify"]["Human_Skin_01"])
    return relabel_sequential(reference[crop])[0], relabel_sequential(prediction[crop])[0]


def test_metric_int8_labels(metric, label_pair):
    """int8 label images (the card promises any integer type): the same scores as uint16."""
    reference, prediction = label_pair
    assert reference.max() < 128 and prediction.max() < 128
    wide = metric.compute(
        predictions=[prediction.astype(np.uint16)], references=[reference.astype(np.uint16)]
    )
    small = metric.compute(predictions=[prediction.astype(np.int8)], references=[reference.astype(np.int8)])
    assert 0 < wide["aji"] < 1
    assert {k: small[k] for k in ("aji", "pq", "dice")} == {k: wide[k] for k in ("aji", "pq", "dice")}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: r > 0, "got a boolean mask, not a label image"),
        (lambda r: np.stack([r, r, r], axis=-1), "expected a 2-D label image (H, W), got shape (96, 96, 3)"),
        (lambda r: r.astype(np.int32) - 1, "negative ids"),
        (lambda r: r.astype(np.float32) + 0.5, "non-integer values"),
    ],
    ids=["bool", "rgb", "negative", "fractional"],
)
def test_metric_bad_prediction(metric, label_pair, make, message):
    """A prediction that is not a label image: refused naming which input and what to give instead."""
    reference, _ = label_pair
    with pytest.raises(
        ValueError, match="predictions\\[0\\]: .*" + message.replace("(", "\\(").replace(")", "\\)")
    ):
        metric.compute(predictions=[make(reference)], references=[reference])


def test_metric_count_mismatch(metric, label_pair):
    """Two predictions for one reference: refused saying so."""
    reference, prediction = label_pair
    with pytest.raises(ValueError, match="predictions"):
        metric.compute(predictions=[prediction, prediction], references=[reference])


# ------------------------------------------------------------------------------------------ load_dataset


@pytest.fixture(scope="module")
def one_config_build(release_path, tmp_path_factory):
    """A build of the real release holding one config (annotator2), the cheapest complete build."""
    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.reports.dataset_card import dataset_card

    out = tmp_path_factory.mktemp("build") / "cryonuseg"
    return build(release_path, out, card=dataset_card, markups=("annotator2",))


def test_load_dataset_lossless_instance_mask(one_config_build, release):
    """load_dataset gives back the released uint16 label mask bit for bit."""
    from datasets import load_dataset

    from cryonuseg_hf.data.readers import read_mask

    rows = load_dataset(
        str(one_config_build), "annotator2", split="train", columns=["tile_id", "instance_mask"]
    )
    row = next(r for r in rows if r["tile_id"] == "Human_Pancreas_03")
    released = read_mask(release.markups["annotator2"].variants["label_masks_modify"]["Human_Pancreas_03"])
    assert np.array_equal(np.asarray(row["instance_mask"], dtype=np.uint16), released)


def test_load_dataset_unknown_config(one_config_build):
    """A config the build does not hold: datasets names the configs it has."""
    from datasets import load_dataset

    with pytest.raises(ValueError, match="annotator2"):
        load_dataset(str(one_config_build), "annotator3", split="train")


def test_load_dataset_fold_filter(one_config_build):
    """filters=[("fold", "!=", 3)]: the 27 training tiles of fold 3, no Mediastinum tile."""
    from datasets import load_dataset

    rows = load_dataset(
        str(one_config_build),
        "annotator2",
        split="train",
        columns=["tile_id", "fold"],
        filters=[("fold", "!=", 3)],
    )
    assert len(rows) == 27 and not [t for t in rows["tile_id"] if "Mediastinum" in t]


def test_load_dataset_unknown_split(one_config_build):
    """split="fold_0" (folds are a column, not splits): refused naming the split."""
    from datasets import load_dataset

    with pytest.raises(ValueError, match="fold_0"):
        load_dataset(str(one_config_build), "annotator2", split="fold_0")


def test_metric_shape_mismatch(metric, label_pair):
    """A prediction of another size than its reference: refused naming both shapes."""
    reference, prediction = label_pair
    with pytest.raises(ValueError, match=r"\(96, 96\).*\(64, 64\)|\(64, 64\).*\(96, 96\)"):
        metric.compute(predictions=[prediction[:64, :64]], references=[reference])
