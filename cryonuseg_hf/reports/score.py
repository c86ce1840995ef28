"""The report of ``cryonuseg-hf score``: ``score.json``, ``score.md`` and ``score_per_tile.csv``.

The report dict comes from :func:`cryonuseg_hf.evaluation.score.score_folder` (reading, matching and scoring the
predictions, with the SegFormer CV and the human agreement beside); this module only writes it down. The CV's
report is the same report of its held-out predictions, with the training run's record added
(:mod:`cryonuseg_hf.reports.cv`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.files import staged_files
from cryonuseg_hf.core.folds import ORGANS, TILE_IDS, fold_of, organ_of
from cryonuseg_hf.core.markdown import table
from cryonuseg_hf.evaluation.metrics import COUNTS, METRICS

_SHORT = {"annotator1_round1": "A1r1", "annotator1_round2": "A1r2", "annotator2": "A2"}
_TABLE_METRICS = (
    ("dice", "Dice"),
    ("aji", "AJI"),
    ("aji_plus", "AJI+"),
    ("pq", "PQ"),
    ("dq", "DQ"),
    ("sq", "SQ"),
)


def _columns(report: dict[str, Any], reference: str, short: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(label, summary) of the predictions and of everything beside them, against ``reference``."""
    columns = [(report["name"], report["summary"][reference])]
    cv = report.get("segformer_cv") or {}
    if reference in cv:
        columns.append(("SegFormer CV", cv[reference]))
    for other, summary in report["human"][reference].items():
        relation = summary["relation"]
        label = f"{_SHORT.get(other, other)} ({relation[:5]})" if short else f"human {other} ({relation})"
        columns.append((label, summary))
    return columns


def report_markdown(
    report: dict[str, Any],
    command: str | None = None,
    preface: Sequence[str] = (),
    appendix: Sequence[str] = (),
) -> str:
    """The report as Markdown: means, per organ and fold, and per tile, with what sits beside the predictions.

    Args:
        report: as :func:`cryonuseg_hf.evaluation.score.score_folder` returns it.
        command: the command that made it, shown under the title.
        preface: Markdown lines put before the scores (e.g. how the predictions were made).
        appendix: Markdown lines put after them.
    """
    tiles, references = report["tiles"], report["references"]
    formats = ", ".join(f"{n} {kind}" for kind, n in sorted(report["formats"].items()))
    lines = [f"# {report['name']} scored on CryoNuSeg", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    if preface:
        lines += [*preface, ""]
    lines += [
        f"Predictions: `{report['folder']}` ({formats} file(s)), scored on {len(tiles)} of {len(TILE_IDS)} tiles "
        f"against the {report['masks']}. Every value is the mean over those tiles of the per-tile value "
        "(pooled values and every count in the JSON).",
        "",
        f"- missing tiles: {', '.join(report['missing']) or 'none'}",
        f"- extra files (name no tile, not scored): {', '.join(Path(p).name for p in report['extra']) or 'none'}",
        f"- skipped (not a prediction format): {', '.join(Path(p).name for p in report['skipped']) or 'none'}",
        "",
        "Beside them, on the same tiles: "
        + (
            "the project's SegFormer-b0 in leave-one-organ-out CV (each tile predicted by the model of the fold "
            f"that never saw its organ; `{report['segformer_cv']['path']}`), and "
            if report.get("segformer_cv")
            else ""
        )
        + "the human agreement: each other mark-up scored as a prediction against the same reference.",
        "",
        f"## Means over the {len(tiles)} tiles",
        "",
    ]
    rows = []
    for reference in references:
        for label, summary in _columns(report, reference):
            mean = summary["mean"]
            counts = f"{mean['n_pred']} / {mean['n_true']}" if "n_pred" in mean and "n_true" in mean else ""
            rows.append([reference, label] + [f"{mean[m]:.4f}" for m, _ in _TABLE_METRICS] + [counts])
    lines += table(
        ["reference", "predictions"] + [title for _, title in _TABLE_METRICS] + ["nuclei pred / ref"], rows
    )
    for reference in references:
        columns = _columns(report, reference, short=True)
        lines += ["", f"## Per organ vs {reference} (fold k holds the tiles of organ k)", ""]
        rows = []
        for fold, group in report["summary"][reference]["per_fold"].items():
            organ = ORGANS[int(fold)]
            row = [str(fold), organ, str(group["n_tiles"])]
            for metric in ("aji", "pq"):
                row += [f"{summary['per_organ'][organ][metric]:.4f}" for _, summary in columns]
            rows.append(row)
        header = ["fold", "organ", "tiles"] + [
            f"{title} {label}" for title in ("AJI", "PQ") for label, _ in columns
        ]
        lines += table(header, rows)
    lines += [
        "",
        "## Per tile (AJI / PQ; A1r1, A1r2, A2 = annotator1_round1, annotator1_round2, annotator2)",
        "",
    ]
    cv = report.get("segformer_cv") or {}
    header = ["tile", "fold", "nuclei pred"]
    for reference in references:
        header.append(f"{report['name']} vs {_SHORT.get(reference, reference)}")
        if reference in cv:
            header.append(f"SegFormer CV vs {_SHORT.get(reference, reference)}")
    rows = []
    for tile in tiles:
        row = [tile, str(fold_of(tile)), str(report["scores"][references[0]]["per_tile"][tile]["n_pred"])]
        for reference in references:
            values = report["summary"][reference]["per_tile"][tile]
            row.append(f"{values['aji']:.4f} / {values['pq']:.4f}")
            if reference in cv:
                values = cv[reference]["per_tile"][tile]
                row.append(f"{values['aji']:.4f} / {values['pq']:.4f}")
        rows.append(row)
    lines += table(header, rows)
    if appendix:
        lines += ["", *appendix]
    return "\n".join(lines) + "\n"


def per_tile_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per tile, reference and set of predictions (these, the SegFormer CV, each other mark-up)."""
    rows = []
    for reference in report["references"]:
        sources = [("predictions", report["summary"][reference])]
        cv = report.get("segformer_cv") or {}
        if reference in cv:
            sources.append(("segformer_cv", cv[reference]))
        sources += [(f"human:{other}", s) for other, s in report["human"][reference].items()]
        for label, summary in sources:
            for tile, values in summary["per_tile"].items():
                rows.append(
                    {
                        "tile_id": tile,
                        "organ": organ_of(tile),
                        "fold": fold_of(tile),
                        "reference": reference,
                        "source": label,
                        **{k: values.get(k, "") for k in (*METRICS, *COUNTS)},
                    }
                )
    return rows


def _document(
    report: dict[str, Any], command: str | None, csv_name: str, record: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON form: per-tile rows once (under ``scores``); those of everything beside are in the CSV."""
    document = {"command": command, **(record or {}), **report} if command else {**(record or {}), **report}
    document["per_tile_csv"] = csv_name
    document["summary"] = {r: _without_tiles(s) for r, s in report["summary"].items()}
    document["human"] = {
        r: {other: _without_tiles(s) for other, s in by_other.items()}
        for r, by_other in report["human"].items()
    }
    if report.get("segformer_cv"):
        document["segformer_cv"] = {k: _without_tiles(v) for k, v in report["segformer_cv"].items()}
    return document


def _without_tiles(section: Any) -> Any:
    return {k: v for k, v in section.items() if k != "per_tile"} if isinstance(section, dict) else section


def write_report(
    report: dict[str, Any],
    out_dir: str | Path,
    stem: str = "score",
    command: str | None = None,
    overwrite: bool = False,
    *,
    record: Mapping[str, Any] | None = None,
    preface: Sequence[str] = (),
    appendix: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>_per_tile.csv`` into ``out_dir`` (created), all three or
    none (:func:`cryonuseg_hf.core.files.staged_files`).

    Args:
        report: as :func:`cryonuseg_hf.evaluation.score.score_folder` returns it.
        out_dir: the folder.
        stem: the files' base name.
        command: the command that made the report.
        overwrite: replace the files of an earlier report.
        record: fields put in the JSON before the report's (e.g. the run that made the predictions).
        preface, appendix: Markdown lines before and after the scores (see :func:`report_markdown`).

    Raises:
        FileExistsError: a file exists and ``overwrite`` is False (nothing is written then).
    """
    out_dir = Path(out_dir)
    paths = {
        "json": out_dir / f"{stem}.json",
        "md": out_dir / f"{stem}.md",
        "csv": out_dir / f"{stem}_per_tile.csv",
    }
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist already; pass --overwrite to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    document = _document(report, command, paths["csv"].name, record)
    rows = per_tile_rows(report)
    with staged_files(paths) as staged:
        staged["json"].write_text(json.dumps(document, indent=1) + "\n")
        staged["md"].write_text(report_markdown(report, command, preface, appendix))
        with staged["csv"].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return paths
