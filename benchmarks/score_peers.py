"""Score InstanSeg's predictions of the 30 tiles as ``cryonuseg-hf score`` does, beside the SegFormer CV.

InstanSeg's predictions are saved by ``benchmarks/bench_peers.py --save-predictions results/peer_predictions``
(git-ignored), one folder of label PNGs per setting; each folder is scored by
:func:`cryonuseg_hf.evaluation.score.score_folder` with the SegFormer CV (``results/cv/metrics.json``) and the human
agreement beside, into ``results/score_instanseg_<setting>.{md,json}`` and ``_per_tile.csv``. The CV's own
predictions need no such step: their report is ``results/cv/metrics.md``. Run from the repository root::

    .venv/bin/python benchmarks/bench_peers.py --threads 1 --out /tmp/peers --save-predictions results/peer_predictions
    .venv/bin/python benchmarks/score_peers.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the reports")
    parser.add_argument("--cv", type=Path, default=Path("results/cv"), help="the CV results folder")
    parser.add_argument(
        "--peers",
        type=Path,
        default=Path("results/peer_predictions"),
        help="bench_peers' saved predictions, one folder per setting",
    )
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    os.chdir(REPO)  # paths in the reports stay relative to the repository

    from cryonuseg_hf.evaluation.score import score_folder
    from cryonuseg_hf.reports.score import write_report

    command = ".venv/bin/python benchmarks/score_peers.py" + "".join(f" {a}" for a in argv)
    folders = sorted(p for p in args.peers.glob("*") if p.is_dir())
    if not folders:
        raise SystemExit(
            f"{args.peers}: no saved predictions; run benchmarks/bench_peers.py --save-predictions {args.peers}"
        )
    for folder in folders:
        report = score_folder(folder, cv_metrics=args.cv / "metrics.json", name=f"InstanSeg {folder.name}")
        paths = write_report(
            report, args.out, f"score_instanseg_{folder.name}", command=command, overwrite=True
        )
        print(f"InstanSeg {folder.name}: " + ", ".join(str(p) for p in paths.values()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
