"""Options that several subcommands share, declared once with one validation each."""

from __future__ import annotations

import argparse
from pathlib import Path


def int_at_least(minimum: int):
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


def add_source(parser: argparse.ArgumentParser, download: bool = False) -> None:
    """``--source``: the raw release."""
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="raw CryoNuSeg release: a folder in the Kaggle layout or the Kaggle zip (default: $CRYONUSEG_DATA"
        + ("; if neither is given, the release is downloaded from Kaggle)" if download else ")"),
    )


def source(args: argparse.Namespace) -> Path:
    """The release ``--source`` names, else the default one."""
    from cryonuseg_hf.data.release import default_source

    return args.source if args.source is not None else default_source()


def add_threads(parser: argparse.ArgumentParser, what: str = "torch/onnxruntime") -> None:
    parser.add_argument("--threads", type=int_at_least(1), default=None, help=f"CPU threads for {what}")


def add_model(parser: argparse.ArgumentParser, device: bool = False) -> None:
    """``--model``, ``--backend`` (and ``--device``), ``--threads``: which model runs where."""
    parser.add_argument(
        "--model", type=Path, default=None, help="checkpoint folder (default: the shipped one)"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx", "openvino"),
        default="auto",
        help="onnx: onnxruntime on an export checked against torch and cached per checkpoint; openvino: that "
        "export run by OpenVINO on the CPU (pip install 'cryonuseg_hf[openvino]'); auto: onnx on the CPU, torch on "
        "a GPU",
    )
    if device:
        parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_threads(parser)


def add_overwrite(parser: argparse.ArgumentParser, what: str = "existing outputs") -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")
