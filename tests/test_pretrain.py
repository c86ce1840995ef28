"""Pretraining data (real MoNuSeg and NuInsSeg tiles), the pretrain command, resumable training."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cryonuseg_hf.data.external import (
    default_external,
    load_pretraining_tiles,
    median_nucleus_area,
    read_folder,
    window_starts,
)
from cryonuseg_hf.data.targets import IGNORE_INDEX

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def external() -> Path:
    path = default_external()
    if not (path / "monuseg_train").is_dir():
        message = f"external pretraining data not found at {path}; set $CRYONUSEG_EXTERNAL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _subset(source: Path, target: Path, stems: list[str]) -> Path:
    for sub in ("images", "labels", "ignore"):
        if (source / sub).is_dir():
            (target / sub).mkdir(parents=True)
            for stem in stems:
                shutil.copy(source / sub / f"{stem}.png", target / sub / f"{stem}.png")
    return target


@pytest.fixture(scope="module")
def small_external(external, tmp_path_factory) -> list[Path]:
    """Two MoNuSeg images (1000x1000) and two NuInsSeg spleen tiles with sizeable ignore masks."""
    root = tmp_path_factory.mktemp("external")
    monuseg = _subset(
        external / "monuseg_train",
        root / "monuseg_train",
        ["TCGA-18-5592-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1"],
    )
    spleen = _subset(
        external / "nuinsseg_human_spleen",
        root / "nuinsseg_human_spleen",
        ["human_spleen_05", "human_spleen_08"],
    )
    return [monuseg, spleen]


def test_windows_cover_every_pixel():
    for length in (512, 513, 1000, 2048, 1537):
        covered = np.zeros(length, bool)
        for start in window_starts(length):
            assert 0 <= start <= length - 512
            covered[start : start + 512] = True
        assert covered.all()
    with pytest.raises(ValueError, match="shorter"):
        window_starts(300)


def test_resize_matches_nucleus_sizes_and_keeps_labels_whole(small_external):
    records = [read_folder(folder) for folder in small_external]
    areas = [median_nucleus_area(r["labels"] for r in recs) for recs in records]
    assert areas[1] > 1.5 * areas[0]  # NuInsSeg's pixels are finer than MoNuSeg's
    data = load_pretraining_tiles(small_external, boundary_width=2, match_area=228.0, instances=True)
    factors = [s["resize"] for s in data["sources"]]
    assert factors[1] < factors[0] < 1
    assert (
        load_pretraining_tiles(small_external[:1], resize=factors[:1])["sources"][0]["median_nucleus_px"]
        == (data["sources"][0]["median_nucleus_px"])
    )  # a measured factor given back by hand resizes the same
    window = data["images"].shape[1]
    assert window % 32 == 0 and window <= round(512 * factors[1])  # the smallest resized tile still fits
    for source, factor in zip(data["sources"], factors, strict=True):
        assert source["resize"] == factor
        assert abs(source["median_nucleus_px"] - 228.0) < 0.25 * 228.0  # brought near the target
    # nearest-neighbour labels: no new ids, and classes still come from the instances
    spleen = [i for i, n in enumerate(data["names"]) if n.startswith("nuinsseg_human_spleen/human_spleen_05")]
    ids = set(np.unique(data["instances"][spleen]))
    assert ids <= set(np.unique(records[1][0]["labels"]))
    nucleus = data["classes"][spleen] != 0
    assert np.array_equal(
        nucleus & (data["classes"][spleen] != IGNORE_INDEX),
        (data["instances"][spleen] > 0) & (data["classes"][spleen] != IGNORE_INDEX),
    )
    with pytest.raises(ValueError, match="one resize factor > 0 per folder"):
        load_pretraining_tiles(small_external, resize=[0.5])


def test_real_tiles_become_windows_with_ignore(small_external):
    data = load_pretraining_tiles(small_external, boundary_width=2)
    assert data["images"].shape == (2 * 4 + 2, 512, 512, 3) and data["images"].dtype == np.uint8
    assert [s["windows"] for s in data["sources"]] == [8, 2]
    assert "instances" not in data  # only contact weighting needs them
    assert data["sources"][0]["nuclei"] == 480 + 314  # the manifest's counts
    # a window is the image cut where its name says
    name = data["names"][1]
    stem, where = name.split("/")[1].split("@")
    r, c = map(int, where.split(","))
    full = np.asarray(Image.open(small_external[0] / "images" / f"{stem}.png").convert("RGB"))
    assert (r, c) == (0, 488) and np.array_equal(data["images"][1], full[r : r + 512, c : c + 512])
    # NuInsSeg's ambiguous areas are ignored, nothing else is
    ignore = np.asarray(Image.open(small_external[1] / "ignore" / "human_spleen_08.png")) > 0
    spleen = data["classes"][-1]
    assert ignore.mean() > 0.05 and np.array_equal(spleen == IGNORE_INDEX, ignore)
    assert not (data["classes"][:8] == IGNORE_INDEX).any()
    assert set(np.unique(data["classes"][:8])) == {0, 1, 2}


def test_bad_folders_are_refused_with_the_file(small_external, tmp_path):
    with pytest.raises(FileNotFoundError, match="images/ and labels/"):
        read_folder(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(small_external[1], broken)
    (broken / "labels" / "human_spleen_05.png").unlink()
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(broken / "labels" / "human_spleen_08.png")
    (broken / "images" / "extra.png").write_bytes(b"not a png")
    with pytest.raises(ValueError) as error:
        read_folder(broken)
    text = str(error.value)
    assert "3 problem(s)" in text and "human_spleen_05.png: no label file" in text
    assert "human_spleen_08.png: label (100, 100)" in text and "extra.png: no label file" in text
    rgb_labels = tmp_path / "rgb"
    shutil.copytree(small_external[1], rgb_labels)
    shutil.copy(rgb_labels / "images" / "human_spleen_05.png", rgb_labels / "labels" / "human_spleen_05.png")
    with pytest.raises(
        ValueError, match=r"labels/human_spleen_05.png: a label must be a single-channel integer"
    ):
        read_folder(rgb_labels)


def test_pretrain_command_then_fine_tune_from_it(small_external, tmp_path):
    from cryonuseg_hf.cli import main
    from cryonuseg_hf.model.segformer import build_model

    out = tmp_path / "pretrained"
    args = ["pretrain", "--out", str(out), "--variant", "tiny", "--input-scale", "1", "--steps", "4"]
    args += ["--crop", "64", "--batch-size", "2", "--boundary-width", "2", "--bf16"]
    for folder in small_external:
        args += ["--data", str(folder)]
    assert main(args) == 0
    record = json.loads((out / "pretrain.json").read_text())
    assert record["steps"] == 4 and record["windows"] == 10 and record["config"]["bf16"] is True
    assert record["command"] == shlex.join(["cryonuseg-hf", *args])  # as typed
    assert not out.with_name("pretrained.state.pt").exists()
    # fine-tuning starts from every weight of the start point, its decode head included (same three classes)
    from cryonuseg_hf.model.segformer import load_checkpoint

    saved, _ = load_checkpoint(out)
    started = build_model(init=out, input_scale=1.5)
    assert started.config.cryonuseg_input_scale == 1.5 and started.config.num_labels == 3
    for (name, a), b in zip(saved.state_dict().items(), started.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("ema_decay", [0.0, 0.5])
def test_interrupted_training_resumes_to_the_same_model(small_external, tmp_path, monkeypatch, ema_decay):
    from cryonuseg_hf.training import loop as train_module
    from cryonuseg_hf.training.config import TrainConfig
    from cryonuseg_hf.training.loop import fit_segformer

    data = load_pretraining_tiles(small_external[1:])
    config = TrainConfig(
        variant="tiny", input_scale=1.0, batch_size=2, crop=64, steps=6, warmup=2, save_every=0,
        ema_decay=ema_decay,
    )  # fmt: skip
    indices = list(range(len(data["names"])))
    straight, record = fit_segformer(config, data["images"], data["classes"], indices, progress=False)
    if ema_decay:  # the same run returns the average of its weights, not the last step's
        last, last_record = fit_segformer(
            TrainConfig(**{**config.__dict__, "ema_decay": 0.0}), data["images"], data["classes"], indices,
            progress=False,
        )  # fmt: skip
        assert last_record["loss_curve"] == record["loss_curve"]
        weights = [(a, b) for a, b in zip(straight.parameters(), last.parameters(), strict=True)]
        assert any(not torch.equal(a, b) for a, b in weights)

    state = tmp_path / "run.state.pt"
    real_augment, calls = train_module.augment, []

    def failing_augment(x, generator):  # the machine goes away during step 5
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_augment(x, generator)

    monkeypatch.setattr(train_module, "augment", failing_augment)
    with pytest.raises(KeyboardInterrupt):
        fit_segformer(config, data["images"], data["classes"], indices, progress=False, state_path=state)
    assert torch.load(state, weights_only=False)["step"] == 4
    monkeypatch.setattr(train_module, "augment", real_augment)
    resumed, resumed_record = fit_segformer(
        config, data["images"], data["classes"], indices, progress=False, state_path=state
    )
    assert resumed_record["steps"] == 6 and resumed_record["loss_curve"] == record["loss_curve"]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # a state of another recipe is not silently continued
    with pytest.raises(ValueError, match="another recipe"):
        fit_segformer(
            TrainConfig(**{**config.__dict__, "lr": 0.5}),
            data["images"],
            data["classes"],
            indices,
            progress=False,
            state_path=state,
        )


def test_mix_data_adds_other_nuclei_data_to_fine_tuning_at_its_share(small_external, monkeypatch):
    from test_train import TINY, _synthetic_tiles

    from cryonuseg_hf.data.targets import contact_zones
    from cryonuseg_hf.training import cv
    from cryonuseg_hf.training.config import TrainConfig
    from cryonuseg_hf.training.data import training_indices

    seen = {}

    def fake_fit(config, images, classes, indices, stream, progress, state_path, name, contacts, weights):
        seen.update(images=images, classes=classes, indices=indices, contacts=contacts, weights=weights)
        return None, {}

    monkeypatch.setattr(cv, "fit_segformer", fake_fit)
    tiles = _synthetic_tiles()
    folders = tuple(str(f) for f in small_external)
    config = TrainConfig(**TINY, steps=2, mix_data=folders, mix_share=0.2, contact_weight=5.0)
    cv.train_model(config, tiles, fold=3, progress=False)
    other = load_pretraining_tiles(folders, config.boundary_width, instances=True)
    n, train = len(other["names"]), training_indices(3)
    assert seen["indices"] == train + list(range(30, 30 + n))  # no held-out tile, every window of the others
    assert np.array_equal(seen["images"][30:], other["images"])
    assert np.array_equal(seen["classes"][30:], other["classes"])  # their ignore masks kept
    assert np.array_equal(
        seen["contacts"][30 + n - 1], contact_zones(other["instances"][-1], config.contact_radius)
    )
    assert seen["weights"][: len(train)].sum() == pytest.approx(0.8)
    assert seen["weights"][len(train) :] == pytest.approx([0.2 / n] * n)
    cv.train_model(TrainConfig(**TINY, steps=2), tiles, fold=3, progress=False)  # without: as before
    assert seen["weights"] is None and seen["indices"] == train
    with pytest.raises(ValueError, match="--mix-share 1.0: expected a share in"):
        from cryonuseg_hf.training.config import validate_config

        validate_config(TrainConfig(mix_data=folders, mix_share=1.0))
