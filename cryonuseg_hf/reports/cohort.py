"""The summary of a cohort of slides: what happened to each slide, as a CSV and a Markdown page written together.

One row per slide (:data:`COLUMNS`): its status (:data:`STATUSES`), the tissue found (mm²), the nuclei, the
seconds it took and the error that stopped it. The Markdown adds the totals and the throughput of the run.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.files import staged_files
from cryonuseg_hf.core.markdown import table

COLUMNS = (
    "slide", "status", "tissue_mm2", "nuclei", "seconds", "error", "worker", "model_load_seconds", "peak_memory_mb",
)  # fmt: skip
"""The CSV's columns; the Markdown table shows the first six."""
STATUSES = ("done", "done earlier", "failed", "not run")
"""``done``: predicted by this run; ``done earlier``: its outputs were complete, it was skipped; ``failed``: the
error says why, nothing was written for it; ``not run``: the run was interrupted before it."""


def summary_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where :func:`write_cohort_summary` puts the CSV and the Markdown."""
    out_dir = Path(out_dir)
    return {"csv": out_dir / "cohort_summary.csv", "markdown": out_dir / "cohort_summary.md"}


def count(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Slides per status, every status present.

    >>> count([{"status": "done"}, {"status": "failed"}, {"status": "done"}])
    {'done': 2, 'done earlier': 0, 'failed': 1, 'not run': 0}
    """
    return {status: sum(r["status"] == status for r in rows) for status in STATUSES}


def cohort_markdown(rows: Sequence[Mapping[str, Any]], run: Mapping[str, Any]) -> str:
    """The Markdown page: totals, this run's throughput, one table row per slide.

    Args:
        rows: one per slide, with the keys of :data:`COLUMNS`.
        run: ``workers`` (how many), ``cluster`` (its address, or ``local``), ``seconds`` (wall time of this
            run) and ``interrupted`` (bool).
    """
    counts = count(rows)
    finished = [r for r in rows if r["status"] in ("done", "done earlier")]
    nuclei = sum(int(r["nuclei"]) for r in finished)
    tissue = sum(float(r["tissue_mm2"]) for r in finished)
    parts = [f"{counts['done'] + counts['done earlier']} done"]
    if counts["done earlier"]:
        parts[0] += f" ({counts['done earlier']} of them in an earlier run)"
    parts += [f"{counts[s]} {s}" for s in ("failed", "not run") if counts[s]]
    hours = run["seconds"] / 3600
    speed = f", {counts['done'] / hours:.0f} slides per hour" if counts["done"] and hours > 0 else ""
    lines = [
        "# Cohort summary",
        "",
        f"{len(rows)} slides: {', '.join(parts)}. {nuclei} nuclei in {tissue:.2f} mm² of tissue.",
        "",
        f"This run{' (interrupted)' if run['interrupted'] else ''}: {counts['done']} slides predicted in "
        f"{run['seconds']:.0f} s on {run['workers']} workers ({run['cluster']}){speed}.",
        "",
    ]
    header = ["slide", "status", "tissue mm²", "nuclei", "seconds", "error"]
    cells = [
        [
            Path(r["slide"]).name,
            r["status"],
            "" if r["tissue_mm2"] == "" else f"{float(r['tissue_mm2']):.3f}",
            str(r["nuclei"]),
            "" if r["seconds"] == "" else f"{float(r['seconds']):.1f}",
            str(r["error"]).replace("|", "\\|").replace("\n", " "),
        ]
        for r in rows
    ]
    return "\n".join(lines + table(header, cells)) + "\n"


def write_cohort_summary(
    rows: Sequence[Mapping[str, Any]], run: Mapping[str, Any], out_dir: str | Path
) -> dict[str, Path]:
    """Write ``cohort_summary.csv`` and ``cohort_summary.md`` into ``out_dir``, both or neither.

    Args:
        rows, run: as :func:`cohort_markdown` takes them.
        out_dir: the cohort's output folder.

    Returns:
        ``{"csv": path, "markdown": path}``.
    """
    paths = summary_paths(out_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with staged_files(paths) as twins:
        twins["csv"].write_text(text.getvalue(), encoding="utf-8")
        twins["markdown"].write_text(cohort_markdown(rows, run), encoding="utf-8")
    return paths
