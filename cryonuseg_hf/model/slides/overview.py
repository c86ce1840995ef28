"""The overview PNG of a slide: its thumbnail, the tissue outline and the density of nuclei, with a caption."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cryonuseg_hf.data.outlines import XY_OFFSET
from cryonuseg_hf.model.slides.tissue_map import TissueMap
from cryonuseg_hf.model.tissue import block_mean

OVERVIEW_SIZE = 2048
"""Longest side of the overview PNG in pixels."""


def count_centroids(density: np.ndarray, records: list[dict], per_level0: tuple[float, float]) -> None:
    """Add one to ``density`` at the pixel of each record's centroid.

    Args:
        density: (h, w) counts, a pixel of the tissue mask each.
        records: nuclei with ``centroid_x`` and ``centroid_y`` in level-0 pixels (file convention).
        per_level0: density pixels per level-0 pixel (x, y).
    """
    x = np.array([r["centroid_x"] - XY_OFFSET + 0.5 for r in records]) * per_level0[0]
    y = np.array([r["centroid_y"] - XY_OFFSET + 0.5 for r in records]) * per_level0[1]
    rows = np.clip(y.astype(int), 0, density.shape[0] - 1)
    cols = np.clip(x.astype(int), 0, density.shape[1] - 1)
    np.add.at(density, (rows, cols), 1)


def write_overview(path: Path, tissue: TissueMap, density: np.ndarray, summary: dict) -> Path:
    """The overview PNG: thumbnail, tissue outline (blue) and nuclei per mm² (yellow to red), with a caption.

    Everything is first reduced to at most ``OVERVIEW_SIZE`` pixels a side (small slides are enlarged instead).
    ``density`` counts nucleus centroids per pixel of the tissue mask; it is smoothed over about 50 µm.
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    f = -(-max(tissue.mask.shape) // OVERVIEW_SIZE)
    overview, mask, counts = block_mean(tissue.overview, f), tissue.mask, density.astype(np.float32)
    if f > 1:
        pad = ((0, -mask.shape[0] % f), (0, -mask.shape[1] % f))
        mask = np.pad(mask, pad).reshape(overview.shape[0], f, overview.shape[1], f).any(axis=(1, 3))
        counts = np.pad(counts, pad).reshape(overview.shape[0], f, overview.shape[1], f).sum(axis=(1, 3))
    mpp = (tissue.mpp[0] * f, tissue.mpp[1] * f)
    per_mm2 = ndi.gaussian_filter(counts, 50.0 / ((mpp[0] + mpp[1]) / 2)) / (mpp[0] * mpp[1] * 1e-6)
    peak = float(per_mm2.max())
    image = overview.astype(np.float32)
    if peak > 0:
        level = np.clip(per_mm2 / peak, 0, 1)[:, :, None]
        heat = np.concatenate([np.full_like(level, 255), 255 * (1 - level), np.zeros_like(level)], axis=2)
        alpha = 0.65 * level * ((level > 0.02) & mask[:, :, None])
        image = image * (1 - alpha) + heat * alpha
    image = image.astype(np.uint8)
    image[find_boundaries(mask, mode="inner")] = (0, 90, 255)
    picture = Image.fromarray(image)
    longest = max(picture.size)
    if longest < OVERVIEW_SIZE // 4:  # a small slide or ROI: enlarge, keeping pixels sharp
        factor = OVERVIEW_SIZE // 4 // longest
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    caption = (
        f"{summary['nuclei']} nuclei in {summary['tissue_mm2']:.2f} mm2 of tissue (blue outline); "
        f"density yellow->red, peak {peak:.0f}/mm2 over 50 um"
    )
    text_width = math.ceil(ImageDraw.Draw(picture).textlength(caption)) + 8
    canvas = Image.new("RGB", (max(picture.width, text_width), picture.height + 16), "white")
    canvas.paste(picture, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), caption, fill=(0, 0, 0))
    canvas.save(path, format="PNG", compress_level=3)
    return path
