"""Build CryoNuSeg with its ``datasets`` builder: the runnable entry point, nothing more.

datasets 5 no longer runs loading scripts, so this file does not define the dataset: the builder lives in
:mod:`cryonuseg_hf.data.builder` (``CryoNuSeg``, one config per mark-up) and is only imported and run here.

    python loading_script.py --source <release folder or zip> --out cryonuseg
    python loading_script.py --config annotator2 --source <release> --prepare-into <folder>

The first form is ``cryonuseg-hf build`` (Parquet per config + dataset card, ready for ``load_dataset``);
the second runs ``CryoNuSeg(config_name=...).download_and_prepare(output_dir=..., file_format="parquet")``.
"""

from __future__ import annotations

import argparse
import sys

from cryonuseg_hf.cli import main as cli_main
from cryonuseg_hf.data.builder import CryoNuSeg
from cryonuseg_hf.data.release import MARKUPS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--config", choices=MARKUPS, default=None)
    parser.add_argument("--prepare-into", default=None)
    known, rest = parser.parse_known_args(argv)
    if known.prepare_into is None:
        return cli_main(["build", *rest])
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--source", default=None)
    data_dir = source.parse_known_args(rest)[0].source
    builder = CryoNuSeg(config_name=known.config, data_dir=data_dir)
    builder.download_and_prepare(output_dir=known.prepare_into, file_format="parquet")
    print(f"prepared {builder.config.name} as Parquet in {known.prepare_into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
