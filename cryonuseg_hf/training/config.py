"""The training recipe: every option that decides a trained model, with its checks.

A :class:`TrainConfig` is saved beside every result and checkpoint (``cryonuseg_train_config`` in a checkpoint's
``config.json``); a resumed run must have the same :func:`recipe`. Named recipes are YAML files in ``recipes/``
(:func:`load_recipe`): the CLI starts from one and its options override single fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.tiles import TILE_SIZE
from cryonuseg_hf.data.release import DEFAULT_MARKUP, MARKUPS
from cryonuseg_hf.data.targets import class_names
from cryonuseg_hf.model.segformer import DEVICES, VARIANTS


@dataclass
class TrainConfig:
    """Everything that decides a trained model; saved beside every result and checkpoint."""

    variant: str = "b0"
    input_scale: float = 2.0
    first_stride: int = 4
    """Stride of SegFormer's first patch embedding (4 in the paper; 2 doubles the output resolution)."""
    init: str | None = None
    markup: str = DEFAULT_MARKUP
    """The training target and the mark-up the post-processing is tuned against, unless ``all_markups``."""
    all_markups: bool = False
    """Each training crop's target drawn from one of the three mark-ups at random, not from ``markup`` only;
    the post-processing is tuned on the mean objective over the three."""
    mix_data: tuple[str, ...] = ()
    """Folders of other nuclei data (as ``pretrain --data`` reads them) mixed into fine-tuning on CryoNuSeg."""
    mix_share: float = 0.25
    """The share of training crops drawn from ``mix_data`` (when given)."""
    boundary_width: int = 1
    centre_fraction: float = 0.0
    """> 0: a fourth class, ``nucleus_centre``, holds each nucleus's pixels at least this fraction of its deepest
    distance from its outline, and seeds the post-processing's watershed (0 = the three classes only;
    :func:`cryonuseg_hf.data.targets.nucleus_centres`). ``class_weights`` then has four values."""
    steps: int = 1500
    max_seconds: float | None = None
    """Optional wall-clock budget per model: after 10 timed steps, ``steps`` is cut to fit it."""
    batch_size: int = 16
    crop: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    class_weights: tuple[float, ...] = (1.0, 1.0, 2.0)
    """Cross-entropy weight of each class, in the order of :func:`cryonuseg_hf.data.targets.class_names`."""
    dice_weight: float = 1.0
    contact_weight: float = 0.0
    """Extra cross-entropy weight of the pixels near two or more nuclei (0 = none; ``contact_zones``)."""
    contact_radius: int = 3
    """Pixels within this many of two or more nuclei are contact pixels."""
    scale_jitter: float = 0.15
    soup: int = 1
    """Fine-tuning runs (seeds ``seed``, ``seed + 1``, ...) whose weights are averaged into the model (a
    "model soup", Wortsman et al. 2022); 1 = one run. Costs ``soup`` times the training time, nothing at
    prediction."""
    ema_decay: float = 0.0
    """The model a run returns is the exponential moving average of its weights with this decay per step
    (``torch.optim.swa_utils``; 0 = the last step's weights). 0.98 averages about the last 50 steps."""
    tta: bool = True
    tune_tiles: int = 9
    """Training tiles the post-processing is tuned on (one per organ first); 0 = all training tiles."""
    workers: int = 1
    """Processes for the post-processing grid search (results do not depend on it)."""
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    log_every: int = 25
    bf16: bool = False
    """bf16 autocast on the CPU too (always on with CUDA)."""
    save_every: float = 300.0
    """Seconds between resumable training states (with ``state_path``)."""


INT_MINIMUMS: dict[str, int] = {
    "first_stride": 1,
    "boundary_width": 1,
    "contact_radius": 1,
    "steps": 1,
    "batch_size": 1,
    "crop": 32,  # one cell of SegFormer's 32 px grid; smaller crops round to an empty input
    "warmup": 0,
    "tune_tiles": 0,
    "workers": 1,
    "seed": 0,
    "soup": 1,
    "threads": 1,
    "log_every": 1,
}
"""The smallest value of each integer ``TrainConfig`` field (the CLI's argument types use them too)."""


MAX_CROP = TILE_SIZE
"""The side of a CryoNuSeg tile: a training crop cannot be larger."""


def validate_config(config: TrainConfig) -> TrainConfig:
    """Check every field of ``config`` before any work; return it.

    Raises:
        ValueError: the first bad field, named as its command-line option, with the values it takes.
    """

    def bad(name: str, expected: str) -> ValueError:
        value = getattr(config, name)
        return ValueError(f"--{name.replace('_', '-')} {value!r}: expected {expected}")

    for name, minimum in INT_MINIMUMS.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad(name, f"a whole number >= {minimum}")
    if config.crop > MAX_CROP:
        raise bad("crop", f"at most {MAX_CROP} (the tile side)")
    if config.markup not in MARKUPS:
        raise bad("markup", f"one of {', '.join(MARKUPS)}")
    if config.variant not in VARIANTS:
        raise bad("variant", f"one of {', '.join(VARIANTS)}")
    if config.device not in DEVICES:
        raise bad("device", f"one of {', '.join(DEVICES)}")
    for name in ("input_scale", "lr", "save_every"):
        if not math.isfinite(getattr(config, name)) or getattr(config, name) <= 0:
            raise bad(name, "a number > 0")
    for name in ("weight_decay", "dice_weight", "contact_weight"):
        if not math.isfinite(getattr(config, name)) or getattr(config, name) < 0:
            raise bad(name, "a number >= 0")
    if not 0 <= config.centre_fraction <= 1:
        raise bad("centre_fraction", "a fraction in [0, 1] (0 = no centre class)")
    classes = class_names(config.centre_fraction)
    weights = config.class_weights
    if len(weights) != len(classes) or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(
            f"class_weights {list(weights)!r}: expected {len(classes)} numbers >= 0, one per class "
            f"({', '.join(classes)})"
        )
    if not 0 <= config.scale_jitter < 1:
        raise bad("scale_jitter", "a number in [0, 1)")
    if not 0 < config.mix_share < 1:
        raise bad("mix_share", "a share in (0, 1)")
    if not 0 <= config.ema_decay < 1:
        raise bad("ema_decay", "a number in [0, 1) (0 = no average)")
    if config.max_seconds is not None and not config.max_seconds > 0:
        raise bad("max_seconds", "a number of seconds > 0")
    return config


RUN_OPTIONS = ("threads", "log_every", "save_every", "workers")
"""``TrainConfig`` fields that change how a run goes, not what it makes: a resumed run may change them."""


def ground_truth(config: dict[str, Any]) -> str:
    """What a recipe (a saved ``TrainConfig`` dict) trained and tuned on, in words for reports."""
    if config.get("all_markups"):  # absent from records made before the option existed
        return (
            f"all three mark-ups ({', '.join(MARKUPS)}: one drawn at random per training crop, all three in the "
            "post-processing's tuning objective)"
        )
    return str(config["markup"])


def recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a saved ``TrainConfig`` dict that decide the model, to compare two runs. A field the dict
    lacks was added to ``TrainConfig`` after it was saved, and counts as its default: the behaviour it trained
    with. An empty dict (a record without a config) stays empty, equal to no recipe."""
    if not config:
        return {}
    full = json.loads(json.dumps({**asdict(TrainConfig()), **config}))  # tuples and lists compare alike
    return {k: v for k, v in full.items() if k not in RUN_OPTIONS}


RECIPES = Path(__file__).with_name("recipes")
"""The named recipes the package ships: ``<name>.yaml``, each a mapping of :class:`TrainConfig` fields."""


def recipe_names() -> list[str]:
    """The names of the shipped recipes (``--recipe NAME``)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """The fields a recipe sets: a shipped recipe by name (see :func:`recipe_names`) or a YAML file by path.

    Raises:
        FileNotFoundError: neither a shipped name nor an existing file.
        ValueError: the file is not a mapping of :class:`TrainConfig` field names to values; names the file.
    """
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"recipe {str(name_or_path)!r}: no such file, and no shipped recipe of that name "
            f"(shipped: {', '.join(recipe_names())})"
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"{path}: a recipe is a mapping of TrainConfig fields to values, got {type(values).__name__}"
        )
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown recipe fields {unknown}; the fields are {sorted(known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def make_config(recipe_fields: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The checked :class:`TrainConfig` of a recipe's fields with ``overrides`` (command-line options) on top."""
    values = {**recipe_fields, **overrides}
    for name in ("input_scale", "lr", "weight_decay", "dice_weight", "contact_weight", "scale_jitter",
                 "ema_decay", "mix_share", "save_every", "centre_fraction"):  # fmt: skip
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = float(values[name])  # YAML reads 5 as an int; the record keeps floats
    if "class_weights" in values:
        weights = values["class_weights"]
        try:
            values["class_weights"] = tuple(float(w) for w in weights)
        except (TypeError, ValueError):
            raise ValueError(
                f"class_weights {weights!r}: expected a list of numbers, one per class"
            ) from None
    return validate_config(TrainConfig(**values))


def shipped_recipe_of(config: dict[str, Any]) -> str | None:
    """The name of the shipped recipe that makes the model a saved ``TrainConfig`` dict describes, if one does."""
    for name in recipe_names():
        if recipe(asdict(make_config(load_recipe(name), {}))) == recipe(config):
            return name
    return None
