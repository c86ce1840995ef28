"""Whole-slide prediction: CPU-seconds per mm² of tissue beside InstanSeg, and peak memory, for each set of options.

Each slide is a pyramidal TIFF (levels 1:1, 1:4, 1:16, 1:64, zlib, the model's µm/px) written tile by tile from a
virtual image: white glass with 16 real CryoNuSeg tiles side by side as one contiguous 2048 x 2048 px piece of
tissue, so the tissue is real H&E and the glass is what tissue detection must skip. The small slide is 3072 x 3072
px; the large one has the size of the median TCGA slide of ``Selected_WSIs.xlsx``. Each set of ``predict``
options (``--options``, one string each; the first is the reference) runs the small slide with ``cryonuseg-hf
predict`` in a child process (``--threads``); the large slide runs with the last set, for memory and the tissue
search's cost. The work is timed inside ``predict_slide`` (model loading excluded); peak resident memory is read
from the OS. InstanSeg's ``brightfield_nuclei`` labels the same 2048 x 2048 px of tissue at its documented 0.5 µm/px
in a child process (``bench_levers.py --one instanseg``, model loading excluded too).

    python benchmarks/bench_wsi.py --threads 2   # writes results/wsi_throughput.json/.md and results/wsi_overview.png
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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
FAST = "--backend openvino --precision bf16 --head folded --blend"
"""The fastest options measured on this CPU (``results/predict_levers.md``)."""


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


def layout(images: list[np.ndarray], shape: tuple[int, int]) -> dict:
    """The tiles side by side in one square-ish piece of tissue, in the middle of the slide."""
    rows = max(1, round(len(images) ** 0.5))
    cols = -(-len(images) // rows)
    row0, col0 = shape[0] // 2 - rows * 256, shape[1] // 2 - cols * 256
    return {(row0 + (i // cols) * 512, col0 + (i % cols) * 512): image for i, image in enumerate(images)}


def run_slide(path: Path, out: Path, threads: int, options: str) -> dict:
    """``cryonuseg-hf predict`` on a slide in a child process: its summary, wall and CPU time, peak memory."""
    command = [sys.executable, "-m", "cryonuseg_hf.cli", "predict", str(path), "-o", str(out)]
    command += ["--device", "cpu", "--threads", str(threads), "--overwrite", *shlex.split(options)]
    if "--backend" not in options:
        command += ["--backend", "onnx"]
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
    # the model's work per tissue area: CPU time of predict_slide less its tissue search (a per-slide cost)
    work = summary["cpu_seconds"] - summary["tissue_search_cpu_seconds"]
    summary["cpu_seconds_per_mm2_tissue"] = round(work / summary["tissue_mm2"], 1)
    return summary


def run_peer(threads: int) -> dict:
    """InstanSeg on the same 2048 x 2048 px of tissue, in a child process (``bench_levers.py --one instanseg``)."""
    command = [sys.executable, str(Path(__file__).with_name("bench_levers.py")), "--one", "instanseg"]
    done = subprocess.run(command + ["--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from cryonuseg_hf.core.machine import load_words, machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=16, help="CryoNuSeg tiles laid on each slide")
    parser.add_argument(
        "--options",
        nargs="+",
        default=["", FAST],
        help="predict options, one string per run (the first is the reference; '' = the defaults)",
    )
    parser.add_argument("--no-peer", action="store_true", help="leave InstanSeg out")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    release = open_release(default_source())
    sheet = read_slide_metadata(release.root / "metadata" / "Selected_WSIs.xlsx")
    sizes = [(r["svs_height"], r["svs_width"]) for r in sheet.values() if r["svs_width"]]
    median_area = statistics.median(h * w for h, w in sizes)
    typical = min(sizes, key=lambda s: abs(s[0] * s[1] - median_area))
    images = [read_image(release.images[t]) for t in TILE_IDS[: args.tiles]]
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-wsi-"))
    small, large = {}, {}
    try:
        paths = {}
        for name, shape in (("small", (3072, 3072)), ("typical", typical)):
            paths[name] = work / f"{name}.tif"
            started = time.perf_counter()
            glass = GlassWithTiles(shape, layout(images, shape))
            write_pyramid(paths[name], glass, MODEL_MPP, steps=(1, 4, 16, 64))
            print(f"{name} slide written in {time.perf_counter() - started:.1f} s", flush=True)
        for index, options in enumerate(args.options):
            small[options] = run_slide(paths["small"], work / f"small{index}", args.threads, options)
            print(
                f"small slide, options {options!r}:", small[options]["cpu_seconds_per_mm2_tissue"], flush=True
            )
        large = run_slide(paths["typical"], work / "typical", args.threads, args.options[-1])
        last = len(args.options) - 1
        shutil.copy(work / f"small{last}" / "small_overview.png", args.out / "wsi_overview.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peer = None if args.no_peer else run_peer(args.threads)
    load_after = os.getloadavg()[0]

    reference = small[args.options[0]]["cpu_seconds_per_mm2_tissue"]
    median_mm2 = median_area * MODEL_MPP**2 * 1e-6
    best = small[args.options[-1]]["cpu_seconds_per_mm2_tissue"]
    result = {
        "command": "python benchmarks/bench_wsi.py --threads "
        + f"{args.threads} --tiles {args.tiles} --options "
        + " ".join(shlex.quote(o) for o in args.options)
        + (" --no-peer" if args.no_peer else ""),
        "machine": machine_description(),
        "load": load_words(load_before, load_after),
        "threads": args.threads,
        "tissue": f"{args.tiles} CryoNuSeg tiles side by side, one contiguous piece",
        "cpu_seconds_per_mm2_tissue": {
            options or "defaults": r["cpu_seconds_per_mm2_tissue"] for options, r in small.items()
        },
        "instanseg_cpu_seconds_per_mm2_tissue": peer["cpu_s_per_mm2"] if peer else None,
        "median_tcga_slide": {
            "size": [typical[1], typical[0]],
            "area_mm2": round(median_mm2, 1),
            "cpu_hours_if_all_tissue": round(best * median_mm2 / 3600, 1),
            "options": args.options[-1],
        },
        "small_runs": {options or "defaults": r for options, r in small.items()},
        "typical_run": large,
        "instanseg": peer,
    }
    (args.out / "wsi_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Whole-slide prediction: CPU-seconds per mm² of tissue, beside InstanSeg, and memory",
        "",
        f"Made by `{result['command']}` on {result['machine']}, {result['load']}. Slides: pyramidal TIFFs of white "
        f"glass with {result['tissue']}; the shipped checkpoint with {args.threads} threads; times exclude loading "
        "the model and the slide's tissue search; CPU time counts all threads, so it is what the work costs "
        "whatever else shares the machine.",
        "",
        "| predict options | CPU-s per mm² | vs defaults | mm² per hour on 2 cores | nuclei | blocks | windows run / "
        "blank | wall s | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for options, r in small.items():
        per_mm2 = r["cpu_seconds_per_mm2_tissue"]
        lines.append(
            f"| `{options or '(defaults)'}` | {per_mm2:.0f} | {per_mm2 / reference:.2f} | "
            f"{3600 * 2 / per_mm2:.0f} | {r['nuclei']} | {r['blocks_with_tissue']} | {r['tiles_run']} / "
            f"{r['tiles_skipped_blank']} | {r['seconds']:.1f} | {r['peak_rss_gib']} |"
        )
    if peer:
        lines.append(
            f"| InstanSeg `brightfield_nuclei` at 0.5 µm/px, same tissue | {peer['cpu_s_per_mm2']:.0f} | "
            f"{peer['cpu_s_per_mm2'] / reference:.2f} | {3600 * 2 / peer['cpu_s_per_mm2']:.0f} | {peer['nuclei']} | "
            f"| | {peer['wall_s']} | |"
        )
    lines += [
        "",
        "mm² per hour on 2 cores assumes both cores busy with this work (CPU-s per mm² / 2 per mm²); the wall "
        "seconds are those of this run on the load above.",
        f"- The median TCGA slide ({typical[1]} x {typical[0]} px, {median_mm2:.0f} mm² scanned) takes "
        f"{result['median_tcga_slide']['cpu_hours_if_all_tissue']} CPU-hours per 100 % of its area that is tissue "
        f"with `{args.options[-1] or '(defaults)'}`; a section covering a fraction of the glass takes that fraction. "
        f"Its tissue search took {large['tissue_search_cpu_seconds']:.1f} CPU-s.",
        f"- Memory: peak RSS {small[args.options[-1]]['peak_rss_gib']} GiB on the 3072 px slide and "
        f"{large['peak_rss_gib']} GiB on the typical one (same options): it follows the block size, not the slide "
        "size.",
        "",
        "![overview of the small slide](wsi_overview.png)",
        "",
    ]
    (args.out / "wsi_throughput.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
