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
- :func:`channel_order_problem`: why an image looks like H&E with its red and blue channels swapped (BGR, as
  OpenCV reads images), or None; part of :func:`tissue_problem`, and
  :func:`cryonuseg_hf.model.predict.predict_instances` refuses such arrays.

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
REVERSED_SCORE = -0.1
"""An image whose :func:`blue_with_darkness` is below this (and whose darkest tenth is redder than the rest) looks
channel-reversed. The 30 CryoNuSeg tiles score 0.246 to 0.815 (their reversed copies the negatives)."""
JUDGED_PIXELS = 2**22
"""Images are judged on an even subsample of at most about this many pixels, so the judgement costs the same
on a tile and on a 16k x 16k image."""


def brightness(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float mean of R, G and B, 0..255."""
    return np.asarray(rgb).sum(axis=-1, dtype=np.int16) / 3.0


def colour(rgb: np.ndarray) -> np.ndarray:
    """(H, W) int16 ``max - min`` of R, G and B: 0 for white, grey and black, high for stained tissue."""
    rgb = np.asarray(rgb)
    return rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)


def _subsample(rgb: np.ndarray) -> np.ndarray:
    """Every k-th row and column of ``rgb``, k chosen so that at most about ``JUDGED_PIXELS`` remain."""
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / JUDGED_PIXELS))))
    return rgb[::step, ::step]


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

    Large images are judged on an even subsample (``JUDGED_PIXELS``). Last, :func:`channel_order_problem`.
    """
    image = _subsample(np.asarray(image))
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
    return channel_order_problem(image)


def _stained_density(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optical density (summed over R, G, B) of the stained pixels, and the red-minus-blue share of it."""
    pixels = rgb[(brightness(rgb) < GLASS_BRIGHTNESS) & (colour(rgb) > STAINED_COLOUR)].astype(np.float32)
    density = -np.log((pixels + 1.0) / 256.0)
    total = density.sum(axis=-1)
    return total, (density[:, 0] - density[:, 2]) / np.maximum(total, 1e-3)


def blue_with_darkness(rgb: np.ndarray) -> tuple[float, float]:
    """How much an image's stain turns blue where it is dark: the H&E sign that tells RGB from BGR.

    Haematoxylin (nuclei, the darkest stain) absorbs red more than blue, eosin (cytoplasm, lighter) about
    equally: over an H&E image's stained pixels, the more light a pixel absorbs, the larger the red share of
    what it absorbs. Swapping red and blue negates both figures returned, so a reversed image scores the
    negative of the original.

    Returns:
        (the correlation of a stained pixel's optical density with the red-minus-blue share of it, the mean
        share of the darkest tenth minus the mean of all); (0, 0) for fewer than 100 stained pixels.
        On the 30 CryoNuSeg tiles (checked by ``tests/robustness/test_bounds_predict.py``) the correlation is
        0.246 (Human_Pleura_01) to 0.815 and the shift 0.021 to 0.119; of 202 H&E tiles of MoNuSeg and NuInsSeg
        (human and mouse) 2 fall below ``REVERSED_SCORE`` with a negative shift (mouse subscapular muscle, few
        nuclei).

    >>> rgb = np.array([[[150, 80, 200], [200, 160, 210]] * 60], np.uint8)  # dark purple nuclei, light pink
    >>> [round(v, 2) for v in blue_with_darkness(rgb)], [round(v, 2) for v in blue_with_darkness(rgb[..., ::-1])]
    ([1.0, 0.05], [-1.0, -0.05])
    """
    total, red_share = _stained_density(_subsample(np.asarray(rgb)))
    if total.size < 100 or total.std() == 0 or red_share.std() == 0:
        return 0.0, 0.0
    darkest = total >= np.percentile(total, 90)
    shift = float(red_share[darkest].mean() - red_share.mean())
    return float(np.corrcoef(total, red_share)[0, 1]), shift


def channel_order_problem(rgb: np.ndarray) -> str | None:
    """Why an image looks like H&E with red and blue swapped (BGR), or None (see :func:`blue_with_darkness`).

    The model reads haematoxylin as purple: on a reversed image it finds few nuclei or none, and says nothing.
    """
    score, shift = blue_with_darkness(rgb)
    if score >= REVERSED_SCORE or shift >= 0:
        return None
    return (
        f"its channels look reversed (BGR, as OpenCV's imread gives): its darkest stain is red, where "
        f"haematoxylin-stained nuclei are blue (score {score:.2f}; each CryoNuSeg tile scores 0.25 or more, its "
        "reversed copy -0.25 or less): save or pass it as RGB (its channels reversed: image[..., ::-1])"
    )


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
