"""Named recipes: the shipped model's recipe is a file, the CLI starts from it and options override it."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pytest

from cryonuseg_hf.cli import build_parser
from cryonuseg_hf.cli.train import train_config
from cryonuseg_hf.core.paths import MODEL_PATH
from cryonuseg_hf.training.config import TrainConfig, load_recipe, make_config, recipe, recipe_names

SHIPPED = "segformer-b0-cryonuseg"


def _parsed(*argv: str):
    return train_config(build_parser().parse_args(["train", "--fold", "0", *argv]))


def test_the_shipped_recipe_file_is_the_shipped_checkpoints_recipe():
    trained = json.loads((MODEL_PATH / "config.json").read_text())["cryonuseg_train_config"]
    config = _parsed("--recipe", SHIPPED)
    assert recipe(asdict(config)) == recipe(trained)
    # the file sets exactly the fields that differ from the defaults, nothing the defaults already say
    defaults = asdict(TrainConfig())
    set_by_file = load_recipe(SHIPPED)
    assert {k for k in defaults if json.dumps(defaults[k]) != json.dumps(asdict(config)[k])} == set(
        set_by_file
    )
    assert len(set_by_file) == 12


def test_options_override_single_fields_of_the_recipe():
    config = _parsed("--recipe", SHIPPED, "--steps", "7", "--lr", "0.01")
    assert (config.steps, config.lr, config.crop, config.all_markups) == (7, 0.01, 128, True)
    assert _parsed() == TrainConfig()  # no recipe, no options: the defaults
    assert _parsed("--bf16").bf16 is True and _parsed("--no-tta").tta is False


def test_a_recipe_can_be_a_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("steps: 5\ncontact_weight: 2\nmix_data: [a, b]\n")
    config = _parsed("--recipe", str(path))
    assert (config.steps, config.contact_weight, config.mix_data) == (5, 2.0, ("a", "b"))
    assert isinstance(config.contact_weight, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stepz: 5\n", "unknown recipe fields \\['stepz'\\]"),
        ("- 1\n", "a mapping"),
        ("steps: [\n", "not valid YAML"),
    ],
)
def test_a_bad_recipe_file_is_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value)


def test_an_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=SHIPPED):
        load_recipe("no-such-recipe")
    assert SHIPPED in recipe_names()


def test_recipe_values_are_checked_like_options():
    with pytest.raises(ValueError, match="--crop 9"):
        make_config({"crop": 9}, {})


def test_every_recipe_field_has_an_option():
    parser = build_parser()
    train = next(
        a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train")
    )
    options = {a.dest for a in train._actions}
    missing = {f.name for f in fields(TrainConfig)} - options - {"class_weights"}
    assert not missing, missing


def test_the_model_card_shows_the_recipe_file():
    from cryonuseg_hf.reports.model_card import _recipe_section
    from cryonuseg_hf.training.config import shipped_recipe_of

    trained = json.loads((MODEL_PATH / "config.json").read_text())["cryonuseg_train_config"]
    assert shipped_recipe_of(trained) == SHIPPED
    assert shipped_recipe_of({**trained, "steps": 301}) is None
    section = _recipe_section(trained)
    assert f"recipes/{SHIPPED}.yaml" in section and "contact_weight: 5.0" in section
