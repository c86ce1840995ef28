"""The ``cryonuseg-hf`` command: one entry, one subcommand per job, each a thin adapter over the library.

The library logs; the CLI prints. Subcommands are grouped by what they work on (``data``, ``evaluate``,
``train``, ``predict``, ``hub``), each module declaring its parsers and the functions they call; options that
several subcommands share are declared once in ``options``. Heavy imports happen inside each subcommand, so
``--help`` is instant. Every subcommand sees the command line as typed in ``args.command_line``, which the
records it writes keep.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from cryonuseg_hf.cli import data, evaluate, hub, predict, train

GROUPS = (predict, data, evaluate, train, hub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryonuseg-hf",
        description="CryoNuSeg on Hugging Face: dataset, metric, model, prediction and export",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["cryonuseg-hf", *argv])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    name = f"cryonuseg-hf {args.command}"
    try:
        return args.func(args)
    # OSError: missing, unreadable or unwritable paths; FloatingPointError: a training run that diverged
    except (OSError, ValueError, FloatingPointError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"{name}: error: ran out of memory; give it a smaller input or a machine with more",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; every output is written whole or not at all, so none is half-written",
              file=sys.stderr)  # fmt: skip
        return 130
    except Exception as error:  # a bug: one line for the user, the traceback with -v
        if args.verbose:
            raise
        print(
            f"{name}: unexpected error: {type(error).__name__}: {error}\n"
            "This is a bug in cryonuseg-hf: please report it with the output of the same command run with -v.",
            file=sys.stderr,
        )
        return 1
