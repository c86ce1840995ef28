"""The model card's account of pretraining: a start point made in stages is followed back to its first stage."""

import json

from cryonuseg_hf.reports.model_card import pretraining_stages


def _stage(root, name, init, steps, scale):
    folder = root / name
    folder.mkdir()
    record = {
        "steps": steps,
        "train_seconds": 60.0 * steps / 100,
        "command": f"cryonuseg-hf pretrain --out {name}",
        "config": {"init": init, "input_scale": scale, "batch_size": 8, "crop": 128},
    }
    (folder / "pretrain.json").write_text(json.dumps(record))
    return record


def test_stages_are_followed_to_the_first(tmp_path):
    first = _stage(tmp_path, "stage1", None, 1000, 1.0)
    second = _stage(tmp_path, "stage2", "stage1", 300, 1.5)
    assert pretraining_stages({"init": "stage2"}, tmp_path) == [first, second]
    assert pretraining_stages({"init": str(tmp_path / "stage1")}, tmp_path) == [first]
    assert pretraining_stages({"init": None}, tmp_path) == []


def test_an_init_without_a_record_ends_the_chain(tmp_path):
    # a start point from elsewhere (no pretrain.json) is not a stage made here
    second = _stage(tmp_path, "stage2", "downloaded", 300, 1.5)
    assert pretraining_stages({"init": "stage2"}, tmp_path) == [second]


def test_the_card_names_contact_weighting_and_weight_averaging_only_when_used():
    from cryonuseg_hf.reports.model_card import _training_note

    assert _training_note({"contact_weight": 0.0, "contact_radius": 3, "soup": 1, "ema_decay": 0.0}) == ""
    assert _training_note({}) == ""  # records made before the options existed
    assert "within 3 px of two or more nuclei weighted 6x" in _training_note(
        {"contact_weight": 5.0, "contact_radius": 3}
    )
    assert _training_note({"soup": 2, "seed": 0}) == ", the weights of 2 such runs (seeds 0, 1, ...) averaged"
    assert "decay 0.98 per step" in _training_note({"ema_decay": 0.98})


def test_the_card_says_which_other_data_fine_tuning_mixed_in():
    from cryonuseg_hf.reports.model_card import _training_data

    plain = _training_data({}, {"mix_data": []})
    assert "all 30 CryoNuSeg tiles |" in plain and "%" not in plain
    mixed = _training_data(
        {}, {"mix_data": ["../x/monuseg_train", "../x/nuinsseg_human_spleen"], "mix_share": 0.25}
    )
    assert "all 30 CryoNuSeg tiles + monuseg_train, nuinsseg_human_spleen (25% of the crops) |" in mixed
