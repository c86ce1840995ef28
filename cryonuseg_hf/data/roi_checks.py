"""What rasterising a tile's ROIs reveals about them: ROIs without pixels, ROIs hidden by later ones, ROIs
reaching outside the tile, and how well a ROI set and an instance mask belong together.

Nothing here removes or changes a ROI; the findings are reported (:func:`check_nuclei`) or measured
(:func:`own_label_fraction`, used by :mod:`cryonuseg_hf.data.release_checks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cryonuseg_hf.core.tiles import TILE_SHAPE
from cryonuseg_hf.data.masks import polygon_pixels
from cryonuseg_hf.data.rois import Nucleus, RoiFinding, polygon_area


def empty_nuclei(nuclei: Sequence[Nucleus], shape: tuple[int, int] = TILE_SHAPE) -> list[str]:
    """Names of nuclei whose polygon covers no pixel centre (degenerate, or outside the tile)."""
    poly, _ = polygon_pixels(nuclei, shape)
    present = np.zeros(len(nuclei), bool)
    present[poly] = True
    return [n.name for n, p in zip(nuclei, present, strict=True) if not p]


def check_nuclei(
    nuclei: Sequence[Nucleus], shape: tuple[int, int] = TILE_SHAPE, source: str = ""
) -> list[RoiFinding]:
    """Report degenerate ROIs, ROIs that enclose no pixel, and ROIs reaching outside the tile; nothing is
    removed or changed.

    The tile covers ``0 <= x <= width`` and ``0 <= y <= height`` in ImageJ coordinates. What the masks do with
    each reported ROI is stated in the finding's ``action``.

    Args:
        nuclei: as returned by :func:`~cryonuseg_hf.data.rois.read_roi_set`.
        shape: tile (height, width).
        source: the file the nuclei came from, for the report.

    Returns:
        One :class:`~cryonuseg_hf.data.rois.RoiFinding` per problem, in nucleus order.
    """
    height, width = shape
    no_pixel = set(empty_nuclei(nuclei, shape))
    findings = []
    for nucleus in nuclei:
        distinct = len({(float(a), float(b)) for a, b in zip(nucleus.x, nucleus.y, strict=True)})
        area = polygon_area(nucleus)
        if distinct < 3 or area == 0.0:
            findings.append(
                RoiFinding(
                    source,
                    nucleus.name,
                    f"degenerate ({distinct} distinct vertices, area {area:g} px^2)",
                    "kept in the ROI list so counts stay exact; it encloses no pixel centre, so it has no label",
                )
            )
            continue
        x_min, x_max = float(nucleus.x.min()), float(nucleus.x.max())
        y_min, y_max = float(nucleus.y.min()), float(nucleus.y.max())
        if x_max <= 0 or y_max <= 0 or x_min >= width or y_min >= height:
            findings.append(
                RoiFinding(
                    source,
                    nucleus.name,
                    f"entirely outside the {height}x{width} tile (x {x_min:.1f}..{x_max:.1f}, "
                    f"y {y_min:.1f}..{y_max:.1f})",
                    "kept in the ROI list; it covers no pixel of the tile, so it has no label",
                )
            )
        elif nucleus.name in no_pixel:
            findings.append(
                RoiFinding(
                    source,
                    nucleus.name,
                    f"encloses no pixel centre (area {area:.3g} px^2)",
                    "kept in the ROI list so counts stay exact; it has no label in the masks",
                )
            )
        elif x_min < 0 or y_min < 0 or x_max > width or y_max > height:
            findings.append(
                RoiFinding(
                    source,
                    nucleus.name,
                    f"reaches outside the {height}x{width} tile (x {x_min:.2f}..{x_max:.2f}, "
                    f"y {y_min:.2f}..{y_max:.2f})",
                    "kept; its mask is clipped to the tile, as MATLAB's poly2mask does",
                )
            )
    return findings


def hidden_nuclei(nuclei: Sequence[Nucleus], label_masks_modify: np.ndarray) -> list[str]:
    """Names of nuclei with pixels of their own but no pixel left in ``label_masks_modify``.

    These are nuclei entirely covered by later ROIs: they are counted in the ROI set and in ``label_masks``,
    but have no label in the clean instance map.
    """
    drawn = set(
        np.flatnonzero(
            np.bincount(polygon_pixels(nuclei, label_masks_modify.shape)[0], minlength=len(nuclei))
        )
    )
    present = set(np.unique(label_masks_modify).tolist())
    return [nuclei[i].name for i in sorted(drawn) if i + 1 not in present]


def own_label_fraction(nuclei: Sequence[Nucleus], labels: np.ndarray) -> float:
    """The fraction of the ROIs' pixels that carry their own label (``index + 1``) in an instance map.

    A ROI set and the ``label masks modify`` made from it agree almost everywhere (only overlaps go to the later
    nucleus); a ROI set of another tile lands on its own label almost nowhere. 1.0 for a set without pixels.

    >>> from cryonuseg_hf.data.rois import Nucleus
    >>> square = Nucleus("a", np.float32([0, 2, 2, 0]), np.float32([0, 0, 2, 2]), "polygon")
    >>> own_label_fraction([square], np.ones((3, 3), np.uint16)), own_label_fraction([square], np.zeros((3, 3)))
    (1.0, 0.0)
    """
    poly, flat = polygon_pixels(nuclei, labels.shape)
    if flat.size == 0:
        return 1.0
    return float(np.mean(labels.ravel()[flat] == poly + 1))
