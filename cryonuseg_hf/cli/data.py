"""Subcommands of the dataset: ``check``, ``build``, ``download``, ``mask-report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryonuseg_hf.cli.options import add_overwrite, add_source, source
from cryonuseg_hf.core.folds import TILE_IDS


def add_parsers(sub) -> None:
    check = sub.add_parser(
        "check",
        help="find and validate every file of a raw release, or check that a built dataset folder's files hold "
        "the mark-ups its card says",
    )
    add_source(check)
    check.set_defaults(func=cmd_check)

    build = sub.add_parser(
        "build",
        help="build the Hub dataset folder: Parquet per mark-up config plus the dataset card README.md",
    )
    add_source(build, download=True)
    build.add_argument("--out", type=Path, required=True, help="folder to create, e.g. cryonuseg")
    add_overwrite(build, "a previous build in --out")
    build.set_defaults(func=cmd_build)

    download = sub.add_parser("download", help="download the raw release from Kaggle with kagglehub")
    download.add_argument("--out", type=Path, default=None, help="target folder (default: kagglehub's cache)")
    download.set_defaults(func=cmd_download)

    mask_report = sub.add_parser(
        "mask-report", help="regenerate every mask variant from the ROIs and compare with the released files"
    )
    add_source(mask_report)
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
    mask_report.set_defaults(func=cmd_mask_report)


def cmd_check(args: argparse.Namespace) -> int:
    from cryonuseg_hf.data.build import is_build
    from cryonuseg_hf.data.parquet import check_build
    from cryonuseg_hf.data.release import open_release
    from cryonuseg_hf.data.release_checks import check_release

    path = source(args)
    if path.is_dir() and is_build(path):
        configs = check_build(path)
        print(f"{path}: a built dataset; every data file of {', '.join(configs)} holds its own config's rows")
        return 0
    release = open_release(path)
    n_rois = check_release(release)  # reads every file build reads, and checks they belong together
    print(f"{release.root}: complete release of {len(release.images)} tiles; every file reads and fits")
    print(f"ROIs per mark-up: {n_rois}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    import os

    from cryonuseg_hf.apps.hub import download_release
    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.data.release import DATA_ENV, MARKUPS
    from cryonuseg_hf.reports.dataset_card import dataset_card

    if args.source is None and not os.environ.get(DATA_ENV):
        print(f"no --source and no ${DATA_ENV}: downloading the release from Kaggle", file=sys.stderr)
        try:
            release = download_release()
        except ConnectionError as error:
            print(f"cryonuseg-hf build: error: {error}", file=sys.stderr)
            return 2
    else:
        release = source(args)
    timings: dict = {}
    out = build(release, args.out, card=dataset_card, overwrite=args.overwrite, timings=timings)
    print(f"built {', '.join(MARKUPS)} from {release} into {out} in {timings['total']:.1f} s")
    print(f'load it with datasets.load_dataset("{out}") or, from {out.parent}, load_dataset("{out.name}")')
    return 0


def cmd_download(args: argparse.Namespace) -> int:
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


def cmd_mask_report(args: argparse.Namespace) -> int:
    from cryonuseg_hf.reports.mask_report import mask_report

    report = mask_report(source(args), args.out, tiles=args.tiles, progress=True, command=args.command_line)
    for row in report["summary"]:
        print(
            f"{row['markup']:18s} {row['variant']:33s} identical {row['identical_tiles']:2d}/{row['tiles']} "
            f"pixel agreement {row['mean_pixel_agreement']:.6f} max abs diff {row['max_abs_difference']}"
        )
    print(f"wrote {report['csv']} and {report['markdown']}")
    return 0
