"""The human agreement report: ``human_agreement.json``, ``.md`` and ``human_agreement_per_tile.csv``.

The numbers come from :mod:`cryonuseg_hf.evaluation.agreement` (:func:`~cryonuseg_hf.evaluation.agreement.human_agreement`
and :func:`~cryonuseg_hf.evaluation.agreement.orientations`); this module only writes them down.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.files import staged_files
from cryonuseg_hf.core.machine import machine_description
from cryonuseg_hf.core.markdown import table
from cryonuseg_hf.evaluation.agreement import PAPER, VARIANT, human_agreement, orientations
from cryonuseg_hf.evaluation.metrics import COUNTS, METRICS

_LABELS = {
    "dice": "Dice",
    "aji": "AJI",
    "aji_plus": "AJI+",
    "pq": "PQ",
    "dq": "DQ",
    "sq": "SQ",
    "precision": "precision",
    "recall": "recall",
}


def agreement_markdown(
    agreement: dict[str, dict[str, Any]], orientation_rows: list[dict[str, Any]], machine: str
) -> str:
    """The human agreement report as Markdown."""
    names = list(agreement)
    lines = [
        "# Human agreement on CryoNuSeg",
        "",
        "Produced by `cryonuseg-hf agreement` (`cryonuseg_hf/evaluation/agreement.py`, metrics from `cryonuseg_hf/evaluation/metrics.py`)"
        f" on {machine}. Each mark-up's released `label masks modify` masks, all 30 tiles; every value is the mean"
        " over tiles of the per-tile value unless marked pooled (counts summed over the 30 tiles first).",
        "",
        "- **intra-observer**: Annotator 1 round 2 (reference) vs Annotator 1 round 1 (prediction);",
        "- **inter-observer**: Annotator 1 round 2 (reference) vs Annotator 2 (prediction).",
        "",
        "## Overall (mean over the 30 tiles)",
        "",
    ]
    header = ["comparison", *(_LABELS[m] for m in METRICS)]
    rows = []
    for name in names:
        rows.append([name.replace("_", "-"), *(f"{agreement[name]['mean'][m]:.4f}" for m in METRICS)])
        rows.append(
            [f"{name.replace('_', '-')} (pooled)", *(f"{agreement[name]['pooled'][m]:.4f}" for m in METRICS)]
        )
    lines += table(header, rows)
    lines += [
        "",
        "Values quoted for the CryoNuSeg paper (Mahbod et al., 2021) and what this command gets:",
        "",
    ]
    paper_rows = [
        [name.replace("_", "-"), f"{PAPER[name]['aji']:.3f}", f"{agreement[name]['mean']['aji']:.4f}",
         f"{PAPER[name]['pq']:.3f}", f"{agreement[name]['mean']['pq']:.4f}"]
        for name in names if name in PAPER
    ]  # fmt: skip
    lines += table(["comparison", "AJI (paper)", "AJI (here)", "PQ (paper)", "PQ (here)"], paper_rows)
    reproduced = all(
        abs(agreement[n]["mean"][m] - PAPER[n][m]) < 0.0005 for n in names if n in PAPER for m in PAPER[n]
    )
    verdict = (
        "Both reproduce to the third decimal with Annotator 1 round 2 as the reference."
        if reproduced
        else "These do NOT all reproduce to the third decimal; see the orientations below."
    )
    lines += [
        "",
        f"{verdict} The orientation changes AJI only (AJI pairs each reference nucleus with its best prediction;"
        " Dice, AJI+ and PQ are symmetric):",
        "",
    ]
    lines += table(
        ["reference", "prediction", "Dice", "AJI", "AJI+", "PQ"],
        [
            [r["reference"], r["prediction"], *(f"{r[m]:.4f}" for m in ("dice", "aji", "aji_plus", "pq"))]
            for r in orientation_rows
        ],
    )
    lines += ["", "## Per organ (mean over the organ's 3 tiles)", ""]
    shown = ("dice", "aji", "aji_plus", "pq")
    header = ["organ", *(f"{_LABELS[m]} {name.split('_')[0]}" for name in names for m in shown)]
    organs = list(agreement[names[0]]["per_organ"])
    lines += table(
        header,
        [[o, *(f"{agreement[n]['per_organ'][o][m]:.4f}" for n in names for m in shown)] for o in organs],
    )
    lines += [
        "",
        "Per-tile values with the counts behind them: `human_agreement_per_tile.csv`, `human_agreement.json`.",
        "",
    ]
    return "\n".join(lines)


def write_agreement(release, out_dir: Path | str) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """Compute the agreement and write ``human_agreement.json``, ``.md`` and ``human_agreement_per_tile.csv``, all
    three or none (:func:`cryonuseg_hf.core.files.staged_files`).

    Returns:
        the result of :func:`human_agreement`, and ``json``/``md``/``csv`` -> the path written.
    """
    machine = machine_description()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agreement = human_agreement(release)
    orientation_rows = orientations(release)
    paths = {
        "json": out_dir / "human_agreement.json",
        "md": out_dir / "human_agreement.md",
        "csv": out_dir / "human_agreement_per_tile.csv",
    }
    document = {
        "command": "cryonuseg-hf agreement",
        "machine": machine,
        "masks": f"released '{VARIANT.replace('_', ' ')}' of each mark-up, 30 tiles",
        "summary": "mean over tiles of per-tile values ('pooled': counts summed over tiles first)",
        "paper": PAPER,
        **agreement,
        "orientations": orientation_rows,
    }
    with staged_files(paths) as staged:
        staged["json"].write_text(json.dumps(document, indent=2) + "\n")
        staged["md"].write_text(agreement_markdown(agreement, orientation_rows, machine))
        with staged["csv"].open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["comparison", "reference", "prediction", "tile_id", "organ", *METRICS, *COUNTS])
            for name, result in agreement.items():
                for tile, row in result["per_tile"].items():
                    writer.writerow(
                        [name, result["reference"], result["prediction"], tile, row["organ"]]
                        + [row[k] for k in (*METRICS, *COUNTS)]
                    )
    return agreement, paths
