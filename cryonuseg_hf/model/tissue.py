"""Is this H&E tissue? The one rule for images and whole slides, by brightness and colour.

Two measures of an RGB pixel: its brightness (the mean of R, G and B) and its colour (``max - min`` of R, G
and B; glass and fluorescence background are grey or black, H&E is pink and purple). With them:

- :func:`tissue_pixels`: which pixels hold stained tissue (colour at least ``TISSUE_SATURATION``). A slide's
  tissue mask is this rule on an overview at ``TISSUE_MPP`` µm/px (each pixel the mean colour of its block,
  :func:`block_mean`), and :func:`has_tissue` says whether a window of a slide is worth running the model on.
- :func:`tissue_problem`: why a whole image is not an H&E tissue image (almost black, blank, grey, unstained),
  or None. ``cryonuseg-hf predict`` refuses such images unless told ``--allow-non-tissue``.
- :func:`overview_problem`: why a slide is not H&E brightfield, judged on the tissue pixels of its overview
  (a fluorescence scan: its "tissue" is almost black, on black glass), or None; refused the same way.

The thresholds were measured on the 30 CryoNuSeg tiles; the figures are in the docstrings that use them.
"""

from __future__ import annotations

import numpy as np

TISSUE_MPP = 4.0
"""µm per pixel of a slide's tissue mask and overview (16 pixels of a 40x level 0)."""
TISSUE_SATURATION = 20
"""Least colour (max - min of R, G, B, of 255) of a tissue pixel of an overview."""
GLASS_BRIGHTNESS = 220
"""A pixel at least this bright (mean of R, G, B) is white background or glass."""
STAINED_COLOUR = 15
"""A pixel of an image with more colour than this (max - min of R, G, B) looks stained."""
DARK_BRIGHTNESS = 60
"""Below this mean brightness an image, or the tissue of a slide, is almost black."""
MIN_TISSUE_FRACTION = 0.25
"""Below this fraction of content (or stained) pixels an image is not treated as a tissue image."""


def brightness(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float mean of R, G and B, 0..255."""
    return np.asarray(rgb).sum(axis=-1, dtype=np.int16) / 3.0


def colour(rgb: np.ndarray) -> np.ndarray:
    """(H, W) int16 ``max - min`` of R, G and B: 0 for white, grey and black, high for stained tissue."""
    rgb = np.asarray(rgb)
    return rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """The colour rule: (H, W) bool, True where ``max - min`` of R, G, B is at least ``TISSUE_SATURATION``.

    >>> tissue_pixels(np.array([[[255, 255, 255], [200, 120, 180], [40, 40, 40]]], np.uint8)).tolist()
    [[False, True, False]]
    """
    return colour(rgb) >= TISSUE_SATURATION


def block_mean(rgb: np.ndarray, k: int) -> np.ndarray:
    """Mean colour of each k x k block (the last row and column of blocks may be partial), uint8.

    >>> block_mean(np.arange(12, dtype=np.uint8).reshape(1, 4, 3), 2).tolist()
    [[[2, 2, 4], [8, 8, 10]]]
    """
    if k == 1:
        return rgb
    height, width = rgb.shape[:2]
    pad_h, pad_w = -height % k, -width % k
    total = np.pad(rgb.astype(np.float32), ((0, pad_h), (0, pad_w), (0, 0)))
    total = total.reshape(total.shape[0] // k, k, total.shape[1] // k, k, 3).sum(axis=(1, 3))
    count = np.pad(np.ones((height, width), np.float32), ((0, pad_h), (0, pad_w)))
    count = count.reshape(count.shape[0] // k, k, count.shape[1] // k, k).sum(axis=(1, 3))
    return np.round(total / count[:, :, None]).astype(np.uint8)


def has_tissue(rgb: np.ndarray, mpp: float) -> bool:
    """Whether an image at ``mpp`` µm/px holds tissue by the rule of :func:`tissue_pixels` at ``TISSUE_MPP``."""
    return bool(tissue_pixels(block_mean(rgb, max(1, round(TISSUE_MPP / mpp)))).any())


def tissue_problem(image: np.ndarray) -> str | None:
    """Why an image is not an H&E tissue image the model can read, or None when it looks like one.

    The model turns anything into "nuclei", so a black, blank, grey or unstained image yields plausible
    nonsense (an all-black tile gave one nucleus covering a third of it). Thresholds, measured on the 30
    CryoNuSeg tiles (the same as :mod:`cryonuseg_hf.apps.app` warns with): a pixel is content when its brightness
    is below ``GLASS_BRIGHTNESS`` (71 % to 100 % of each tile) and stained when its colour is above
    ``STAINED_COLOUR`` as well (67.5 % to 100 %); the darkest tile's mean brightness is 89; the least coloured
    tile's median colour over its content is 36.

    >>> tissue_problem(np.zeros((64, 64, 3), np.uint8))
    'almost black (mean brightness 0 of 255; the darkest CryoNuSeg tile has 89)'
    >>> tissue_problem(np.full((64, 64, 3), 250, np.uint8))
    'blank: 100 % of it is white background or glass (at most 29 % in the CryoNuSeg tiles)'
    """
    luminance = brightness(image)
    chroma = colour(image)
    content = luminance < GLASS_BRIGHTNESS
    if luminance.mean() < DARK_BRIGHTNESS:
        return (
            f"almost black (mean brightness {luminance.mean():.0f} of 255; the darkest CryoNuSeg tile has 89)"
        )
    if content.mean() < MIN_TISSUE_FRACTION:
        return (
            f"blank: {100 * (1 - content.mean()):.0f} % of it is white background or glass "
            "(at most 29 % in the CryoNuSeg tiles)"
        )
    if np.median(chroma[content]) < 5:
        return (
            "grey: it has almost no colour, and the model reads H&E staining (purple nuclei on pink tissue)"
        )
    stained = (content & (chroma > STAINED_COLOUR)).mean()
    if stained < MIN_TISSUE_FRACTION:
        return f"unstained: only {100 * stained:.0f} % of it looks like stained tissue (at least 67 % in every tile)"
    return None


def overview_problem(overview: np.ndarray, region: np.ndarray | None = None) -> str | None:
    """Why a slide is not an H&E brightfield slide, judged on the tissue pixels of its overview, or None.

    A slide holds glass, so it is not judged as a whole like an image by :func:`tissue_problem`: its tissue
    pixels (:func:`tissue_pixels`) are. They are almost black (mean brightness below ``DARK_BRIGHTNESS``) in a
    fluorescence scan, whose stained "tissue" glows on a black background; at 4 µm/px the darkest CryoNuSeg
    tile's tissue has a mean brightness of 89 (a DAPI scan's 31). A slide without tissue pixels has no problem
    here: it has no nuclei to find.

    Args:
        overview: (h, w, 3) uint8, a slide at about ``TISSUE_MPP`` µm/px.
        region: (h, w) bool, the part of the overview to judge (default: all of it).

    >>> glass, dapi = [250, 250, 250], [0, 0, 90]
    >>> overview_problem(np.array([[glass, [180, 100, 160]]], np.uint8)) is None
    True
    >>> overview_problem(np.array([[[0, 0, 0], dapi]], np.uint8))[:60]
    'its tissue is almost black (mean brightness 30 of 255; the d'
    """
    stained = tissue_pixels(overview)
    if region is not None:
        stained &= region
    if not stained.any():
        return None
    luminance = brightness(overview)
    tissue = luminance[stained].mean()
    if tissue >= DARK_BRIGHTNESS:
        return None
    around = ~stained if region is None else region & ~stained
    background = (
        f", on a background of mean brightness {luminance[around].mean():.0f}" if around.any() else ""
    )
    return (
        f"its tissue is almost black (mean brightness {tissue:.0f} of 255; the darkest CryoNuSeg tile's tissue "
        f"has 89){background}: a fluorescence or dark-field scan, and the model reads H&E brightfield"
    )
