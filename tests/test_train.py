"""Training, saving and the fold protocol, on tiny SegFormers and synthetic tiles (seconds on a CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cryonuseg_hf.core import folds
from cryonuseg_hf.training import data as train_data
from cryonuseg_hf.training import loop as train_loop
from cryonuseg_hf.training.config import TrainConfig
from cryonuseg_hf.training.cv import train_model
from cryonuseg_hf.training.data import pack_tiles, training_indices
from cryonuseg_hf.training.loop import sample_batch

torch = pytest.importorskip("torch")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def _synthetic_tiles(seed: int = 0) -> dict:
    """30 tiles of purple disks (some touching) on pink, in fold order; every mark-up the same."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    images = np.empty((30, 512, 512, 3), dtype=np.uint8)
    masks = np.zeros((30, 512, 512), dtype=np.uint16)
    for t in range(30):
        for label in range(1, 61):
            r, c = rng.integers(12, 500, size=2)
            rr, cc = disk((r, c), rng.integers(6, 11), shape=(512, 512))
            masks[t, rr, cc] = label
        noise = rng.normal(0, 8, size=(512, 512, 3))
        colour = np.where(masks[t, ..., None] > 0, [90, 50, 140], [235, 185, 210])
        images[t] = np.clip(colour + noise, 0, 255).astype(np.uint8)
    return {"tile_ids": list(folds.TILE_IDS), "images": images, "masks": {"annotator1_round2": masks}}


@pytest.fixture(scope="module")
def tiles():
    return _synthetic_tiles()


TINY = dict(
    variant="tiny", input_scale=1.0, batch_size=4, crop=64, warmup=5, lr=3e-3, threads=2, tune_tiles=2
)


def test_tiny_model_learns(tiles):
    # a wall-clock budget this small cuts the 1000-step schedule right after the 30 steps that time it
    config = TrainConfig(**{**TINY, "batch_size": 2}, steps=1000, max_seconds=1e-3, log_every=8, seed=1)
    model, record = train_model(config, tiles, fold=3, progress=False)
    assert record["steps"] == 31 and record["fold"] == 3 and len(record["loss_curve"]) == 4
    assert record["loss_curve"][-1] < 0.8 * record["loss_curve"][0], record["loss_curve"]
    assert not set(record["train_tiles"]) & set(folds.tiles_of_fold(3))


def test_held_out_tiles_never_reach_training(tiles, monkeypatch):
    for k in range(folds.N_FOLDS):
        allowed = {folds.TILE_IDS[i] for i in training_indices(k)}
        assert allowed == set(folds.train_tiles(k)) and not allowed & set(folds.tiles_of_fold(k))
    assert training_indices(None) == list(range(30))
    # batches are drawn from the allowed tiles only: make the held-out tiles of fold 4 pure white
    images = torch.from_numpy(tiles["images"]).permute(0, 3, 1, 2).clone()
    held_out = [folds.TILE_IDS.index(t) for t in folds.tiles_of_fold(4)]
    images[held_out] = 255
    classes = torch.zeros((30, 1, 512, 512), dtype=torch.uint8)
    rng = np.random.default_rng(0)
    config = TrainConfig(**{**TINY, "batch_size": 64})
    for _ in range(5):
        x, _ = sample_batch(images, classes, training_indices(4), config, rng)
        assert (x.flatten(1) != 255).any(1).all()
    # a broken fold protocol is caught in code, not only here
    monkeypatch.setattr(train_data, "train_tiles", lambda k: folds.TILE_IDS[:27])
    with pytest.raises(RuntimeError, match="held-out tiles"):
        training_indices(0)


def test_save_load_identical_outputs(tmp_path, tiles):
    from cryonuseg_hf.model.postprocess import PostprocessParams, params_from_config
    from cryonuseg_hf.model.segformer import build_model, load_checkpoint, save_checkpoint

    torch.set_num_threads(2)
    model = build_model("tiny", input_scale=1.5, seed=3).eval()
    x = torch.rand(1, 3, 96, 96)
    params = PostprocessParams(interior_threshold=0.42, min_size=7)
    save_checkpoint(model, tmp_path / "fp32", postprocess=params, fp16=False)
    save_checkpoint(model, tmp_path / "fp16", postprocess=params)
    loaded, config = load_checkpoint(tmp_path / "fp32")
    with torch.inference_mode():
        assert torch.equal(model(pixel_values=x).logits, loaded(pixel_values=x).logits)
        half, _ = load_checkpoint(tmp_path / "fp16")
        assert half.dtype == torch.float32
        expected = build_model("tiny", input_scale=1.5, seed=3).half().float().eval()
        assert torch.equal(expected(pixel_values=x).logits, half(pixel_values=x).logits)
    assert params_from_config(config) == (params, 1.5)
    assert params_from_config(tmp_path / "fp16") == (params, 1.5)
    size = json.loads((tmp_path / "fp16" / "preprocessor_config.json").read_text())["size"]
    assert size == {"height": 768, "width": 768}
    from cryonuseg_hf.model.predict import open_predictor

    predictor = open_predictor(tmp_path / "fp32", "cpu", "torch", 2)
    probabilities = predictor.probabilities(tiles["images"][0][:80, :72], tta=True)
    assert probabilities.shape == (3, 80, 72)
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "missing")


def test_stock_pipeline_offline(tmp_path, tiles):
    from PIL import Image
    from transformers import pipeline

    from cryonuseg_hf.model.segformer import build_model, save_checkpoint

    save_checkpoint(build_model("tiny", input_scale=1.0), tmp_path / "model")
    segmenter = pipeline("image-segmentation", model=str(tmp_path / "model"), device="cpu")
    assert segmenter.model.dtype == torch.float32
    outputs = segmenter(Image.fromarray(tiles["images"][0][:100, :120]))
    assert {o["label"] for o in outputs} <= {"background", "nucleus_interior", "nucleus_boundary"}
    assert outputs and all(o["mask"].size == (120, 100) for o in outputs)


def test_cli_fold_and_score(tmp_path, tiles):
    from PIL import Image

    from cryonuseg_hf.cli import main

    packed = pack_tiles(
        {**tiles, "masks": {m: tiles["masks"]["annotator1_round2"] for m in folds_markups()}},
        tmp_path / "t.npz",
    )
    out = tmp_path / "results" / "cv"
    args = ["train", "--data", str(packed), "--fold", "2", "--out", str(out)]
    args += ["--variant", "tiny", "--input-scale", "1", "--steps", "40", "--crop", "64", "--batch-size", "2"]
    args += ["--lr", "0.003", "--warmup", "5"]
    assert main([*args, "--tune-tiles", "1"]) == 0  # held-out tiles with TTA, as the CV runs
    for tile in folds.tiles_of_fold(2):
        prediction = Image.open(out / "predictions" / f"{tile}.png")
        assert prediction.mode.startswith("I;16") and prediction.size == (512, 512)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_tiles"] == 3 and set(metrics["scores"]) == set(folds_markups())
    record = json.loads((out / "folds" / "fold_2.json").read_text())
    assert record["held_out"] == folds.tiles_of_fold(2) and "Human_Larynx_01" in record["train_tiles"]
    assert not set(record["tuning_tiles"]) & set(record["held_out"])
    assert "## Per organ" in (out / "metrics.md").read_text()
    # one inference path: the held-out prediction is what a user gets from the fold's saved checkpoint
    from cryonuseg_hf.model.predict import predict_instances

    tile = folds.tiles_of_fold(2)[0]
    user = predict_instances(
        tiles["images"][folds.TILE_IDS.index(tile)], out / "models" / "fold_2", backend="torch", tta=True
    )
    without_tta = predict_instances(
        tiles["images"][folds.TILE_IDS.index(tile)], out / "models" / "fold_2", backend="torch"
    )
    assert user.max() > 0 and not np.array_equal(user, without_tta)  # the check below can fail
    assert np.array_equal(np.asarray(Image.open(out / "predictions" / f"{tile}.png")), user)
    assert (
        record["postprocess"]
        == json.loads((out / "models" / "fold_2" / "config.json").read_text())["cryonuseg_postprocess"]
    )
    # a restarted command keeps the folds it finished with the same recipe
    before = (out / "folds" / "fold_2.json").read_text()
    assert main([*args, "--tune-tiles", "1"]) == 0
    assert (out / "folds" / "fold_2.json").read_text() == before
    # nothing to do is an error, not a silent success
    assert main(["train", "--data", str(packed), "--out", str(out)]) == 2

    card_path = tmp_path / "model_card.md"
    assert main(["model-card", "--results", str(tmp_path / "results"), "--out", str(card_path)]) == 0
    from huggingface_hub import ModelCard

    card = ModelCard.load(card_path)
    assert card.data.pipeline_tag == "image-segmentation" and card.data.library_name == "transformers"
    assert card.data.license == "cc-by-nc-sa-4.0" and card.data.widget
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    ours = metrics["scores"]["annotator1_round2"]
    assert results[("all_folds", "aji")] == pytest.approx(ours["aji"], abs=1e-4)
    assert ("fold_2", "pq") in results and ("fold_3", "pq") not in results
    assert "3 of 30 tiles" in card.text and "Frozen sections" in card.text


def folds_markups() -> tuple[str, ...]:
    from cryonuseg_hf.data.release import MARKUPS

    return MARKUPS


def test_first_stride_is_a_stock_config_field(tmp_path):
    from transformers import SegformerForSemanticSegmentation

    from cryonuseg_hf.model.segformer import build_model, save_checkpoint

    model = build_model("tiny", input_scale=1.0, first_stride=2).eval()
    with torch.inference_mode():
        assert model(pixel_values=torch.rand(1, 3, 64, 64)).logits.shape[-2:] == (32, 32)
    save_checkpoint(model, tmp_path / "m")
    loaded = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "m")
    assert loaded.config.strides == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="first_stride"):
        build_model("tiny", first_stride=3)


def test_first_stride_applies_to_a_start_point(tmp_path):
    """--first-stride with --init: the start point's weights at the asked stride (it used to be ignored)."""
    from cryonuseg_hf.model.segformer import build_model, save_checkpoint

    start = save_checkpoint(build_model("tiny", input_scale=1.0, seed=4), tmp_path / "start", fp16=False)
    model = build_model(init=start, input_scale=1.0, first_stride=2).eval()
    assert model.config.strides == [2, 2, 2, 2]
    with torch.inference_mode():
        assert model(pixel_values=torch.rand(1, 3, 64, 64)).logits.shape[-2:] == (32, 32)
    same = build_model(init=start, input_scale=1.0).eval()
    assert same.config.strides == [4, 2, 2, 2]
    for (name, a), b in zip(same.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="first_stride"):
        build_model(init=start, first_stride=3)
    assert build_model("tiny", init=start).config.hidden_sizes == [8, 16, 32, 64]
    # the recorded variant is what trains: a start point of another variant is refused, not silently used
    with pytest.raises(ValueError, match=r"is SegFormer-tiny, not the --variant b0"):
        build_model("b0", init=start)


def _nan_loss_on(calls: set[int] | None, monkeypatch, first_bad: int = 0):
    """Make the loss NaN on the given training steps (1-based), or on every step from ``first_bad`` on."""
    count = {"n": 0}
    real_loss = train_loop.loss_fn

    def loss_fn(logits, target, config, contact=None):
        count["n"] += 1
        loss = real_loss(logits, target, config, contact)
        bad = count["n"] in calls if calls is not None else count["n"] >= first_bad
        return loss * float("nan") if bad else loss

    monkeypatch.setattr(train_loop, "loss_fn", loss_fn)


def test_a_nonfinite_step_is_skipped(tiles, monkeypatch):
    # a bf16 overflow made one GPU pretraining run NaN for good: such a step is now skipped and counted
    _nan_loss_on({3}, monkeypatch)
    model, record = train_model(TrainConfig(**TINY, steps=8, log_every=4), tiles, fold=0, progress=False)
    assert record["steps"] == 8 and record["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_diverged_training_stops_with_a_clear_error(tiles, monkeypatch, tmp_path):
    _nan_loss_on(None, monkeypatch, first_bad=7)
    monkeypatch.setattr(train_loop, "MAX_NONFINITE_IN_A_ROW", 5)
    config = TrainConfig(**TINY, steps=40, log_every=4, save_every=0.0)
    state = tmp_path / "fold.state.pt"
    with pytest.raises(FloatingPointError, match=r"diverged: steps 7-11 .*Lower --lr") as error:
        train_model(config, tiles, fold=0, progress=False, state_path=state)
    assert str(state) in str(error.value)
    saved = torch.load(state, weights_only=False)  # the last state saved holds weights, not NaN
    assert saved["step"] == 10 and saved["skipped"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_contact_weight_weighs_the_contact_pixels():
    from cryonuseg_hf.training.loop import loss_fn

    target = torch.zeros((1, 8, 8), dtype=torch.long)
    target[:, :, 4:] = 1
    contact = torch.zeros((1, 8, 8), dtype=torch.bool)
    contact[:, :, 3:5] = True
    logits = torch.zeros((1, 3, 8, 8))
    logits[:, 1, :, 2:] = 4.0  # confidently wrong on columns 2-3 (background), right elsewhere
    logits[:, 0, :, :2] = 4.0
    plain = TrainConfig()
    weighted = TrainConfig(contact_weight=5.0)
    # without a weight (or without contacts) the loss is the unweighted one, bit for bit
    assert torch.equal(loss_fn(logits, target, plain, contact), loss_fn(logits, target, plain))
    # the wrong pixels of column 3 lie in the contact zone: weighting it raises the loss
    assert loss_fn(logits, target, weighted, contact) > loss_fn(logits, target, plain) + 0.1
    # a uniform contact zone weighs every pixel alike: the weighted mean is unchanged
    everywhere = torch.ones_like(contact)
    assert torch.allclose(loss_fn(logits, target, weighted, everywhere), loss_fn(logits, target, plain))


def test_training_with_contact_weight_needs_its_zones(tiles, tmp_path):
    config = TrainConfig(**TINY, steps=4, contact_weight=5.0, contact_radius=2)
    model, record = train_model(config, tiles, fold=2, progress=False)
    assert record["steps"] == 4 and np.isfinite(record["loss_last_25"])
    with pytest.raises(ValueError, match="contact zones"):
        train_loop.fit_segformer(
            config, tiles["images"], tiles["masks"]["annotator1_round2"].astype(np.uint8), [0], progress=False
        )
    with pytest.raises(ValueError, match="contact-weight"):
        from cryonuseg_hf.training.config import validate_config

        validate_config(TrainConfig(contact_weight=-1.0))
    from cryonuseg_hf.training.cv import pretrain

    with pytest.raises(ValueError, match="not to pretrain"):  # refused before any data is read
        pretrain(config, [tmp_path / "nowhere"], tmp_path / "start", "cryonuseg-hf pretrain")


def test_all_markups_draws_targets_from_every_markup_of_the_training_tiles_only(tiles, monkeypatch, tmp_path):
    from cryonuseg_hf.data.targets import instances_to_classes
    from cryonuseg_hf.training import cv

    rng = np.random.default_rng(1)
    first = tiles["masks"]["annotator1_round2"]
    other = np.where(rng.random(first.shape[1:]) < 0.5, first, 0)  # a sparser mark-up of the same tiles
    three = {
        **tiles,
        "masks": {"annotator1_round1": first, "annotator1_round2": other, "annotator2": first[::-1]},
    }
    seen = {}

    def fake_fit(config, images, classes, indices, stream, progress, state_path, name, contacts, weights):
        seen.update(images=images, classes=classes, indices=indices, contacts=contacts)
        return None, {}

    monkeypatch.setattr(cv, "fit_segformer", fake_fit)
    config = TrainConfig(**TINY, steps=4, all_markups=True, contact_weight=5.0, boundary_width=2)
    cv.train_model(config, three, fold=4, progress=False)
    train = training_indices(4)
    assert len(seen["images"]) == len(seen["classes"]) == len(seen["contacts"]) == 90
    assert seen["indices"] == [k * 30 + i for k in range(3) for i in train]  # all copies, no held-out tile
    for k, markup in enumerate(("annotator1_round1", "annotator1_round2", "annotator2")):
        i = train[k]
        assert np.array_equal(seen["images"][k * 30 + i], three["images"][i])
        assert np.array_equal(seen["classes"][k * 30 + i], instances_to_classes(three["masks"][markup][i], 2))
    # without the option only --markup's targets are drawn
    cv.train_model(TrainConfig(**TINY, steps=4), three, fold=4, progress=False)
    assert len(seen["images"]) == 30 and seen["indices"] == train
    assert np.array_equal(seen["classes"][train[0]], instances_to_classes(other[train[0]], 1))
    with pytest.raises(ValueError, match=r"mark-ups \['annotator1_round1', 'annotator2'\]"):
        cv.train_model(config, tiles, fold=4, progress=False)  # one mark-up loaded
    from cryonuseg_hf.training.cv import pretrain

    with pytest.raises(ValueError, match="all-markups.*not to pretrain"):
        pretrain(
            TrainConfig(all_markups=True), [tmp_path / "nowhere"], tmp_path / "start", "cryonuseg-hf pretrain"
        )


def test_soup_averages_the_weights_of_runs_with_successive_seeds(tiles, tmp_path):
    import torch

    from cryonuseg_hf.training import cv

    config = TrainConfig(**TINY, steps=3, soup=2, seed=4)
    state = tmp_path / "fold_2.state.pt"
    soup, record = cv.train_model(config, tiles, fold=2, progress=False, state_path=state)
    runs = [
        cv.train_model(TrainConfig(**TINY, steps=3, seed=s), tiles, fold=2, progress=False) for s in (4, 5)
    ]
    weights = [dict(m.state_dict()) for m, _ in runs]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for name, value in soup.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (weights[0][name] + weights[1][name]) / 2, msg=name)
    assert len(record["soup_runs"]) == 2 and record["fold"] == 2
    assert record["train_seconds"] == pytest.approx(
        sum(r["train_seconds"] for r in record["soup_runs"]), abs=0.2
    )
    # each run kept its own resumable state, under the fold's name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_2.run0.state.pt", "fold_2.run1.state.pt"]
    with pytest.raises(ValueError, match="soup.*not to pretrain"):
        cv.pretrain(TrainConfig(soup=2), [tmp_path / "nowhere"], tmp_path / "start", "cryonuseg-hf pretrain")


def test_all_markups_tunes_against_every_markup(monkeypatch):
    from cryonuseg_hf.model import postprocess
    from cryonuseg_hf.training import cv

    masks = {
        m: np.arange(30)[:, None, None] + 100 * k
        for k, m in enumerate(("annotator1_round1", "annotator1_round2", "annotator2"))
    }
    tiles = {"images": np.zeros((30, 1, 1, 3), np.uint8), "masks": masks}
    seen = {}

    class Predictor:
        def probabilities(self, image, tta):
            return np.zeros((3, 1, 1), np.float32)

    def fake_tune(probabilities, references, workers):
        seen["references"] = references
        return postprocess.PostprocessParams(), [{"objective": 0.5}]

    monkeypatch.setattr(postprocess, "tune_params", fake_tune)
    cv.tune_postprocess(Predictor(), tiles, [3, 7], TrainConfig(all_markups=True))
    assert [[int(r[0, 0]) for r in refs] for refs in seen["references"]] == [[3, 103, 203], [7, 107, 207]]
    cv.tune_postprocess(Predictor(), tiles, [3, 7], TrainConfig(markup="annotator2"))
    assert [[int(r[0, 0]) for r in refs] for refs in seen["references"]] == [[203], [207]]


def test_reports_say_what_the_model_was_trained_on():
    from cryonuseg_hf.reports.cv import cv_preface
    from cryonuseg_hf.reports.model_card import card_body
    from cryonuseg_hf.training.config import ground_truth

    assert ground_truth({"markup": "annotator2"}) == "annotator2"  # records made before all_markups existed
    assert ground_truth({"markup": "annotator2", "all_markups": True}).startswith(
        "all three mark-ups (annotator1_round1, annotator1_round2, annotator2: one drawn at random per"
    )
    metrics = json.loads((RESULTS / "cv" / "metrics.json").read_text())
    metrics["config"]["all_markups"] = False
    one = "\n".join(cv_preface(metrics))
    assert (
        "ground truth annotator1_round2;" in one and "annotator1_round2 is the training ground truth" in one
    )
    metrics["config"]["all_markups"] = True
    three = "\n".join(cv_preface(metrics))
    assert "ground truth all three mark-ups" in three and "one of the three trained on" in three
    assert "ground truth all three mark-ups" in card_body(metrics, {"config": metrics["config"]})
    # a run's scale note is shown where one was given, and no empty one otherwise
    assert "Scale of this run" not in "\n".join(cv_preface({**metrics, "scale_note": ""}))
    assert "**Scale of this run: folds 0 and 1 only**" in cv_preface(
        {**metrics, "scale_note": "folds 0 and 1 only"}
    )


def test_a_record_made_before_a_field_existed_has_that_fields_default():
    from dataclasses import asdict

    from cryonuseg_hf.training.config import recipe

    config = asdict(TrainConfig(contact_weight=5.0))
    old = {k: v for k, v in config.items() if k != "all_markups"}  # saved before --all-markups existed
    assert recipe(old) == recipe(config)
    assert recipe(old) != recipe(asdict(TrainConfig(contact_weight=5.0, all_markups=True)))
    assert recipe({**config, "threads": 8}) == recipe(config)  # how a run goes, not what it makes
    assert recipe({}) == {} != recipe(config)


def test_centre_class_starts_from_a_three_class_start_point_and_trains(tmp_path, tiles):
    """--centre-fraction: a fourth class whose classifier row starts as the interior's, so the model starts from
    the start point's outputs; the class weights must then have four values."""
    from cryonuseg_hf.data.targets import CENTRE_CLASS_NAMES
    from cryonuseg_hf.model.segformer import build_model, save_checkpoint
    from cryonuseg_hf.training.config import make_config

    start = save_checkpoint(build_model("tiny", input_scale=1.0, seed=4), tmp_path / "start", fp16=False)
    model = build_model(init=start, input_scale=1.0, class_names=CENTRE_CLASS_NAMES).eval()
    assert model.config.id2label[3] == "nucleus_centre" and model.config.num_labels == 4
    with torch.inference_mode():
        logits = model(pixel_values=torch.rand(1, 3, 64, 64)).logits
    assert torch.equal(logits[:, 3], logits[:, 1])
    three = build_model(init=start, input_scale=1.0).eval()
    with torch.inference_mode():
        assert three(pixel_values=torch.rand(1, 3, 64, 64)).logits.shape[1] == 3
    with pytest.raises(ValueError, match=r"class_weights \[1.0, 1.0, 2.0\]: expected 4 numbers"):
        make_config({"centre_fraction": 0.5}, {})
    config = make_config({**TINY, "steps": 3, "centre_fraction": 0.5, "class_weights": [1, 1, 2, 1]}, {})
    trained, record = train_model(config, tiles, fold=0, progress=False)
    assert trained.config.num_labels == 4 and record["steps"] == 3
