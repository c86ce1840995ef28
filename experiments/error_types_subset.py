"""The error types of ``benchmarks/error_analysis.py`` for experiment runs that predicted only some tiles.

Each run's ``predictions/`` folder is scored against annotator1_round2 on the tiles it holds (all runs must hold
the same ones), with the median predicted nucleus area beside it::

    python experiments/error_types_subset.py experiments/results/<run> experiments/results/<other run>

Prints a Markdown table; deterministic, needs no model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from error_analysis import REFERENCE, areas, error_types  # noqa: E402

from cryonuseg_hf.core.folds import TILE_IDS  # noqa: E402
from cryonuseg_hf.core.markdown import table  # noqa: E402
from cryonuseg_hf.evaluation.predictions import read_prediction_labels  # noqa: E402
from cryonuseg_hf.training.data import load_tiles  # noqa: E402

KEYS = ("matched", "missed", "merged", "split", "poor fit", "predictions", "unmatched predictions")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="+", help="experiment folders, each with predictions/")
    args = parser.parse_args(argv)
    held = [sorted(p.stem for p in (run / "predictions").glob("*.png")) for run in args.runs]
    if any(h != held[0] for h in held):
        raise SystemExit("the runs hold predictions of different tiles: " + "; ".join(map(str, held)))
    tiles = load_tiles(markups=(REFERENCE,))
    rows = []
    for run in args.runs:
        total: dict[str, int] = dict.fromkeys(KEYS, 0)
        found = []
        for tile in held[0]:
            prediction = read_prediction_labels(run / "predictions" / f"{tile}.png")
            found.append(areas(prediction))
            counts = error_types(tiles["masks"][REFERENCE][TILE_IDS.index(tile)], prediction)
            for key in KEYS:
                total[key] += counts.get(key, 0)
        rows.append([run.name, *(str(total[k]) for k in KEYS), f"{np.median(np.concatenate(found)):.0f}"])
    print(f"Error types against {REFERENCE} on {len(held[0])} tiles ({', '.join(held[0])}).\n")
    print("\n".join(table(["run", *KEYS, "median nucleus px"], rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
