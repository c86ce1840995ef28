"""Score our SegFormer's CV predictions and InstanSeg's with ``cryonuseg-hf score``, and check the scorer.

1. ``results/cv/predictions`` (16-bit label PNGs, each tile predicted by the fold model that never saw its organ)
   -> ``results/score_segformer_cv.{md,json}`` and ``_per_tile.csv``; check: every per-tile value and every mean
   equals ``results/cv/metrics.json``, and the per-tile table equals ``results/cv/per_tile.csv`` to its 4 decimals.
2. The same predictions exported as QuPath GeoJSON and ImageJ RoiSets by ``cryonuseg_hf.model.export`` (what
   ``cryonuseg-hf predict`` writes; into a temporary folder) and scored from those files: the largest difference
   to the label images per metric, and where it comes from. The exporter outlines each nucleus without its holes
   (pockets of background inside a nucleus), so the check also scores the label images with those pockets filled:
   the files must score exactly as that.
3. InstanSeg's predictions, saved by ``benchmarks/bench_peers.py --save-predictions results/peer_predictions``
   (git-ignored) -> ``results/score_instanseg_<setting>.*``; check: equal to ``results/peers.json`` per tile.
4. Seconds to read and score the 30 tiles per format (reading, rasterising, scoring against three mark-ups and
   scoring the human agreement beside).

Writes ``results/score_checks.json`` and ``results/score_checks.md``. Run from the repository root::

    .venv/bin/python benchmarks/bench_peers.py --threads 1 --out /tmp/peers --save-predictions results/peer_predictions
    .venv/bin/python benchmarks/score_peers.py
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METRICS = ("dice", "aji", "aji_plus", "pq", "dq", "sq", "precision", "recall")
REFERENCE = "annotator1_round2"


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Per metric, the largest |a - b| over references and tiles of two score reports."""
    worst = dict.fromkeys(METRICS, 0.0)
    for reference in a["references"]:
        for tile, row in a["scores"][reference]["per_tile"].items():
            other = b["scores"][reference]["per_tile"][tile]
            for m in METRICS:
                worst[m] = max(worst[m], abs(row[m] - other[m]))
    return worst


def check_against_cv(report: dict[str, Any], cv_dir: Path) -> dict[str, Any]:
    """Every per-tile value and mean vs ``metrics.json``; every row of ``per_tile.csv`` to its 4 decimals."""
    cv = json.loads((cv_dir / "metrics.json").read_text())["scores"]
    worst, means = 0.0, 0.0
    for reference, result in cv.items():
        for row in result["per_tile"]:
            mine = report["scores"][reference]["per_tile"][row["tile_id"]]
            worst = max(worst, *(abs(mine[k] - v) for k, v in row.items() if k not in ("tile_id", "organ")))
        means = max(means, *(abs(report["scores"][reference][m] - result[m]) for m in METRICS))
    csv_rows = csv_mismatches = 0
    with (cv_dir / "per_tile.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["reference"].startswith("human_"):
                continue
            csv_rows += 1
            mine = report["scores"][row["reference"]]["per_tile"][row["tile_id"]]
            csv_mismatches += any(
                f"{mine[m]:.4f}" != row[m] for m in ("dice", "aji", "aji_plus", "pq", "dq", "sq")
            )
    return {
        "max_abs_difference_per_tile": worst,
        "max_abs_difference_means": means,
        "per_tile_csv_rows": csv_rows,
        "per_tile_csv_rows_differing": csv_mismatches,
        "equal": worst == 0.0 and means == 0.0 and csv_mismatches == 0,
    }


def check_against_peers(report: dict[str, Any], peers: dict[str, Any], setting: str) -> dict[str, Any]:
    worst = 0.0
    for reference in report["references"]:
        for row in peers["scores"][setting][reference]["per_tile"]:
            mine = report["scores"][reference]["per_tile"][row["tile_id"]]
            worst = max(worst, *(abs(mine[m] - row[m]) for m in METRICS))
    return {"max_abs_difference_per_tile": worst, "equal": worst == 0.0}


def filled(labels: np.ndarray) -> np.ndarray:
    """Each nucleus with its pockets of background filled (what the exporter's outlines enclose)."""
    from scipy import ndimage as ndi

    out = labels.copy()
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None:
            hole = ndi.binary_fill_holes(labels[box] == index) & (labels[box] == 0)
            out[box][hole] = index
    return out


def export_files(predictions: Path, out: Path) -> dict[str, Any]:
    """GeoJSON and RoiSet of every prediction, as ``cryonuseg-hf predict`` writes them, plus the hole-filled
    labels as PNG; returns the pixels the filling changed per tile."""
    import tifffile
    from PIL import Image

    from cryonuseg_hf.data.release import default_source, open_release
    from cryonuseg_hf.model.export import instance_polygons, nucleus_measurements, write_geojson, write_rois

    release = open_release(default_source())
    for kind in ("geojson", "roiset", "filled"):
        (out / kind).mkdir(parents=True)
    pockets = {}
    for path in sorted(predictions.glob("*.png")):
        tile = path.stem
        labels = np.asarray(Image.open(path)).astype(np.int32)
        image = tifffile.imread(release.images[tile])
        polygons, measurements = instance_polygons(labels), nucleus_measurements(labels, image)
        write_geojson(out / "geojson" / f"{tile}.geojson", polygons, measurements)
        write_rois(out / "roiset" / f"{tile}_RoiSet.zip", polygons, measurements)
        full = filled(labels)
        Image.fromarray(full.astype(np.uint16)).save(out / "filled" / f"{tile}.png")
        pockets[tile] = int((full != labels).sum())
    return pockets


def timed_score(folder: Path, **options) -> tuple[dict[str, Any], dict[str, float]]:
    """The report, and its wall-clock and CPU seconds (the CPU time is what a quiet machine would take)."""
    from cryonuseg_hf.evaluation.score import score_folder

    wall, cpu = time.perf_counter(), time.process_time()
    report = score_folder(folder, **options)
    return report, {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def markdown(checks: dict[str, Any]) -> str:
    from cryonuseg_hf.core.machine import load_words

    cv, trip = checks["cv"], checks["round_trip"]
    lines = [
        "# `cryonuseg-hf score` on our CV predictions and on InstanSeg's",
        "",
        f"Produced by `{checks['command']}` on {checks['machine']}, "
        f"{load_words(checks['load'][0], checks['load_after'][0])}. Reports: "
        + ", ".join(f"`{p}`" for p in checks["reports"])
        + ".",
        "",
        "## The scorer against what the project measured before",
        "",
        f"- SegFormer CV predictions (`results/cv/predictions`, label PNGs) vs `results/cv/metrics.json`: largest "
        f"difference per tile {cv['max_abs_difference_per_tile']:.1e}, of the means "
        f"{cv['max_abs_difference_means']:.1e}; `per_tile.csv`: {cv['per_tile_csv_rows_differing']} of "
        f"{cv['per_tile_csv_rows']} rows differ at its 4 decimals. **{'Equal' if cv['equal'] else 'NOT equal'}.**",
    ]
    for setting, check in checks["instanseg"].items():
        lines.append(
            f"- InstanSeg `{setting}` (`results/peer_predictions/{setting}`, saved by `benchmarks/bench_peers.py "
            "--save-predictions results/peer_predictions`) vs `results/peers.json`: largest "
            f"difference per tile {check['max_abs_difference_per_tile']:.1e}. "
            f"**{'Equal' if check['equal'] else 'NOT equal'}.**"
        )
    if not checks["instanseg"]:
        lines.append("- InstanSeg: no saved predictions (run `bench_peers.py --save-predictions` first).")
    lines += [
        "",
        "## Round trip through the exported files (30 CV predictions, all three mark-ups)",
        "",
        "Largest difference per tile to scoring the label images, and to scoring them with each nucleus's pockets "
        "of background filled (the exporter outlines each nucleus without holes):",
        "",
        "| files | vs label images | vs hole-filled label images |",
        "|---|---|---|",
    ]
    for kind in ("geojson", "roiset"):
        lines.append(
            f"| {kind} | {max(trip[kind]['vs_labels'].values()):.1e} | "
            f"{max(trip[kind]['vs_filled'].values()):.1e} |"
        )
    changed = {t: n for t, n in trip["pocket_pixels"].items() if n}
    lines += [
        "",
        f"{len(changed)} of 30 tiles have background pockets inside a predicted nucleus "
        f"({sum(changed.values())} pixels in all, at most {max(changed.values(), default=0)} in a tile); on the "
        f"other {30 - len(changed)} the files give back every pixel. Means over the 30 tiles vs {REFERENCE}, "
        "label images / GeoJSON: "
        + ", ".join(
            f"{m} {trip['means'][REFERENCE]['labels'][m]:.6f} / {trip['means'][REFERENCE]['geojson'][m]:.6f}"
            for m in ("aji", "pq", "dice")
        )
        + ".",
        "",
        "## Seconds to read and score the 30 tiles (three mark-ups, human agreement beside)",
        "",
        "CPU seconds of this process (one thread), and wall-clock seconds on the loaded machine:",
        "",
        "| files | CPU s | wall s |",
        "|---|---|---|",
        *[f"| {kind} | {t['cpu']:.1f} | {t['wall']:.1f} |" for kind, t in checks["seconds"].items()],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the reports")
    parser.add_argument("--cv", type=Path, default=Path("results/cv"), help="the CV results folder")
    parser.add_argument(
        "--peers",
        type=Path,
        default=Path("results/peer_predictions"),
        help="bench_peers' saved predictions",
    )
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    os.chdir(REPO)  # paths in the reports stay relative to the repository

    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.reports.score import write_report

    command = ".venv/bin/python benchmarks/score_peers.py" + "".join(f" {a}" for a in argv)
    checks: dict[str, Any] = {
        "command": command,
        "machine": machine_description(),
        "load": list(os.getloadavg()),
        "reports": [],
    }
    cv_metrics = args.cv / "metrics.json"
    seconds = {}

    # these predictions are the CV's own: its metrics.json beside them would repeat every column
    labels, seconds["labels (PNG)"] = timed_score(
        args.cv / "predictions", cv_metrics=None, name="SegFormer CV"
    )
    checks["cv"] = check_against_cv(labels, args.cv)
    stem = "score_segformer_cv"
    write_report(labels, args.out, stem, command=command, overwrite=True)
    checks["reports"].append(f"{args.out}/{stem}.md")
    print(f"SegFormer CV vs results/cv: equal {checks['cv']['equal']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="score-peers-") as tmp:
        tmp = Path(tmp)
        pockets = export_files(args.cv / "predictions", tmp)
        full, _ = timed_score(tmp / "filled", cv_metrics=None)
        trip: dict[str, Any] = {"pocket_pixels": pockets, "means": {}}
        reports = {"labels": labels}
        for kind, title in (("geojson", "GeoJSON"), ("roiset", "RoiSet")):
            report, seconds[title] = timed_score(tmp / kind, cv_metrics=None)
            reports[kind] = report
            trip[kind] = {
                "vs_labels": max_difference(report, labels),
                "vs_filled": max_difference(report, full),
            }
        for reference in labels["references"]:
            trip["means"][reference] = {k: r["summary"][reference]["mean"] for k, r in reports.items()}
        checks["round_trip"] = trip
        shutil.rmtree(tmp / "filled")
    print(f"round trip: {json.dumps({k: trip[k] for k in ('geojson', 'roiset')})}", flush=True)

    checks["instanseg"] = {}
    peers_json = Path("results/peers.json")
    peers = json.loads(peers_json.read_text()) if peers_json.is_file() else None
    for folder in sorted(p for p in args.peers.glob("*") if p.is_dir()):
        setting = folder.name
        report, _ = timed_score(folder, cv_metrics=cv_metrics, name=f"InstanSeg {setting}")
        stem = f"score_instanseg_{setting}"
        write_report(report, args.out, stem, command=command, overwrite=True)
        checks["reports"].append(f"{args.out}/{stem}.md")
        if peers is not None and setting in peers["scores"]:
            checks["instanseg"][setting] = check_against_peers(report, peers, setting)
        print(f"InstanSeg {setting}: {checks['instanseg'].get(setting)}", flush=True)

    checks["seconds"] = seconds
    checks["load_after"] = list(os.getloadavg())
    (args.out / "score_checks.json").write_text(json.dumps(checks, indent=1) + "\n")
    (args.out / "score_checks.md").write_text(markdown(checks))
    print(
        f"wrote {args.out / 'score_checks.json'}, {args.out / 'score_checks.md'} and {len(checks['reports'])} reports"
    )
    return 0 if checks["cv"]["equal"] and all(c["equal"] for c in checks["instanseg"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
