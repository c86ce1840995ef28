"""The ``cryonuseg-hf`` command: one entry, one subcommand per job, each a thin adapter over the library.

The library logs; this module prints. Heavy imports happen inside each subcommand, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="raw CryoNuSeg release: a folder in the Kaggle layout or the Kaggle zip "
        "(default: $CRYONUSEG_DATA, else ../shared/datasets/cryonuseg beside the checkout)",
    )


def _source(args: argparse.Namespace) -> Path:
    from cryonuseg_hf.release import default_source

    return args.source if args.source is not None else default_source()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryonuseg-hf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="find and validate every file of a raw release")
    _add_source(check)
    check.set_defaults(func=_cmd_check)

    agreement = sub.add_parser(
        "agreement", help="score the three mark-ups against each other (intra- and inter-observer agreement)"
    )
    _add_source(agreement)
    agreement.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for human_agreement.json/.md/_per_tile.csv"
    )
    agreement.set_defaults(func=_cmd_agreement)

    return parser


def _cmd_check(args: argparse.Namespace) -> int:
    from cryonuseg_hf.release import open_release, validate_images

    release = open_release(_source(args))
    validate_images(release)
    n_rois = {name: len(markup.rois) for name, markup in release.markups.items()}
    print(f"{release.root}: complete release, {len(release.images)} tiles, ROI sets per mark-up: {n_rois}")
    return 0


def _cmd_agreement(args: argparse.Namespace) -> int:
    from cryonuseg_hf.agreement import write_agreement
    from cryonuseg_hf.release import open_release

    release = open_release(_source(args))
    agreement, paths = write_agreement(release, args.out)
    for name, result in agreement.items():
        means = "  ".join(f"{k} {v:.4f}" for k, v in result["mean"].items())
        print(f"{name} ({result['prediction']} vs reference {result['reference']}): {means}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, PermissionError, FileExistsError) as error:
        print(f"cryonuseg-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
