"""Subcommands of training: ``train`` (folds, the CV, the shipped model), ``pretrain`` and ``model-card``.

A run starts from a named recipe (``--recipe``: a YAML file of ``TrainConfig`` fields; the package ships
``segformer-b0-cryonuseg``, the shipped model's) and each option given on the command line overrides one field.
An option not given keeps the recipe's value, else ``TrainConfig``'s default: the parser leaves it unset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryonuseg_hf.cli.options import int_at_least

FLOAT_FIELDS = (
    "input_scale", "lr", "weight_decay", "dice_weight", "contact_weight", "scale_jitter", "ema_decay", "mix_share",
    "max_seconds", "save_every", "centre_fraction",
)  # fmt: skip
INT_FIELDS = (
    "first_stride", "boundary_width", "contact_radius", "steps", "batch_size", "crop", "warmup", "tune_tiles",
    "workers", "seed", "soup", "threads", "log_every",
)  # fmt: skip


def add_parsers(sub) -> None:
    train = sub.add_parser(
        "train",
        help="train SegFormer: one fold (--fold), the 10-fold CV (--cv), the all-data model (--final); --pack",
    )
    train.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a `cryonuseg-hf build` folder (read with load_dataset), a --pack .npz, or a raw release "
        "(default: $CRYONUSEG_DATA)",
    )
    train.add_argument("--fold", type=int, action="append", default=None, help="train and predict fold K")
    train.add_argument("--cv", action="store_true", help="all 10 folds, then score the held-out predictions")
    train.add_argument("--final", action="store_true", help="train on all 30 tiles and save the checkpoint")
    train.add_argument("--score-only", action="store_true", help="only score the predictions in --out")
    train.add_argument("--pack", type=Path, default=None, help="write tiles + all mark-ups to this .npz")
    train.add_argument("--out", type=Path, default=Path("results/cv"), help="CV results folder")
    train.add_argument("--checkpoint", type=Path, default=None, help="final model folder (default: shipped)")
    train.add_argument("--scale-note", default="", help="how this run differs from the full recipe")
    add_recipe_options(train)
    train.set_defaults(func=cmd_train)

    pretrain = sub.add_parser(
        "pretrain",
        help="train one SegFormer start point on other 40x H&E nuclei data (images/, labels/, ignore/ folders)",
    )
    pretrain.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="a folder with images/*.png, labels/*.png and optionally ignore/*.png (repeat for several)",
    )
    pretrain.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    pretrain.add_argument(
        "--state",
        type=Path,
        default=None,
        help="resumable training state (default: <out>.state.pt beside --out); rerun the command to resume",
    )
    pretrain.add_argument(
        "--resize",
        default=None,
        help="resize each --data folder before training: 'auto' matches each folder's median nucleus area to "
        "CryoNuSeg's (read from --cryonuseg), or one factor per folder, comma-separated (default: none)",
    )
    pretrain.add_argument(
        "--cryonuseg",
        type=Path,
        default=None,
        help="CryoNuSeg data that --resize auto measures against (default: $CRYONUSEG_DATA)",
    )
    add_recipe_options(pretrain)
    pretrain.set_defaults(func=cmd_pretrain)

    model_card = sub.add_parser("model-card", help="write model_card.md from the CV results files")
    model_card.add_argument(
        "--results", type=Path, default=Path("results"), help="results folder (holds cv/)"
    )
    model_card.add_argument("--out", type=Path, default=Path("model_card.md"))
    model_card.add_argument(
        "--repo-id", default="cryonuseg/segformer-cryonuseg", help="Hub model id the widget examples live in"
    )
    model_card.set_defaults(func=cmd_model_card)


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """``--recipe`` and one option per ``TrainConfig`` field; an option not given stays unset (SUPPRESS)."""
    from cryonuseg_hf.data.release import MARKUPS
    from cryonuseg_hf.model.segformer import DEVICES, VARIANTS
    from cryonuseg_hf.training.config import INT_MINIMUMS, TrainConfig, recipe_names

    defaults = TrainConfig()
    group = parser.add_argument_group(
        "recipe", "a named recipe or YAML file; each option below overrides one of its fields"
    )
    group.add_argument(
        "--recipe",
        default=None,
        help=f"a shipped recipe ({', '.join(recipe_names())}) or a YAML file (default: TrainConfig's defaults)",
    )

    def option(name: str, **kwargs) -> None:
        default = getattr(defaults, name)
        group.add_argument(
            f"--{name.replace('_', '-')}", default=argparse.SUPPRESS, help=f"(default: {default})", **kwargs
        )

    option("init")
    for name, choices in (("variant", tuple(VARIANTS)), ("markup", MARKUPS), ("device", DEVICES)):
        option(name, choices=choices)
    for name in FLOAT_FIELDS:
        option(name, type=float)
    for name in INT_FIELDS:
        option(name, type=int_at_least(INT_MINIMUMS[name]) if name in INT_MINIMUMS else int)
    option("class_weights", type=float, nargs="+", metavar="W")
    option("bf16", action="store_true")
    option("all_markups", action="store_true")
    group.add_argument(
        "--no-tta",
        dest="tta",
        action="store_false",
        default=argparse.SUPPRESS,
        help="held-out tiles without TTA",
    )
    group.add_argument(
        "--mix-data",
        action="append",
        default=argparse.SUPPRESS,
        help="a folder of other nuclei data (as pretrain --data) to mix into fine-tuning (repeatable; "
        "--mix-share of the crops)",
    )


def train_config(args: argparse.Namespace):
    """The ``TrainConfig`` of ``--recipe`` with the options given on the command line on top."""
    from cryonuseg_hf.training.config import TrainConfig, load_recipe, make_config

    fields = load_recipe(args.recipe) if args.recipe else {}
    given = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)}
    given = {f: tuple(v) if isinstance(v, list) else v for f, v in given.items()}  # repeatable options
    config = make_config(fields, given)
    if config.init:
        from cryonuseg_hf.model.segformer import check_start_point

        check_start_point(config.init)
    return config


def cmd_pretrain(args: argparse.Namespace) -> int:
    """One start point from other nuclei data (resumable: the same command started again continues)."""
    config = train_config(args)  # bad options fail here, before torch is imported or data read
    from cryonuseg_hf.training.cv import pretrain
    from cryonuseg_hf.training.processes import main_process

    resize = args.resize
    if resize not in (None, "auto"):
        try:
            resize = [float(f) for f in resize.split(",")]
        except ValueError:
            raise ValueError(
                f"--resize {args.resize!r}: expected 'auto' or comma-separated numbers"
            ) from None
        if len(resize) != len(args.data) or not all(f > 0 for f in resize):
            raise ValueError(
                f"--resize {args.resize!r}: expected one factor > 0 per --data ({len(args.data)})"
            )
    record = pretrain(config, args.data, args.out, args.command_line, args.state, resize, args.cryonuseg)
    if not main_process():  # under `accelerate launch` the main process speaks for the run
        return 0
    images = sum(s["images"] for s in record["sources"])
    print(
        f"pretrained on {record['windows']} windows of {images} images: {record['steps']} steps in "
        f"{record['train_seconds']} s, loss {record['loss_first_25']:.3f} -> {record['loss_last_25']:.3f} -> {args.out}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Pack, train folds, score the CV and/or train the final model: the training layer trains, the reports
    layer writes the CV's results files."""
    config = train_config(args)  # bad options fail here, before torch is imported or data read
    from cryonuseg_hf.core.folds import N_FOLDS
    from cryonuseg_hf.training.cv import check_folds

    folds = list(range(N_FOLDS)) if args.cv else list(args.fold or [])
    check_folds(folds)  # before the tiles are loaded
    if not (args.pack or folds or args.score_only or args.final):
        raise ValueError("nothing to do: give --fold K, --cv, --final, --score-only or --pack PATH")
    from cryonuseg_hf.core.paths import MODEL_PATH
    from cryonuseg_hf.reports.cv import write_cv_results
    from cryonuseg_hf.training.cv import fit, run_record
    from cryonuseg_hf.training.data import load_tiles, pack_tiles
    from cryonuseg_hf.training.processes import main_process

    tiles = load_tiles(args.data)
    if args.pack:
        path = pack_tiles(tiles, args.pack)
        print(f"packed {len(tiles['tile_ids'])} tiles and {list(tiles['masks'])} into {path}")
    run = run_record(config, args.command_line, args.scale_note)
    final = (args.checkpoint or MODEL_PATH) if args.final else None
    lines = fit(config, tiles, out=args.out, folds=folds, final_checkpoint=None, run=run)
    if (folds or args.score_only) and main_process():  # under `accelerate launch` the main process writes
        results = write_cv_results(Path(args.out), tiles, run)
        ours = results["scores"][config.markup]
        lines.append(
            f"CV on {results['n_tiles']} held-out tiles vs {config.markup}: AJI {ours['aji']:.4f} "
            f"PQ {ours['pq']:.4f} Dice {ours['dice']:.4f} -> {Path(args.out) / 'metrics.md'}"
        )
    if final is not None:
        lines += fit(config, tiles, out=args.out, final_checkpoint=final, run=run)
    if lines and main_process():
        print("\n".join(lines))
    return 0


def cmd_model_card(args: argparse.Namespace) -> int:
    from cryonuseg_hf.reports.model_card import write_model_card

    path = write_model_card(args.results, args.out, repo_id=args.repo_id)
    print(f"wrote {path}")
    return 0
