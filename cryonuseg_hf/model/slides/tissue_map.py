"""Where a slide's tissue is: a mask and an RGB overview at about ``TISSUE_MPP`` µm/px.

The overview is read from the coarsest level fine enough, in strips, each pixel the mean colour of its block; a
pixel is tissue by :func:`cryonuseg_hf.model.tissue.tissue_pixels` (the rule images are judged by too). Holes are
filled, specks under ``TISSUE_MIN_PIXELS`` dropped, and the mask grown by one overview pixel. Whether that tissue
is H&E at all is judged on the same overview (:func:`cryonuseg_hf.model.tissue.overview_problem`), inside the ROI
and over the whole slide: a fluorescence slide is refused whatever part of it is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cryonuseg_hf.model.slides.reader import Slide, level_pixels
from cryonuseg_hf.model.slides.roi import Roi, roi_mask
from cryonuseg_hf.model.tissue import TISSUE_MPP, block_mean, overview_problem, tissue_pixels

TISSUE_MAX_SIDE = 4096
"""Longest side of the tissue mask in pixels: larger slides get a coarser mask (memory stays bounded)."""
TISSUE_MIN_PIXELS = 16
"""Tissue pieces smaller than this many overview pixels (256 µm² at 4 µm/px) are dropped as specks."""


@dataclass(frozen=True)
class TissueMap:
    """The tissue mask and the overview it was found on.

    Attributes:
        mask: (h, w) bool, True on tissue.
        overview: (h, w, 3) uint8, the mean colour of each overview pixel.
        per_level0: overview pixels per level-0 pixel (x, y).
        mpp: µm per overview pixel (x, y).
        problem: why the tissue (inside the ROI, or of the whole slide) does not look like H&E brightfield, or None.
    """

    mask: np.ndarray
    overview: np.ndarray
    per_level0: tuple[float, float]
    mpp: tuple[float, float]
    problem: str | None = None

    @property
    def area_mm2(self) -> float:
        """Tissue area in mm²."""
        return float(self.mask.sum()) * self.mpp[0] * self.mpp[1] * 1e-6


def tissue_map(slide: Slide, roi: Roi | None = None, strip_bytes: int = 64 * 2**20) -> TissueMap:
    """Find the tissue at ``TISSUE_MPP`` (coarser where the mask would exceed ``TISSUE_MAX_SIDE``).

    The coarsest level fine enough is read in strips of about ``strip_bytes`` and averaged over blocks, so
    memory holds one strip and the mask, whatever the slide's size and pyramid.

    Args:
        slide: from :func:`~cryonuseg_hf.model.slides.reader.open_slide`.
        roi: (x, y, width, height) in level-0 pixels: tissue outside it is left out.
        strip_bytes: size of one read.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_objects

    width0, height0 = slide.dimensions
    target = max(TISSUE_MPP, max(width0 * slide.mpp[0], height0 * slide.mpp[1]) / TISSUE_MAX_SIDE)
    level_mpp = [slide.mpp[0] * width0 / w for w, _ in slide.reader.level_dimensions]
    fine_enough = [i for i, m in enumerate(level_mpp) if m <= target * 1.01]
    level = fine_enough[-1] if fine_enough else 0
    width, height = slide.reader.level_dimensions[level]
    k = max(1, math.floor(target * 1.01 / level_mpp[level]), -(-max(width, height) // TISSUE_MAX_SIDE))
    rows = k * max(1, strip_bytes // (k * width * 3))
    parts = []
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        parts.append(block_mean(level_pixels(slide, level, slice(start, stop), slice(0, width)), k))
    overview = np.concatenate(parts, axis=0)
    per_level0 = (width / width0 / k, height / height0 / k)
    mask = ndi.binary_fill_holes(tissue_pixels(overview))
    mask = remove_small_objects(mask, max_size=TISSUE_MIN_PIXELS - 1)
    mask = ndi.binary_dilation(mask, structure=np.ones((3, 3), bool))
    region = roi_mask(roi, mask.shape, per_level0) if roi is not None else None
    if region is not None:
        mask &= region
    mpp = (slide.mpp[0] / per_level0[0], slide.mpp[1] / per_level0[1])
    # a fluorescence slide is one whatever the ROI, which may hold none of its glowing "tissue"
    problem = overview_problem(overview, region) or overview_problem(overview)
    return TissueMap(mask, overview, per_level0, mpp, problem)
