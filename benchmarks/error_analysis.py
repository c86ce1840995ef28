"""Why reference nuclei go unmatched: the error types of a set of predictions on the 30 tiles.

A reference nucleus is matched when a prediction overlaps it at IoU > 0.5 (the PQ rule). Every other reference
nucleus gets the first type that fits it:

- missed: predictions cover under 20 % of it;
- merged: the prediction that overlaps it most also covers over 30 % of another reference nucleus;
- split: two or more predictions each cover over 20 % of it;
- poor fit: its best IoU is in (0.3, 0.5];
- other.

Unmatched predictions are counted too, and those lying over under 20 % reference pixels ("on background").
The same analysis runs for the CV's held-out predictions, InstanSeg's (the peer) and the second annotator, all
against annotator1_round2, from the files other commands wrote. Last, the size of the nuclei of each mark-up and
of each set of predictions (median and mean area in pixels): the annotators draw nuclei of different sizes::

    python benchmarks/error_analysis.py

Writes ``results/error_types.json`` and ``.md``. Deterministic; needs no model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.folds import TILE_IDS
from cryonuseg_hf.core.markdown import table
from cryonuseg_hf.data.release import MARKUPS
from cryonuseg_hf.evaluation.nuclei_instance_metric.nuclei_metrics import overlap_table
from cryonuseg_hf.evaluation.predictions import read_prediction_labels
from cryonuseg_hf.training.data import load_tiles

REFERENCE = "annotator1_round2"
TYPES = ("matched", "missed", "merged", "split", "poor fit", "other")
SOURCES = {
    "SegFormer CV (results/cv/predictions)": "results/cv/predictions",
    "InstanSeg fixed 0.75 (results/peer_predictions/fixed_0.75)": "results/peer_predictions/fixed_0.75",
    "annotator2 (inter-observer)": "annotator2",
}


def error_types(truth: np.ndarray, prediction: np.ndarray) -> dict[str, int]:
    """Counts of each reference type (``TYPES``) plus ``predictions``, ``unmatched predictions`` and
    ``unmatched predictions on background`` for one tile."""
    t_index, p_index, inter, _, t_area, _, p_area = overlap_table(truth, prediction)
    iou = inter / (t_area[t_index] + p_area[p_index] - inter)
    counts = dict.fromkeys(TYPES, 0)
    matched_t = set(t_index[iou > 0.5].tolist())
    matched_p = set(p_index[iou > 0.5].tolist())
    by_truth: dict[int, list[int]] = {}
    by_prediction: dict[int, list[int]] = {}
    for n, (t, p) in enumerate(zip(t_index.tolist(), p_index.tolist(), strict=True)):
        by_truth.setdefault(t, []).append(n)
        by_prediction.setdefault(p, []).append(n)
    for t in range(t_area.size):
        pairs = by_truth.get(t, [])
        if t in matched_t:
            counts["matched"] += 1
        elif sum(inter[n] for n in pairs) < 0.2 * t_area[t]:
            counts["missed"] += 1
        else:
            main = max(pairs, key=lambda n: inter[n])
            others = [inter[m] / t_area[t_index[m]] for m in by_prediction[p_index[main]] if t_index[m] != t]
            if others and max(others) > 0.3:
                counts["merged"] += 1
            elif sum(inter[n] > 0.2 * t_area[t] for n in pairs) >= 2:
                counts["split"] += 1
            elif max(iou[n] for n in pairs) > 0.3:
                counts["poor fit"] += 1
            else:
                counts["other"] += 1
    unmatched = [p for p in range(p_area.size) if p not in matched_p]
    on_background = [
        p for p in unmatched if sum(inter[n] for n in by_prediction.get(p, [])) < 0.2 * p_area[p]
    ]
    counts.update(
        {
            "predictions": int(p_area.size),
            "unmatched predictions": len(unmatched),
            "unmatched predictions on background": len(on_background),
        }
    )
    return counts


def areas(labels: np.ndarray) -> np.ndarray:
    """The pixel area of every nucleus of an instance label image."""
    counts = np.bincount(labels.ravel())[1:]
    return counts[counts > 0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=None, help="raw release, build folder or .npz (default: the release)"
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    tiles = load_tiles(args.data, markups=MARKUPS)
    results, sizes = {}, {}
    for markup in MARKUPS:
        sizes[markup] = np.concatenate([areas(m) for m in tiles["masks"][markup]])
    for name, source in SOURCES.items():
        total: dict[str, int] = {}
        found = []  # nucleus areas of prediction files (a mark-up's are in ``sizes`` already)
        for i, tile in enumerate(TILE_IDS):
            if source in tiles["masks"]:
                prediction = tiles["masks"][source][i]
            else:
                prediction = read_prediction_labels(Path(source) / f"{tile}.png")
                found.append(areas(prediction))
            for key, value in error_types(tiles["masks"][REFERENCE][i], prediction).items():
                total[key] = total.get(key, 0) + value
        results[name] = total
        if found:
            sizes[name] = np.concatenate(found)
    size_stats = {
        name: {
            "nuclei": int(a.size),
            "median_area": float(np.median(a)),
            "mean_area": round(float(a.mean()), 1),
        }
        for name, a in sizes.items()
    }
    command = shlex.join(["python", "benchmarks/error_analysis.py", *sys.argv[1:]])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "error_types.json").write_text(
        json.dumps(
            {"command": command, "reference": REFERENCE, "results": results, "sizes": size_stats}, indent=2
        )
        + "\n"
    )
    header = [
        "predictions",
        "reference nuclei",
        *TYPES,
        "predicted nuclei",
        "unmatched",
        "unmatched on background",
    ]
    rows = [
        [name, str(sum(r[k] for k in TYPES)), *(str(r[k]) for k in TYPES), str(r["predictions"]),
         str(r["unmatched predictions"]), str(r["unmatched predictions on background"])]
        for name, r in results.items()
    ]  # fmt: skip
    text = (
        "# Why reference nuclei go unmatched\n\n"
        f"Produced by `{command}` (deterministic, no model). All 30 tiles, pooled, against {REFERENCE}; matched = "
        "IoU > 0.5 with a prediction (the PQ rule). Types of the unmatched, first that fits: missed (under 20 % "
        "covered), merged (the prediction overlapping it most covers over 30 % of another reference nucleus), split "
        "(two or more predictions cover over 20 % each), poor fit (best IoU 0.3-0.5), other.\n\n"
        + "\n".join(table(header, rows))
        + "\n\n## Nucleus size (all 30 tiles)\n\n"
        + "\n".join(
            table(
                ["nuclei of", "nuclei", "median area px", "mean area px"],
                [
                    [n, str(v["nuclei"]), f"{v['median_area']:g}", f"{v['mean_area']:g}"]
                    for n, v in size_stats.items()
                ],
            )
        )
        + "\n"
    )
    (args.out / "error_types.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
