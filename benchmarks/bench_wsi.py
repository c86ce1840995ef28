"""Whole-slide prediction: throughput per tissue area and peak memory, on slides of two sizes with the same tissue.

Each slide is a pyramidal TIFF (levels 1:1, 1:4, 1:16, 1:64, zlib, the model's µm/px) written tile by tile from a
virtual image: white glass with real CryoNuSeg tiles side by side (one piece of tissue), so the tissue is real H&E and the
glass is what tissue detection must skip. The small slide is 2048 x 2048 px; the large one has the size of the
median TCGA slide of ``Selected_WSIs.xlsx``. Each is predicted by ``cryonuseg-hf predict`` in a child process
(onnxruntime, ``--threads``), whose peak resident memory is read from the OS; the work is timed inside
``predict_slide`` (model loading excluded).

    python benchmarks/bench_wsi.py --threads 2   # writes results/wsi_throughput.json/.md and results/wsi_overview.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cryonuseg_hf import TILE_IDS
from cryonuseg_hf.data.metadata import read_slide_metadata
from cryonuseg_hf.data.release import default_source, open_release
from cryonuseg_hf.model.images import read_image
from cryonuseg_hf.model.slides.pyramid import write_pyramid
from cryonuseg_hf.model.slides.reader import MODEL_MPP

RESULTS = Path(__file__).resolve().parent.parent / "results"


class GlassWithTiles:
    """A read-only (H, W, 3) uint8 image, white except for tiles at given places; only the slices asked for exist."""

    def __init__(self, shape: tuple[int, int], tiles: dict[tuple[int, int], np.ndarray]):
        self.shape = (*shape, 3)
        self.tiles = tiles

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        r_idx = np.arange(*rows.indices(self.shape[0]))
        c_idx = np.arange(*cols.indices(self.shape[1]))
        out = np.full((len(r_idx), len(c_idx), 3), 255, np.uint8)
        for (row, col), tile in self.tiles.items():
            r_in = (r_idx >= row) & (r_idx < row + tile.shape[0])
            c_in = (c_idx >= col) & (c_idx < col + tile.shape[1])
            if r_in.any() and c_in.any():
                out[np.ix_(r_in, c_in)] = tile[np.ix_(r_idx[r_in] - row, c_idx[c_in] - col)]
        return out


def layout(images: list[np.ndarray], shape: tuple[int, int], rows: int = 3) -> dict:
    """The tiles side by side in one piece of tissue ``rows`` tiles high, in the middle of the slide."""
    cols = -(-len(images) // rows)
    row0, col0 = shape[0] // 2 - rows * 256, shape[1] // 2 - cols * 256
    return {(row0 + (i // cols) * 512, col0 + (i % cols) * 512): image for i, image in enumerate(images)}


def run_slide(path: Path, out: Path, threads: int) -> dict:
    command = [sys.executable, "-m", "cryonuseg_hf.cli", "predict", str(path), "-o", str(out)]
    command += ["--backend", "onnx", "--device", "cpu", "--threads", str(threads), "--overwrite"]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak resident memory
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {os.waitstatus_to_exitcode(status)}")
    summary = json.loads((out / f"{path.stem}_summary.json").read_text())
    summary["process_seconds"] = round(wall, 1)
    summary["peak_rss_gib"] = round(usage.ru_maxrss / 2**20, 3)  # ru_maxrss is in KiB on Linux
    # CPU time is what the work costs whatever else shares the machine (wall time under load is not)
    summary["process_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=3, help="CryoNuSeg tiles laid on each slide")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    release = open_release(default_source())
    sheet = read_slide_metadata(release.root / "metadata" / "Selected_WSIs.xlsx")
    sizes = [(r["svs_height"], r["svs_width"]) for r in sheet.values() if r["svs_width"]]
    median_area = statistics.median(h * w for h, w in sizes)
    typical = min(sizes, key=lambda s: abs(s[0] * s[1] - median_area))
    images = [read_image(release.images[t]) for t in TILE_IDS[: args.tiles]]
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-wsi-"))
    runs = {}
    try:
        for name, shape in (("small", (2048, 2048)), ("typical", typical)):
            path = work / f"{name}.tif"
            started = time.perf_counter()
            write_pyramid(path, GlassWithTiles(shape, layout(images, shape)), MODEL_MPP, steps=(1, 4, 16, 64))
            write_seconds = time.perf_counter() - started
            summary = run_slide(path, work / name, args.threads)
            summary["slide_write_seconds"] = round(write_seconds, 1)
            summary["file_mib"] = round(path.stat().st_size / 2**20, 1)
            runs[name] = summary
            print(json.dumps({k: summary[k] for k in ("level0_size", "nuclei", "seconds", "peak_rss_gib")}))
        shutil.copy(work / "small" / "small_overview.png", args.out / "wsi_overview.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    big = runs["typical"]
    seconds_per_mm2 = big["seconds"] / big["tissue_mm2"]
    # the model's work per tissue area: CPU time of predict_slide less its tissue search (a per-slide cost)
    cpu_per_mm2 = (big["cpu_seconds"] - big["tissue_search_cpu_seconds"]) / big["tissue_mm2"]
    tissue_mpx_per_cpu_s = big["tissue_megapixels"] / (big["cpu_seconds"] - big["tissue_search_cpu_seconds"])
    median_mm2 = median_area * MODEL_MPP**2 * 1e-6
    result = {
        "command": f"python benchmarks/bench_wsi.py --threads {args.threads} --tiles {args.tiles}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "threads": args.threads,
        "backend": "onnxruntime (CPU)",
        "tissue_megapixels_per_second": big["tissue_megapixels_per_second"],
        "seconds_per_mm2_tissue": round(seconds_per_mm2, 2),
        "minutes_per_cm2_tissue": round(seconds_per_mm2 * 100 / 60, 1),
        "cpu_seconds_per_mm2_tissue": round(cpu_per_mm2, 2),
        "tissue_megapixels_per_cpu_second": round(tissue_mpx_per_cpu_s, 5),
        "median_tcga_slide": {
            "size": [typical[1], typical[0]],
            "area_mm2": round(median_area * MODEL_MPP**2 * 1e-6, 1),
            "hours_if_all_tissue": round(seconds_per_mm2 * median_mm2 / 3600, 1),
            "cpu_hours_if_all_tissue": round(cpu_per_mm2 * median_mm2 / 3600, 1),
        },
        "runs": runs,
    }
    (args.out / "wsi_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    small = runs["small"]
    lines = [
        "# Whole-slide prediction: throughput and memory",
        "",
        f"Made by `{result['command']}` on {result['machine']} (load average before {load_before[0]:.2f}, after "
        f"{result['load_average_after'][0]:.2f}: other jobs shared the CPU). Slides: pyramidal TIFFs of white "
        f"glass with {args.tiles} real CryoNuSeg tiles side by side, 3 rows high; the model is the shipped checkpoint on "
        f"onnxruntime with {args.threads} threads; times exclude loading the model; CPU time counts all threads.",
        "",
        "| slide | level-0 size | tissue mm² | nuclei | blocks run / all | model tiles run / blank | seconds | "
        "CPU s | tissue search CPU s | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['level0_size'][0]} x {r['level0_size'][1]} | {r['tissue_mm2']:.3f} | {r['nuclei']} | "
            f"{r['blocks_with_tissue']} / {r['blocks']} | {r['tiles_run']} / {r['tiles_skipped_blank']} | "
            f"{r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['tissue_search_cpu_seconds']:.1f} | "
            f"{r['peak_rss_gib']} |"
        )
    lines += [
        "",
        f"- Cost of the model's work (CPU time of `predict_slide` less its tissue search): {cpu_per_mm2:.0f} "
        f"CPU-s per mm² of tissue, {tissue_mpx_per_cpu_s:.4f} megapixels of tissue (at {MODEL_MPP} µm/px) per "
        f"CPU-second. On {args.threads} idle cores with threads scaling perfectly that is {cpu_per_mm2 / args.threads:.0f} "
        f"s per mm² and {tissue_mpx_per_cpu_s * args.threads:.3f} MP/s (an upper bound, not measured here). "
        f"Wall clock under the load above: {seconds_per_mm2:.0f} s per mm².",
        f"- Per slide: the tissue search took {big['tissue_search_cpu_seconds']:.1f} CPU-s on the "
        f"{typical[1]} x {typical[0]} px slide (the median size of the TCGA slides in the sheet, {median_mm2:.0f} mm² "
        f"scanned). Such a slide takes {result['median_tcga_slide']['cpu_hours_if_all_tissue']} CPU-hours per "
        "100 % of its area that is tissue; a section covering a fraction of the glass takes that fraction.",
        f"- Memory: peak RSS {small['peak_rss_gib']} GiB on the 2048 px slide and {big['peak_rss_gib']} GiB on "
        "the typical one: it follows the block size, not the slide size.",
        "",
        "![overview of the small slide](wsi_overview.png)",
        "",
    ]
    (args.out / "wsi_throughput.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
