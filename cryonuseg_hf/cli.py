"""The ``cryonuseg-hf`` command: one entry, one subcommand per job, each a thin adapter over the library.

The library logs; this module prints. Heavy imports happen inside each subcommand, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cryonuseg_hf.core.folds import TILE_IDS


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="raw CryoNuSeg release: a folder in the Kaggle layout or the Kaggle zip "
        "(default: $CRYONUSEG_DATA, else ../shared/datasets/cryonuseg beside the checkout)",
    )


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``, refused at the parser (usage and exit 2, no traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def _source(args: argparse.Namespace) -> Path:
    from cryonuseg_hf.data.release import default_source

    return args.source if args.source is not None else default_source()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryonuseg-hf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="predict, export and score the example tiles the package ships (the main job, small)"
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (created)")
    demo.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped one)")
    demo.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    demo.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo")
    demo.set_defaults(func=_cmd_demo)

    check = sub.add_parser("check", help="find and validate every file of a raw release")
    _add_source(check)
    check.set_defaults(func=_cmd_check)

    build = sub.add_parser(
        "build",
        help="build the Hub dataset folder: Parquet per mark-up config plus the dataset card README.md",
    )
    build.add_argument(
        "--source",
        type=Path,
        default=None,
        help="raw release folder or Kaggle zip (default: $CRYONUSEG_DATA, else ../shared/datasets/cryonuseg; "
        "if neither exists, the release is downloaded from Kaggle)",
    )
    build.add_argument("--out", type=Path, required=True, help="folder to create, e.g. cryonuseg")
    build.add_argument("--overwrite", action="store_true", help="replace a previous build in --out")
    build.set_defaults(func=_cmd_build)

    download = sub.add_parser("download", help="download the raw release from Kaggle with kagglehub")
    download.add_argument("--out", type=Path, default=None, help="target folder (default: kagglehub's cache)")
    download.set_defaults(func=_cmd_download)

    push = sub.add_parser(
        "push", help="upload a dataset build, or the model, metric and Space of hub-export, to the Hub"
    )
    push.add_argument(
        "folder",
        type=Path,
        help="a `cryonuseg-hf build` folder, one folder of a hub-export, or a hub-export --out folder (all three)",
    )
    push.add_argument(
        "--repo-id",
        default=None,
        help="e.g. your-name/cryonuseg; not needed for a hub-export --out folder (its hub_export.json names them)",
    )
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.set_defaults(func=_cmd_push)

    hub_export = sub.add_parser(
        "hub-export",
        help="write the model, metric and Space as complete Hub repositories (folders) into --out",
    )
    hub_export.add_argument(
        "--out", type=Path, required=True, help="folder for model/, nuclei_instance_metric/, space/"
    )
    hub_export.add_argument(
        "--owner", default="cryonuseg", help="Hub user or organisation the repositories are for"
    )
    hub_export.add_argument(
        "--checkpoint", type=Path, default=None, help="model folder (default: the shipped one)"
    )
    hub_export.add_argument(
        "--results", type=Path, default=Path("results"), help="results folder the card reads"
    )
    hub_export.add_argument(
        "--threads", type=int, default=None, help="CPU threads for the ONNX export and check"
    )
    hub_export.add_argument("--overwrite", action="store_true", help="replace a previous hub-export in --out")
    hub_export.set_defaults(func=_cmd_hub_export)

    agreement = sub.add_parser(
        "agreement", help="score the three mark-ups against each other (intra- and inter-observer agreement)"
    )
    _add_source(agreement)
    agreement.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for human_agreement.json/.md/_per_tile.csv"
    )
    agreement.set_defaults(func=_cmd_agreement)

    predict = sub.add_parser(
        "predict",
        help="nuclei instances of H&E images: label TIFF, overlay PNG, QuPath GeoJSON, ImageJ ROI zip, CSV",
    )
    predict.add_argument(
        "images", nargs="+", type=Path, help="PNG/JPEG/TIFF files or folders of them, and whole-slide images"
    )
    predict.add_argument("-o", "--output", type=Path, required=True, help="output folder (created)")
    predict.add_argument(
        "--model", type=Path, default=None, help="saved SegFormer checkpoint (default: the shipped one)"
    )
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predict.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="onnx: onnxruntime on an export checked against torch and cached per checkpoint; "
        "auto: onnx on the CPU, torch on a GPU",
    )
    predict.add_argument(
        "--threads", type=_int_at_least(1), default=None, help="CPU threads for torch/onnxruntime"
    )
    predict.add_argument(
        "--tile-size", type=_int_at_least(64), default=512, help="larger images are predicted in tiles"
    )
    predict.add_argument(
        "--margin", type=_int_at_least(0), default=64, help="context around each tile's core, pixels"
    )
    predict.add_argument("--tta", action="store_true", help="average over 8 flips/rotations (8x slower)")
    predict.add_argument("--max-pixels", type=_int_at_least(1), default=2**28, help="refuse larger images")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument(
        "--allow-non-tissue",
        action="store_true",
        help="predict images that do not look like H&E tissue (black, blank, grey) instead of refusing them",
    )
    slides = predict.add_argument_group(
        "whole slides (.svs, .ndpi, .scn, .bif, pyramidal .tif): GeoJSON, CSV, overview PNG in level-0 pixels"
    )
    slides.add_argument("--mpp", type=float, default=None, help="µm per level-0 pixel (default: the slide's)")
    slides.add_argument("--roi", default=None, help="only this region: x,y,width,height in level-0 pixels")
    slides.add_argument("--labels", action="store_true", help="also write a pyramidal label TIFF")
    predict.set_defaults(func=_cmd_predict)

    app = sub.add_parser(
        "app", help="serve the Gradio app (the Space): upload an H&E image, get its nuclei and the exports"
    )
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    app.add_argument("--port", type=int, default=7860, help="port to listen on")
    app.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped one)")
    app.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    app.add_argument("--threads", type=int, default=None, help="CPU threads for torch/onnxruntime")
    app.add_argument(
        "--max-pixels", type=int, default=None, help="refuse larger uploads (default: 4096x4096 pixels)"
    )
    app.set_defaults(func=_cmd_app)

    mask_report = sub.add_parser(
        "mask-report", help="regenerate every mask variant from the ROIs and compare with the released files"
    )
    _add_source(mask_report)
    mask_report.add_argument(
        "--out",
        type=Path,
        default=Path("results"),
        help="folder for mask_agreement.csv and mask_agreement.md",
    )
    mask_report.add_argument(
        "--tiles",
        nargs="+",
        default=None,
        choices=TILE_IDS,
        metavar="TILE",
        help="only these tile ids, e.g. Human_Larynx_01 (default: all 30)",
    )
    mask_report.set_defaults(func=_cmd_mask_report)

    train = sub.add_parser(
        "train",
        help="train SegFormer: one fold (--fold), the 10-fold CV (--cv), the all-data model (--final); --pack",
    )
    train.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a `cryonuseg-hf build` folder (read with load_dataset), a --pack .npz, or a raw release "
        "(default: $CRYONUSEG_DATA, else ../shared/datasets/cryonuseg)",
    )
    train.add_argument("--fold", type=int, action="append", default=None, help="train and predict fold K")
    train.add_argument("--cv", action="store_true", help="all 10 folds, then score the held-out predictions")
    train.add_argument("--final", action="store_true", help="train on all 30 tiles and save the checkpoint")
    train.add_argument("--score-only", action="store_true", help="only score the predictions in --out")
    train.add_argument("--pack", type=Path, default=None, help="write tiles + all mark-ups to this .npz")
    train.add_argument("--out", type=Path, default=Path("results/cv"), help="CV results folder")
    train.add_argument("--checkpoint", type=Path, default=None, help="final model folder (default: shipped)")
    train.add_argument("--results", type=Path, default=Path("results"), help="holds human_agreement.json")
    train.add_argument("--scale-note", default="", help="how this run differs from the full recipe")
    _add_train_options(train)
    train.add_argument("--no-tta", dest="tta", action="store_false", help="held-out tiles without TTA")
    train.set_defaults(func=_cmd_train)

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
    _add_train_options(pretrain)
    pretrain.set_defaults(func=_cmd_pretrain)

    model_card = sub.add_parser("model-card", help="write model_card.md from the CV results files")
    model_card.add_argument(
        "--results", type=Path, default=Path("results"), help="results folder (holds cv/)"
    )
    model_card.add_argument("--out", type=Path, default=Path("model_card.md"))
    model_card.add_argument(
        "--repo-id", default="cryonuseg/segformer-cryonuseg", help="Hub model id the widget examples live in"
    )
    model_card.set_defaults(func=_cmd_model_card)

    score = sub.add_parser(
        "score",
        help="score any tool's predictions (label images, QuPath GeoJSON, ImageJ RoiSets, HoVer-Net .mat) "
        "per tile, organ and fold, beside the SegFormer CV and the human agreement",
    )
    score.add_argument(
        "predictions",
        type=Path,
        help="folder with one file per tile, named after it (e.g. Human_Larynx_01.png)",
    )
    _add_source(score)
    score.add_argument(
        "--out", type=Path, required=True, help="folder for score.md, score.json, score_per_tile.csv"
    )
    score.add_argument(
        "--reference",
        action="append",
        default=None,
        help="mark-up to score against (repeatable; default: annotator1_round1, annotator1_round2, annotator2)",
    )
    score.add_argument("--pattern", default="*", help="glob choosing the files, e.g. '*_labels.tif'")
    score.add_argument(
        "--object-type",
        action="append",
        default=None,
        help="GeoJSON: keep only these QuPath object types (repeatable: detection, annotation, cell)",
    )
    score.add_argument(
        "--cv",
        type=Path,
        default=Path("results/cv/metrics.json"),
        help="SegFormer CV scores to put beside (left out when the file is missing)",
    )
    score.add_argument(
        "--name", default=None, help="what the report calls the predictions (default: folder name)"
    )
    score.add_argument(
        "--ignore-unmatched",
        action="store_true",
        help="list files that name no tile as extra instead of failing",
    )
    score.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    score.set_defaults(func=_cmd_score)

    return parser


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """The recipe options (every field of ``TrainConfig``), shared by ``train`` and ``pretrain``."""
    from cryonuseg_hf.data.release import MARKUPS
    from cryonuseg_hf.model.segformer import DEVICES, VARIANTS
    from cryonuseg_hf.training.config import INT_MINIMUMS, TrainConfig

    defaults = TrainConfig()
    parser.add_argument("--init", default=defaults.init)
    for name, choices in (("variant", tuple(VARIANTS)), ("markup", MARKUPS), ("device", DEVICES)):
        parser.add_argument(f"--{name}", default=getattr(defaults, name), choices=choices)
    for name in (
        "input_scale",
        "lr",
        "weight_decay",
        "dice_weight",
        "contact_weight",
        "scale_jitter",
        "ema_decay",
        "mix_share",
        "max_seconds",
        "save_every",
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    for name in (
        "first_stride",
        "boundary_width",
        "contact_radius",
        "steps",
        "batch_size",
        "crop",
        "warmup",
        "tune_tiles",
        "workers",
        "seed",
        "soup",
        "threads",
        "log_every",
    ):
        kind = _int_at_least(INT_MINIMUMS[name]) if name in INT_MINIMUMS else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU (always on with CUDA)")
    parser.add_argument(
        "--mix-data",
        action="append",
        default=[],
        help="a folder of other nuclei data (as pretrain --data) to mix into fine-tuning (repeatable; "
        "--mix-share of the crops)",
    )
    parser.add_argument(
        "--all-markups",
        action="store_true",
        help="draw each training crop's target from one of the three mark-ups at random and tune the "
        "post-processing on all three (instead of --markup only)",
    )


def _train_command(args: argparse.Namespace) -> str:
    """The ``cryonuseg-hf train`` command equivalent to ``args``: every option that differs from its default
    (``--scale-note`` is recorded separately)."""
    import shlex

    parts = ["cryonuseg-hf", "train"]
    if args.data is not None:
        parts += ["--data", str(args.data)]
    for fold in args.fold or []:
        parts += ["--fold", str(fold)]
    parts += [
        flag
        for flag, on in (("--cv", args.cv), ("--final", args.final), ("--score-only", args.score_only))
        if on
    ]
    for name in ("pack", "out", "checkpoint", "results"):
        if getattr(args, name) is not None:
            parts += [f"--{name}", str(getattr(args, name))]
    return shlex.join(parts + _recipe_options(args))


def _recipe_options(args: argparse.Namespace) -> list[str]:
    """The command-line options of every ``TrainConfig`` field in ``args`` that differs from its default."""
    from cryonuseg_hf.training.config import TrainConfig

    parts, defaults = [], TrainConfig()
    for name in TrainConfig.__dataclass_fields__:
        value = getattr(args, name, getattr(defaults, name))
        value = tuple(value) if isinstance(value, list) else value  # a repeatable option
        if value != getattr(defaults, name):
            if isinstance(value, bool):
                parts += ["--no-tta"] if name == "tta" else [f"--{name.replace('_', '-')}"]
            elif isinstance(value, tuple):
                parts += [p for item in value for p in (f"--{name.replace('_', '-')}", str(item))]
            else:
                parts += [f"--{name.replace('_', '-')}", str(value)]
    return parts


def _train_config(args: argparse.Namespace):
    """The ``TrainConfig`` of parsed ``train``/``pretrain`` options (fields the options lack keep defaults)."""
    from cryonuseg_hf.training.config import TrainConfig, validate_config

    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)}
    fields = {f: tuple(v) if isinstance(v, list) else v for f, v in fields.items()}  # repeatable options
    return validate_config(TrainConfig(**fields))


def _cmd_pretrain(args: argparse.Namespace) -> int:
    """One start point from other nuclei data (resumable: the same command started again continues)."""
    import shlex

    config = _train_config(args)  # bad options fail here, before torch is imported or data read
    from cryonuseg_hf.training.cv import pretrain

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
    command = shlex.join(
        ["cryonuseg-hf", "pretrain", *[f"--data={d}" for d in args.data], f"--out={args.out}"]
        + ([f"--state={args.state}"] if args.state else [])
        + ([f"--resize={args.resize}"] if args.resize else [])
        + _recipe_options(args)
    )
    record = pretrain(config, args.data, args.out, command, args.state, resize, args.cryonuseg)
    images = sum(s["images"] for s in record["sources"])
    print(
        f"pretrained on {record['windows']} windows of {images} images: {record['steps']} steps in "
        f"{record['train_seconds']} s, loss {record['loss_first_25']:.3f} -> {record['loss_last_25']:.3f} -> {args.out}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Pack, train folds, score the CV and/or train the final model: the training layer trains, the reports
    layer writes the CV's results files."""
    config = _train_config(args)  # bad options fail here, before torch is imported or data read
    from cryonuseg_hf.core.folds import N_FOLDS
    from cryonuseg_hf.training.cv import check_folds

    folds = list(range(N_FOLDS)) if args.cv else list(args.fold or [])
    check_folds(folds)  # before the tiles are loaded
    if not (args.pack or folds or args.score_only or args.final):
        raise ValueError("nothing to do: give --fold K, --cv, --final, --score-only or --pack PATH")
    from cryonuseg_hf.core.paths import MODEL_PATH
    from cryonuseg_hf.reports.cv import human_rows, write_cv_results
    from cryonuseg_hf.training.cv import fit, run_record
    from cryonuseg_hf.training.data import load_tiles, pack_tiles

    tiles = load_tiles(args.data)
    if args.pack:
        path = pack_tiles(tiles, args.pack)
        print(f"packed {len(tiles['tile_ids'])} tiles and {list(tiles['masks'])} into {path}")
    run = run_record(config, _train_command(args), args.scale_note)
    final = (args.checkpoint or MODEL_PATH) if args.final else None
    lines = fit(config, tiles, out=args.out, folds=folds, final_checkpoint=None, run=run)
    if folds or args.score_only:
        results = write_cv_results(Path(args.out), tiles, run, human_rows(Path(args.results)))
        ours = results["scores"][config.markup]
        lines.append(
            f"CV on {results['n_tiles']} held-out tiles vs {config.markup}: AJI {ours['aji']:.4f} "
            f"PQ {ours['pq']:.4f} Dice {ours['dice']:.4f} -> {Path(args.out) / 'metrics.md'}"
        )
    if final is not None:
        lines += fit(config, tiles, out=args.out, final_checkpoint=final, run=run)
    if lines:
        print("\n".join(lines))
    return 0


def _cmd_model_card(args: argparse.Namespace) -> int:
    from cryonuseg_hf.reports.model_card import write_model_card

    path = write_model_card(args.results, args.out, repo_id=args.repo_id)
    print(f"wrote {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.demo import run_demo

    records = run_demo(args.out, model=args.model, backend=args.backend, overwrite=args.overwrite)
    print(f"{'tile':18s} {'fold':>4s} {'annotated':>9s} {'predicted':>9s}   dice    aji    aji+   pq")
    for r in records:
        print(
            f"{r['tile_id']:18s} {r['fold']:4d} {r['nuclei_annotated']:9d} {r['n_pred']:9d}   "
            f"{r['dice']:.3f}  {r['aji']:.3f}  {r['aji_plus']:.3f}  {r['pq']:.3f}"
        )
    print(f"outputs and scores.json in {args.out}")
    print("note: the shipped model was trained on all 30 tiles, these included; held-out scores: results/cv/")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from cryonuseg_hf.data.builder import check_release
    from cryonuseg_hf.data.release import open_release

    release = open_release(_source(args))
    n_rois = check_release(release)  # reads every file build reads, and checks they belong together
    print(f"{release.root}: complete release of {len(release.images)} tiles; every file reads and fits")
    print(f"ROIs per mark-up: {n_rois}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.hub import download_release
    from cryonuseg_hf.data.builder import MARKUPS
    from cryonuseg_hf.reports.dataset_build import build

    source = _source(args)
    if args.source is None and not source.exists():
        print(f"no local release at {source}; downloading it from Kaggle", file=sys.stderr)
        try:
            source = download_release()
        except ConnectionError as error:
            print(f"cryonuseg-hf build: error: {error}", file=sys.stderr)
            return 2
    timings: dict = {}
    out = build(source, args.out, overwrite=args.overwrite, timings=timings)
    print(f"built {', '.join(MARKUPS)} from {source} into {out} in {timings['total']:.1f} s")
    print(f'load it with datasets.load_dataset("{out}") or, from {out.parent}, load_dataset("{out.name}")')
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.hub import download_release
    from cryonuseg_hf.data.release import open_release

    try:
        path = download_release(args.out)
    except ConnectionError as error:
        print(f"cryonuseg-hf download: error: {error}", file=sys.stderr)
        return 2
    release = open_release(path)
    print(
        f"downloaded the release to {release.root}; build with: cryonuseg-hf build --source {path} --out cryonuseg"
    )
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.hub_export import push_export, push_folder

    try:
        if args.repo_id is None:
            urls = push_export(args.folder, private=args.private)
        else:
            urls = {str(args.folder): push_folder(args.folder, args.repo_id, private=args.private)}
    except ConnectionError as error:
        print(f"cryonuseg-hf push: error: {error}", file=sys.stderr)
        return 2
    for folder, url in urls.items():
        print(f"pushed {folder}: {url}")
    return 0


def _cmd_hub_export(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.hub_export import hub_export
    from cryonuseg_hf.core.paths import MODEL_PATH

    command = f"cryonuseg-hf hub-export --out {args.out} --owner {args.owner} --results {args.results}"
    command += f" --checkpoint {args.checkpoint}" if args.checkpoint else ""
    manifest = hub_export(
        args.out,
        owner=args.owner,
        checkpoint=args.checkpoint or MODEL_PATH,
        results=args.results,
        overwrite=args.overwrite,
        threads=args.threads,
        command=command,
    )
    for folder, repo in manifest["repos"].items():
        print(f"{args.out / folder}: {repo['kind']} for {repo['repo_type']} repository {repo['repo_id']}")
    check = manifest["onnx_check"]
    print(f"ONNX export checked against torch: largest logit difference {check['max_abs_logit_diff']:.2g}")
    print(f"push all three with: cryonuseg-hf push {args.out}")
    return 0


def _cmd_agreement(args: argparse.Namespace) -> int:
    from cryonuseg_hf.data.builder import check_release
    from cryonuseg_hf.data.release import open_release
    from cryonuseg_hf.reports.agreement import write_agreement

    release = open_release(_source(args))
    check_release(release)  # scores of files that do not belong together would be silently wrong
    agreement, paths = write_agreement(release, args.out)
    for name, result in agreement.items():
        means = "  ".join(f"{k} {v:.4f}" for k, v in result["mean"].items())
        print(f"{name} ({result['prediction']} vs reference {result['reference']}): {means}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cryonuseg_hf.model.predict import ensure_writable_folder, load_predictor, predict_files
    from cryonuseg_hf.model.wsi import is_slide, parse_roi, predict_slide

    ensure_writable_folder(args.output)
    roi = parse_roi(args.roi) if args.roi else None
    predictor = load_predictor(args.model, device=args.device, backend=args.backend, threads=args.threads)
    slides = [path for path in args.images if is_slide(path)]
    images = [path for path in args.images if path not in slides]
    written, failures = {}, {}
    if images:
        written, failures = predict_files(
            images,
            args.output,
            predictor,
            overwrite=args.overwrite,
            tile_size=args.tile_size,
            margin=args.margin,
            tta=args.tta,
            max_pixels=args.max_pixels,
            allow_non_tissue=args.allow_non_tissue,
        )
        where = f"{args.output} ({predictor.backend} on {predictor.device})"
        print(f"predicted {len(written)} image(s) into {where}")
    for path in slides:
        try:
            summary = predict_slide(
                path,
                args.output,
                predictor,
                mpp=args.mpp,
                roi=roi,
                labels=args.labels,
                overwrite=args.overwrite,
                tta=args.tta,
                tile_size=args.tile_size,
                margin=args.margin,
                progress=True,
            )
        except (OSError, ValueError) as error:
            failures[path] = str(error)
            continue
        except KeyboardInterrupt:
            print(f"interrupted: {path}: no output of it was left behind", file=sys.stderr)
            return 130
        written[path] = summary["outputs"]
        print(
            f"{path}: {summary['nuclei']} nuclei in {summary['tissue_mm2']:.2f} mm2 of tissue, "
            f"{summary['seconds']:.0f} s; outputs {args.output}/{path.stem}{{.geojson,_nuclei.csv,_overview.png}}"
        )
    for path, message in failures.items():
        print(f"failed: {path}: {message}", file=sys.stderr)
    return 1 if failures or not written else 0


def _cmd_app(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.app import APP_MAX_PIXELS, launch

    print(f"serving the app on http://{args.host}:{args.port} (no public link; Ctrl+C stops it)")
    try:
        launch(
            host=args.host,
            port=args.port,
            model=args.model,
            backend=args.backend,
            threads=args.threads,
            max_pixels=args.max_pixels or APP_MAX_PIXELS,
        )
    except ImportError as error:
        print(f"cryonuseg-hf app: error: {error}", file=sys.stderr)
        return 2
    return 0


def _cmd_mask_report(args: argparse.Namespace) -> int:
    from cryonuseg_hf.reports.mask_report import mask_report

    command = "cryonuseg-hf mask-report" + (f" --tiles {' '.join(args.tiles)}" if args.tiles else "")
    report = mask_report(_source(args), args.out, tiles=args.tiles, progress=True, command=command)
    for row in report["summary"]:
        print(
            f"{row['markup']:18s} {row['variant']:33s} identical {row['identical_tiles']:2d}/{row['tiles']} "
            f"pixel agreement {row['mean_pixel_agreement']:.6f} max abs diff {row['max_abs_difference']}"
        )
    print(f"wrote {report['csv']} and {report['markdown']}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from cryonuseg_hf.evaluation.score import score_folder
    from cryonuseg_hf.reports.score import write_report

    report = score_folder(
        args.predictions,
        source=args.source,
        references=args.reference,
        pattern=args.pattern,
        object_types=args.object_type,
        cv_metrics=args.cv,
        allow_extra=args.ignore_unmatched,
        name=args.name,
    )
    command = "cryonuseg-hf " + " ".join(sys.argv[1:]) if "score" in sys.argv[1:3] else "cryonuseg-hf score"
    paths = write_report(report, args.out, command=command, overwrite=args.overwrite)
    missing = ", ".join(report["missing"]) or "none"
    print(f"scored {len(report['tiles'])} tile(s) of {args.predictions}; missing: {missing}")
    for name in ("extra", "skipped"):
        if report[name]:
            print(f"{name}: {', '.join(Path(p).name for p in report[name])}")
    for reference in report["references"]:
        mean = report["summary"][reference]["mean"]
        values = "  ".join(f"{m} {mean[m]:.4f}" for m in ("dice", "aji", "aji_plus", "pq"))
        print(f"vs {reference}: {values}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    # OSError: missing, unreadable or unwritable paths; FloatingPointError: a training run that diverged
    except (OSError, ValueError, FloatingPointError) as error:
        print(f"cryonuseg-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
