"""How closely the Python masks reproduce the released ones: every tile, mark-up and released variant.

For each of the 90 (tile, mark-up) pairs the ROI set is read (:func:`cryonuseg_hf.data.rois.read_roi_set`), every
variant is regenerated (:func:`cryonuseg_hf.data.mask_variants.mask_variants`) and compared with the released file:

- all variants: pixel agreement (fraction of equal pixels), number of differing pixels, max and mean absolute
  difference (in the released encoding: label values for the uint16 TIFFs, 0..255 for the PNGs);
- label variants: mean matched IoU (each released label's best IoU with a regenerated label, averaged over
  released labels) and whether the label values themselves are identical;
- binary variants: foreground IoU.

Besides the table, the report measures what each MATLAB convention is worth (so that a disagreement, should
one appear, can be explained with numbers): a plain pixel-centre rasteriser instead of ``poly2mask``, the
scaling order of the distance maps, the ``-2`` pixels that ``masks_generator.m`` leaves in the border-removed
mask, and MATLAB's approximate disks for the nuclei borders.

The numbers are computed by :mod:`cryonuseg_hf.data.mask_agreement`; this module writes the CSV and the
Markdown. Run it with ``cryonuseg-hf mask-report [--source ...] [--out results]``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryonuseg_hf.core.machine import machine_description
from cryonuseg_hf.data.mask_agreement import agreement_rows, summarise
from cryonuseg_hf.data.release import MARKUPS

CSV_FIELDS = (
    "tile_id",
    "markup",
    "variant",
    "pixel_agreement",
    "n_differing_pixels",
    "max_abs_difference",
    "mean_abs_difference",
    "foreground_iou",
    "mean_instance_iou",
    "labels_identical",
    "n_released_labels",
    "n_regenerated_labels",
)


def write_rows_csv(rows: Sequence[dict[str, object]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def _fmt(value: float | None, digits: int = 6) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_markdown(
    rows: Sequence[dict[str, object]],
    facts: dict[tuple[str, str], dict[str, object]],
    path: Path,
    command: str,
) -> Path:
    """The summary table and the written explanation, every number computed from ``rows`` and ``facts``."""
    summary = summarise(rows)
    markups = sorted({m for m, _ in facts}, key=list(MARKUPS).index)
    n_pairs = len(facts)
    lines = [
        "# Regenerated masks vs the released CryoNuSeg masks",
        "",
        f"Produced by `{command}` on {machine_description()}.",
        "Per-tile numbers: `results/mask_agreement.csv` (one row per tile, mark-up and released variant).",
        "",
        "Each ROI set is read with `cryonuseg_hf.data.rois.read_roi_set`, every variant is regenerated with "
        "`cryonuseg_hf.data.mask_variants.mask_variants` (a Python port of the authors' `masks_generator.m` / `unetwmap.m` "
        "from `masih4/CryoNuSeg`) and compared with the released file in its released encoding: uint16 label "
        "values for the `label masks*` TIFFs, uint8 0..255 for the PNGs. The float maps are quantised exactly as "
        "the generator does: distance maps `im2uint8(D / max(D))` = `round((D / max D) * 255)`, weighted maps "
        "`uint8(w * 255 / max(w))` (MATLAB rounds halves away from zero).",
        "",
        "## Summary",
        "",
        "| mark-up | variant | tiles | bit-identical | mean pixel agreement | min pixel agreement | differing pixels "
        "| max abs diff | mean instance IoU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['markup']} | {s['variant']} | {s['tiles']} | {s['identical_tiles']} | "
            f"{_fmt(s['mean_pixel_agreement'])} | {_fmt(s['min_pixel_agreement'])} | {s['differing_pixels']} | "
            f"{s['max_abs_difference']} | {_fmt(s['mean_instance_iou'], 4)} |"
        )
    n_rows = len(rows)
    n_identical = sum(r["n_differing_pixels"] == 0 for r in rows)
    differing = [r for r in rows if r["n_differing_pixels"] != 0]
    lines += ["", "## Disagreements", ""]
    if not differing:
        lines.append(
            f"None. All {n_rows} comparisons ({n_pairs} tile/mark-up pairs x {n_rows // max(n_pairs, 1)} released "
            "variants) are bit-identical: same label values, same binaries, same 8-bit maps."
        )
    else:
        lines.append(f"{n_identical} of {n_rows} comparisons are bit-identical. The others:")
        lines.append("")
        lines.append("| tile | mark-up | variant | differing pixels | max abs diff | pixel agreement |")
        lines.append("|---|---|---|---|---|---|")
        for r in differing:
            lines.append(
                f"| {r['tile_id']} | {r['markup']} | {r['variant']} | {r['n_differing_pixels']} | "
                f"{r['max_abs_difference']} | {_fmt(r['pixel_agreement'])} |"
            )
    lines += _explanation(facts, markups)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _explanation(facts: dict[tuple[str, str], dict[str, object]], markups: Sequence[str]) -> list[str]:
    """What each MATLAB convention is worth on this data, i.e. what would disagree without it."""
    per = {m: [f for (mm, _), f in facts.items() if mm == m] for m in markups}
    lines = ["", "## Where disagreements would come from, measured", ""]

    lines += [
        "**ROI accounting.** Every ROI is read; none is dropped.",
        "",
        "| mark-up | tiles | ROIs | labels in regenerated `label masks modify` | ROIs hidden under later ROIs "
        "| ROIs covering no pixel | distinct values in `label masks` |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in markups:
        f = per[m]
        n_rois = sum(x["n_rois"] for x in f)
        hidden = sum(len(x["hidden"]) for x in f)
        empty = sum(len(x["empty"]) for x in f)
        lines.append(
            f"| {m} | {len(f)} | {n_rois} | {n_rois - hidden - empty} | {hidden} | {empty} | "
            f"{sum(x['summed_values'] for x in f)} |"
        )
    hidden_list = [f"{t} {m}: {', '.join(x['hidden'])}" for (m, t), x in sorted(facts.items()) if x["hidden"]]
    findings = [s for x in facts.values() for s in x["findings"]]
    lines += [
        "",
        "A *hidden* ROI is drawn (it has pixels, and its label value is added into `label masks`) but every pixel "
        "of it is covered by later ROIs, so `label masks modify` (max) has no pixel with its label: "
        + ("; ".join(hidden_list) if hidden_list else "none")
        + ". `label masks` sums overlapping labels, which is why it holds more distinct values than there are "
        "nuclei; use `label masks modify` as the instance ground truth.",
        "",
        "ROI findings (degenerate, or reaching outside the tile): "
        + ("; ".join(findings) if findings else "none")
        + ". `poly2mask` clips such ROIs at the tile border, and so does the port, with identical pixels.",
        "",
    ]

    agreement = {m: np.mean([x["pixel_centre_agreement"] for x in per[m]]) for m in markups}
    iou = {m: np.mean([x["pixel_centre_iou"] for x in per[m]]) for m in markups}
    area = {m: np.mean([x["pixel_centre_area_ratio"] for x in per[m]]) for m in markups}
    integer = {m: sum(x["integer_vertex_rois"] for x in per[m]) for m in markups}
    rois = {m: sum(x["n_rois"] for x in per[m]) for m in markups}
    lines += [
        "**Rasterisation convention.** The generator calls `poly2mask(x, y, 512, 512)` on the ImageJ vertices "
        "unchanged. `poly2mask` snaps vertices to a 5x5 sub-pixel grid, joins them with integer lines and keeps a "
        "pixel when its centre is inside; MATLAB pixel (r, c) is centred at (x, y) = (c, r), so numpy pixel "
        "[i, j] is tested at ImageJ point (j + 1, i + 1): the pixel's bottom-right corner in ImageJ's geometry "
        "(left/top edges count out, right/bottom edges in). The port reproduces this exactly "
        "(`masks.polygon_mask`). How much the convention matters depends on the vertices: "
        + ", ".join(f"{integer[m]} of {rois[m]} ROIs of {m}" for m in markups)
        + " have only integer vertices (outlines traced along pixel edges), for which the corner rule selects "
        "exactly the enclosed pixels, like ImageJ; the others have sub-pixel vertices, where it is ImageJ's "
        "centre rule shifted by half a pixel. A plain pixel-centre rasteriser with ImageJ's convention "
        "(`skimage.draw.polygon` at (j + 0.5, i + 0.5)) agrees with `label masks modify` on "
        + ", ".join(f"{agreement[m]:.4f} of pixels ({m})" for m in markups)
        + ", with mean matched instance IoU "
        + ", ".join(f"{iou[m]:.4f}" for m in markups)
        + " and foreground area ratio "
        + ", ".join(f"{area[m]:.4f}" for m in markups)
        + ": for sub-pixel outlines every boundary moves by half a pixel, about one ring of boundary pixels per "
        "nucleus.",
        "",
    ]

    def _changes(key: str) -> str:
        hits = [(t, m, x) for (m, t), x in sorted(facts.items()) if x.get(f"{key}_n_diff")]
        if not hits:
            return "no pixel on this release"
        return "; ".join(
            f"{t} {m}: {x[f'{key}_n_diff']} pixels by 1 (e.g. D^2 = {x[f'{key}_example'][0]:g} with "
            f"max(D)^2 = {x[f'{key}_example'][1]:g}: 255 D / max D = "
            f"{255 * np.sqrt(x[f'{key}_example'][0] / x[f'{key}_example'][1]):.4f})"
            for t, m, x in hits
        )

    lines += [
        "**Distance maps: single precision and scaling order.** MATLAB's `bwdist` returns *single* precision; "
        "the generator takes the max over nuclei, converts to double, divides by the maximum and `imwrite` "
        "scales by 255 in `im2uint8` (round half up). Where 255 D / max D is exactly k + 0.5 (D and max D are "
        "square roots of integers, so such ties occur), the last bit of the arithmetic decides between k and "
        "k + 1. Computing the distances in double instead of single would change "
        + _changes("distance_double")
        + ". Computing `255 * D / max(D)` (scale first) from the single-precision distances would change "
        + _changes("distance_order")
        + ". The port does what MATLAB does (float32 distances, divide, then scale) and matches every pixel.",
        "",
    ]

    minus = [
        (t, m, x)
        for (m, t), x in sorted(facts.items())
        if x["minus_two_pixels"] or x["minus_two_pixels_erode"]
    ]
    lines += [
        "**The -2 pixels of the border-removed mask.** `masks_generator.m` subtracts both the dilated overlap "
        "edge and the thinned edge of an overlapping nucleus and resets only -1 to 0; where both hit a background "
        "pixel the value stays -2 until the next nucleus's `max` lifts it, so only the last nucleus of a tile "
        "can leave -2 pixels. They are written as 0 in the PNGs, but `unetwmap` counts -2 as a class of its own "
        "with its own (largest) class weight, which rescales the whole weight map. "
        f"{len(minus)} of {len(facts)} tile/mark-up pairs have such pixels"
        + (
            ": "
            + "; ".join(
                f"{t} {m} ({x['minus_two_pixels']} px; weighted maps would differ by up to "
                f"{x.get('weighted_maps_without_minus_two_max_diff', 0)} on "
                f"{x.get('weighted_maps_without_minus_two_n_diff', 0)} px if they were ignored)"
                for t, m, x in minus
            )
            if minus
            else ""
        )
        + (
            ". The port keeps them, which is why those maps match too."
            if minus
            else ". The port keeps them anyway, so that other ROI sets get the generator's maps."
        ),
        "",
    ]

    border = {k: sum(x["border_exact_disk_n_diff"][k] for x in facts.values()) for k in (3, 5, 10)}
    lines += [
        "**Nuclei borders (not in the release).** `masks_generator.m` also writes `nuclei border/disk1..10`: "
        "`mask_binary - imerode(mask_binary, strel('disk', k))`. For k >= 3 MATLAB's `strel('disk', k)` is not "
        "a Euclidean disk but its default N = 4 approximation (four periodic lines, plus a horizontal and a "
        "vertical line when they fall short); the port builds the same decomposition (`morphology.disk_decomposition`) "
        "and erodes with outside-the-image counted as foreground, as `imerode` pads. Using exact Euclidean disks "
        "instead would change "
        + ", ".join(f"{border[k]} pixels for k = {k}" for k in (3, 5, 10))
        + f" over the {len(facts)} tile/mark-up pairs. These columns cannot be checked against released files; "
        "the tests check them against their definition.",
        "",
        "**Label order.** Nucleus n is label n in the order of MATLAB's `dir('*.roi')` listing of the unzipped "
        "set, i.e. ROI file names sorted (case-insensitively on Windows); `read_roi_set` returns that order. The "
        "identical label values above confirm it.",
        "",
        "**Timing.** Regenerating all variants (8 released + 10 borders) takes "
        f"{np.mean([x['seconds'] for x in facts.values()]):.2f} s per tile on average and "
        f"{max(x['seconds'] for x in facts.values()):.2f} s at most (the weight maps dominate); "
        "`instance_masks` and `nuclei_borders` alone take a few to a few tens of milliseconds "
        "(`results/mask_speed.md`, from `benchmarks/bench_masks.py`). Timings were taken on a shared machine.",
    ]
    return lines


def mask_report(
    source: str | Path,
    out_dir: str | Path = "results",
    markups: Sequence[str] = MARKUPS,
    tiles: Sequence[str] | None = None,
    progress: bool = False,
    command: str = "cryonuseg-hf mask-report",
) -> dict[str, object]:
    """Compare, then write ``mask_agreement.csv`` and ``mask_agreement.md`` into ``out_dir``.

    Returns:
        ``{"csv": path, "markdown": path, "summary": summarise(rows)}``.
    """
    from cryonuseg_hf.data.release import open_release

    release = open_release(source)
    rows, facts = agreement_rows(release, markups, tiles, progress)
    out_dir = Path(out_dir)
    csv_path = write_rows_csv(rows, out_dir / "mask_agreement.csv")
    md_path = write_markdown(rows, facts, out_dir / "mask_agreement.md", command)
    return {"csv": csv_path, "markdown": md_path, "summary": summarise(rows)}
