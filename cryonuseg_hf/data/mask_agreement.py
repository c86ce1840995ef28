"""Regenerated masks against the released ones: every tile, mark-up and released variant, in numbers.

For each (tile, mark-up) pair the ROI set is read (:func:`cryonuseg_hf.data.rois.read_roi_set`), every variant is
regenerated (:func:`cryonuseg_hf.data.mask_variants.mask_variants`) and compared with the released file
(:func:`agreement_rows`, :func:`compare_variant`), and the numbers behind each MATLAB convention are measured
(:func:`_tile_facts`). :mod:`cryonuseg_hf.reports.mask_report` writes them down (``cryonuseg-hf mask-report``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from cryonuseg_hf.data.release import MARKUPS, RELEASED_VARIANTS, Release

logger = logging.getLogger(__name__)

LABEL_VARIANTS = ("label_masks_modify", "label_masks")
BINARY_VARIANTS = ("mask_binary", "mask_binary_without_border", "mask_binary_without_border_erode")
MAP_VARIANTS = ("distance_maps", "weighted_maps", "weighted_maps_erode")


def matched_iou(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over the non-zero labels of ``reference`` of their best IoU with any label of ``candidate``.

    >>> a = np.array([[1, 1, 0, 2, 2]]); b = np.array([[5, 5, 0, 7, 0]])
    >>> matched_iou(a, b)
    0.75
    """
    ref = reference.ravel().astype(np.int64)
    cand = candidate.ravel().astype(np.int64)
    ref_ids, ref_area = np.unique(ref[ref > 0], return_counts=True)
    if ref_ids.size == 0:
        return 1.0 if not (cand > 0).any() else 0.0
    cand_ids, cand_area = np.unique(cand[cand > 0], return_counts=True)
    both = (ref > 0) & (cand > 0)
    pairs, inter = np.unique(np.stack([ref[both], cand[both]]), axis=1, return_counts=True)
    best = np.zeros(ref_ids.size)
    if pairs.size:
        r = np.searchsorted(ref_ids, pairs[0])
        c = np.searchsorted(cand_ids, pairs[1])
        iou = inter / (ref_area[r] + cand_area[c] - inter)
        np.maximum.at(best, r, iou)
    return float(best.mean())


def compare_variant(
    regenerated: np.ndarray, released: np.ndarray, variant: str
) -> dict[str, float | int | str]:
    """The agreement numbers of one variant of one tile (keys of
    :data:`cryonuseg_hf.reports.mask_report.CSV_FIELDS` after ``variant``).

    Raises:
        ValueError: the two arrays differ in shape.
    """
    if regenerated.shape != released.shape:
        raise ValueError(f"{variant}: regenerated shape {regenerated.shape} != released {released.shape}")
    diff = np.abs(regenerated.astype(np.int64) - released.astype(np.int64))
    row: dict[str, float | int | str] = {
        "pixel_agreement": float(np.mean(diff == 0)),
        "n_differing_pixels": int(np.count_nonzero(diff)),
        "max_abs_difference": int(diff.max()),
        "mean_abs_difference": float(diff.mean()),
        "foreground_iou": "",
        "mean_instance_iou": "",
        "labels_identical": "",
        "n_released_labels": "",
        "n_regenerated_labels": "",
    }
    if variant in LABEL_VARIANTS or variant in BINARY_VARIANTS:
        fg_ref, fg_new = released > 0, regenerated > 0
        union = np.count_nonzero(fg_ref | fg_new)
        row["foreground_iou"] = float(np.count_nonzero(fg_ref & fg_new) / union) if union else 1.0
    if variant in LABEL_VARIANTS:
        row["mean_instance_iou"] = matched_iou(released, regenerated)
        row["labels_identical"] = bool(np.array_equal(released, regenerated))
        row["n_released_labels"] = int(np.unique(released[released > 0]).size)
        row["n_regenerated_labels"] = int(np.unique(regenerated[regenerated > 0]).size)
    return row


def _pixel_centre_labels(nuclei, shape: tuple[int, int]) -> np.ndarray:
    """The alternative convention: skimage's pixel-centre test with ImageJ's centres (j + 0.5, i + 0.5)."""
    from skimage.draw import polygon

    out = np.zeros(shape, np.int64)
    for label, nucleus in enumerate(nuclei, start=1):
        rr, cc = polygon(nucleus.y.astype(np.float64) - 0.5, nucleus.x.astype(np.float64) - 0.5, shape)
        out[rr, cc] = label
    return out


def _tile_facts(nuclei, variants: dict[str, np.ndarray], shape: tuple[int, int]) -> dict[str, object]:
    """Per-tile numbers for the written explanation (conventions that could make the masks differ)."""
    from scipy import ndimage

    from cryonuseg_hf.data.mask_variants import border_removed, distance_map, matlab_uint8, unet_weight_map
    from cryonuseg_hf.data.roi_checks import empty_nuclei, hidden_nuclei

    removed = border_removed(nuclei, shape)
    gt = np.where(removed > 0, 255.0, removed.astype(np.float64))
    gt_erode = ndimage.grey_erosion(
        gt, footprint=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool), cval=np.inf
    )
    facts: dict[str, object] = {
        "minus_two_pixels": int(np.count_nonzero(gt == -2)),
        "minus_two_pixels_erode": int(np.count_nonzero(gt_erode == -2)),
        "hidden": hidden_nuclei(nuclei, variants["label_masks_modify"]),
        "empty": empty_nuclei(nuclei, shape),
        "summed_values": int(np.unique(variants["label_masks"][variants["label_masks"] > 0]).size),
        "overlap_pixels": int(np.count_nonzero(variants["label_masks"] != variants["label_masks_modify"])),
    }
    # What ignoring MATLAB's -2 class would change in the weighted maps.
    for key, image in (("weighted_maps", gt), ("weighted_maps_erode", gt_erode)):
        if (image == -2).any():
            clean = np.maximum(image, 0)
            weight = unet_weight_map(clean)
            alt = matlab_uint8(weight * 255 / weight.max())
            facts[f"{key}_without_minus_two_max_diff"] = int(
                np.abs(alt.astype(int) - variants[key].astype(int)).max()
            )
            facts[f"{key}_without_minus_two_n_diff"] = int(np.count_nonzero(alt != variants[key]))
    # Distance maps: bwdist's single precision, and MATLAB's order (D / max) * 255 -- what ignoring each changes.
    distance = distance_map(nuclei, shape)
    if distance.max() > 0:
        exact = distance.astype(np.float64)
        double = distance_map(nuclei, shape, dtype=np.float64)
        alternatives = {
            "distance_double_n_diff": matlab_uint8((double / double.max()) * 255),
            "distance_order_n_diff": matlab_uint8(255 * exact / exact.max()),
        }
        for key, other in alternatives.items():
            changed = other != variants["distance_maps"]
            facts[key] = int(np.count_nonzero(changed))
            if changed.any():
                facts[key.replace("n_diff", "example")] = (
                    float(double[changed][0] ** 2),
                    float(double.max() ** 2),
                )
    # Pixel-centre rasterisation instead of poly2mask.
    alt = _pixel_centre_labels(nuclei, shape)
    modify = variants["label_masks_modify"]
    facts["pixel_centre_agreement"] = float(np.mean(alt == modify))
    facts["pixel_centre_iou"] = matched_iou(modify, alt)
    facts["pixel_centre_area_ratio"] = float(np.count_nonzero(alt) / max(np.count_nonzero(modify), 1))
    facts["integer_vertex_rois"] = sum(
        bool(np.all(n.x == np.round(n.x)) and np.all(n.y == np.round(n.y))) for n in nuclei
    )
    # MATLAB's approximate disks (radius >= 3) against exact Euclidean disks, for the nuclei borders.
    binary = modify > 0
    exact = {}
    for k in (3, 5, 10):
        r = np.arange(-k, k + 1)
        disk = (r[:, None] ** 2 + r[None, :] ** 2) <= k * k
        eroded = ndimage.binary_erosion(binary, structure=disk, border_value=1)
        exact[k] = int(np.count_nonzero((binary & ~eroded) != (variants[f"nuclei_border_{k}"] > 0)))
    facts["border_exact_disk_n_diff"] = exact
    return facts


def agreement_rows(
    release: Release,
    markups: Sequence[str] = MARKUPS,
    tiles: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, object]], dict[tuple[str, str], dict[str, object]]]:
    """Regenerate and compare every released variant.

    Args:
        release: from :func:`cryonuseg_hf.data.release.open_release`.
        markups: which mark-ups.
        tiles: which tiles (default: all 30).
        progress: show a progress bar.

    Returns:
        ``(rows, facts)``: one row per (tile, mark-up, variant) with the
        :data:`cryonuseg_hf.reports.mask_report.CSV_FIELDS` keys, and per (mark-up,
        tile) the numbers behind the written explanation (ROI findings, hidden nuclei, timings, ...).
    """
    from cryonuseg_hf.core.tiles import TILE_SHAPE
    from cryonuseg_hf.data.mask_variants import mask_variants
    from cryonuseg_hf.data.readers import read_mask
    from cryonuseg_hf.data.roi_checks import check_nuclei
    from cryonuseg_hf.data.rois import read_roi_set

    tiles = list(tiles) if tiles is not None else release.tile_ids
    jobs = [(m, t) for m in markups for t in tiles]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="mask-report", unit="tile")
    rows: list[dict[str, object]] = []
    facts: dict[tuple[str, str], dict[str, object]] = {}
    for markup, tile in jobs:
        files = release.markups[markup]
        nuclei = read_roi_set(files.rois[tile])
        start = time.perf_counter()
        variants = mask_variants(nuclei, TILE_SHAPE)
        seconds = time.perf_counter() - start
        for variant in RELEASED_VARIANTS:
            if variant not in files.variants:
                continue
            released = read_mask(files.variants[variant][tile])
            row = {"tile_id": tile, "markup": markup, "variant": variant}
            row.update(compare_variant(variants[variant], released, variant))
            rows.append(row)
        tile_facts = _tile_facts(nuclei, variants, TILE_SHAPE)
        tile_facts["n_rois"] = len(nuclei)
        tile_facts["findings"] = [str(f) for f in check_nuclei(nuclei, TILE_SHAPE, files.rois[tile].name)]
        tile_facts["seconds"] = seconds
        facts[(markup, tile)] = tile_facts
        logger.info("%s %s: %d ROIs, regenerated in %.2f s", markup, tile, len(nuclei), seconds)
    return rows, facts


def summarise(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Per (mark-up, variant): tiles compared, tiles bit-identical, mean/min pixel agreement, worst differences."""
    summary = []
    keys = sorted(
        {(r["markup"], r["variant"]) for r in rows}, key=lambda k: (k[0], list(RELEASED_VARIANTS).index(k[1]))
    )
    for markup, variant in keys:
        group = [r for r in rows if r["markup"] == markup and r["variant"] == variant]
        agreement = np.array([r["pixel_agreement"] for r in group], float)
        ious = [r["mean_instance_iou"] for r in group if r["mean_instance_iou"] != ""]
        summary.append(
            {
                "markup": markup,
                "variant": variant,
                "tiles": len(group),
                "identical_tiles": sum(r["n_differing_pixels"] == 0 for r in group),
                "mean_pixel_agreement": float(agreement.mean()),
                "min_pixel_agreement": float(agreement.min()),
                "differing_pixels": sum(int(r["n_differing_pixels"]) for r in group),
                "max_abs_difference": max(int(r["max_abs_difference"]) for r in group),
                "mean_instance_iou": float(np.mean(ious)) if ious else None,
            }
        )
    return summary
