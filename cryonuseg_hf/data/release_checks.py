"""Checks that a release's files read and belong together: what ``cryonuseg-hf check`` runs and ``build`` runs
first.

Every file :func:`cryonuseg_hf.data.build.build` reads is read with the same readers
(:mod:`cryonuseg_hf.data.readers`), and per tile the files are compared with each other: ROI set against label
mask, the other masks against the label mask, the label mask against the tile image, the slide sheet's count
against the ROI count, and the mark-ups of a tile against each other. A file of another tile fails these by a
wide margin; each tolerance says what the real release measures.
"""

from __future__ import annotations

import numpy as np

from cryonuseg_hf.core.folds import TILE_IDS
from cryonuseg_hf.data.readers import (
    read_nuclei,
    read_released_labels,
    read_released_map,
    read_slide_sheet,
    read_tile_image,
)
from cryonuseg_hf.data.release import RELEASED_VARIANTS, Release, ReleaseError
from cryonuseg_hf.data.roi_checks import own_label_fraction
from cryonuseg_hf.data.rois import Nucleus

LABEL_COLUMNS = ("label_masks_modify", "label_masks")
"""Released uint16 label images; stored as 16-bit PNG."""
RELEASED_COLUMNS = tuple(c for c in RELEASED_VARIANTS if c != "label_masks_modify")
"""Released variants stored under their own name; ``label_masks_modify`` is the ``instance_mask`` column."""

# Cross-file relations of a release, each with its tolerance and what it was measured as on the real release
# (../shared/datasets/cryonuseg, all 30 tiles x 3 mark-ups; `python benchmarks/robustness_report.py` re-measures
# them into results/robustness.md). A file of another tile fails each of them by a wide margin.
MIN_OWN_LABEL_FRACTION = 0.8
"""ROI pixels that carry their own label in ``label masks modify`` (:func:`cryonuseg_hf.data.roi_checks.own_label_fraction`):
real release min 0.924 (annotator2, Human_LymphNodes_01); the round-2 ROI set of Human_Pancreas_03 on the mask of
Human_AdrenalGland_02 (same ROI count): 0.0."""
MAX_NUCLEUS_CONTRAST = 0.8
"""Mean grey level inside the nuclei / outside (:func:`nucleus_contrast`): nuclei are dark in H&E. Real release max
0.712 (Human_LymphNodes_02); each tile with another tile's round-2 mask (870 pairs): min 0.865, median 0.998."""
MIN_MARKUP_DICE = 0.55
"""Foreground Dice between two mark-ups of the same tile: real release min 0.612; between the round-2 masks of
two different tiles (870 pairs): max 0.497."""
SAME_FOREGROUND = ("label_masks", "mask_binary", "distance_maps")
"""Released variants whose non-zero pixels are exactly those of ``label masks modify`` (all 90 pairs: 1.0)."""
INSIDE_FOREGROUND = ("mask_binary_without_border", "mask_binary_without_border_erode")
"""Released variants whose non-zero pixels lie inside those of ``label masks modify`` (all 90 pairs)."""


def nucleus_contrast(image: np.ndarray, labels: np.ndarray) -> float:
    """Mean grey level of an RGB tile inside the labelled nuclei divided by that outside (1.0 if either is empty).

    >>> image = np.full((2, 2, 3), 200, np.uint8); image[0, 0] = 50
    >>> nucleus_contrast(image, np.array([[1, 0], [0, 0]]))
    0.25
    """
    grey = image.astype(np.float64).mean(axis=2)
    inside = labels > 0
    if inside.all() or not inside.any():
        return 1.0
    outside_mean = grey[~inside].mean()
    return float(grey[inside].mean() / outside_mean) if outside_mean > 0 else 1.0


def foreground_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the non-zero pixels of two masks (1.0 when both are empty).

    >>> foreground_dice(np.array([1, 1, 0]), np.array([0, 2, 2]))
    0.5
    """
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def _tile_relations(
    tile: str,
    markup: str,
    files,
    nuclei: list[Nucleus],
    labels: np.ndarray,
    image: np.ndarray | None,
    variants: dict[str, np.ndarray],
    metadata: dict[str, dict] | None,
) -> list[str]:
    """Problems with how one tile's files of one mark-up relate to each other (empty when they belong together)."""
    problems = []
    roi_path, mask_path = files.rois[tile], files.variants["label_masks_modify"][tile]
    fix = "the files do not belong together: put back the right file for this tile"
    if int(labels.max()) > len(nuclei):
        problems.append(
            f"{mask_path}: label {int(labels.max())} but the ROI set {roi_path} holds only {len(nuclei)} ROIs; {fix}"
        )
    own = own_label_fraction(nuclei, labels)
    if own < MIN_OWN_LABEL_FRACTION:
        problems.append(
            f"{roi_path}: only {own:.1%} of the ROI pixels carry their own label in {mask_path} "
            f"(at least {MIN_OWN_LABEL_FRACTION:.0%} expected; the release has >= 92.4%); {fix}"
        )
    if image is not None:
        contrast = nucleus_contrast(image, labels)
        if contrast > MAX_NUCLEUS_CONTRAST:
            problems.append(
                f"{mask_path}: its nuclei are not darker than the rest of the tile image "
                f"(grey-level ratio {contrast:.3f}, at most {MAX_NUCLEUS_CONTRAST} expected; the release has <= 0.712): "
                f"mask and tile image do not belong together; put back the right file for this tile"
            )
    for column, array in variants.items():
        path = files.variants[column][tile]
        if column in SAME_FOREGROUND and not np.array_equal(array > 0, labels > 0):
            problems.append(f"{path}: its nuclei differ from those of {mask_path}; {fix}")
        if column in INSIDE_FOREGROUND and np.any((array > 0) & (labels == 0)):
            problems.append(f"{path}: it marks pixels outside the nuclei of {mask_path}; {fix}")
    if metadata is not None and tile in metadata:
        expected = metadata[tile].get(f"n_cells_{markup}")
        if expected is not None and expected != len(nuclei):
            problems.append(
                f"{roi_path}: holds {len(nuclei)} ROIs but the slide sheet counts {expected} nuclei for {tile} "
                f"({markup}); {fix} (or correct the sheet)"
            )
    return problems


def check_release(release: Release, markups: tuple[str, ...] | None = None) -> dict[str, int]:
    """Read every file :func:`cryonuseg_hf.data.build.build` reads, with the same readers, and check how the files relate to each other.

    Each tile image, ROI set, released mask and the slide sheet must decode and have the right size and type; and
    per tile and mark-up the ROI set must match ``label masks modify`` (:data:`MIN_OWN_LABEL_FRACTION`), the other
    masks must mark the same nuclei, the nuclei must be darker than the rest of the tile image
    (:data:`MAX_NUCLEUS_CONTRAST`), the sheet's nucleus count must equal the ROI count, and two mark-ups of the
    same tile must overlap (:data:`MIN_MARKUP_DICE`).

    Args:
        release: from :func:`cryonuseg_hf.data.release.open_release`.
        markups: the mark-ups to check (default: all in ``release``).

    Returns:
        ROIs per mark-up.

    Raises:
        ReleaseError: every problem found, each naming the file.
    """
    markups = tuple(release.markups) if markups is None else markups
    problems: list[str] = []

    def attempt(function, *args):
        try:
            return function(*args)
        except (ValueError, OSError) as error:  # RoiError and ReleaseError are ValueErrors
            problems.extend(error.problems if isinstance(error, ReleaseError) else [str(error)])
            return None

    images = {tile: attempt(read_tile_image, path) for tile, path in release.images.items()}
    metadata = attempt(read_slide_sheet, release)
    foregrounds: dict[str, dict[str, np.ndarray]] = {}
    counts = {}
    for markup in markups:
        try:
            require_variants(release, markup)
        except ReleaseError as error:
            problems.extend(error.problems)
            continue
        files = release.markups[markup]
        counts[markup] = 0
        for tile in TILE_IDS:
            nuclei = attempt(read_nuclei, files.rois[tile])
            labels = attempt(read_released_labels, files.variants["label_masks_modify"][tile])
            variants = {}
            for column in RELEASED_COLUMNS:
                path = files.variants[column][tile]
                if column in LABEL_COLUMNS:
                    array = attempt(read_released_labels, path)
                else:
                    released = attempt(read_released_map, path)
                    array = None if released is None else released.array
                if array is not None:
                    variants[column] = array
            if nuclei is None or labels is None:
                continue
            counts[markup] += len(nuclei)
            foregrounds.setdefault(tile, {})[markup] = labels
            problems.extend(
                _tile_relations(tile, markup, files, nuclei, labels, images[tile], variants, metadata)
            )
    for tile, by_markup in foregrounds.items():
        names = list(by_markup)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                dice = foreground_dice(by_markup[first], by_markup[second])
                if dice < MIN_MARKUP_DICE:
                    problems.append(
                        f"{release.markups[second].variants['label_masks_modify'][tile]}: overlaps the {first} mask "
                        f"of {tile} with Dice {dice:.3f} only (at least {MIN_MARKUP_DICE} expected; the release "
                        f"has >= 0.612): one of the two is another tile's; put back the right file"
                    )
    if problems:
        raise ReleaseError(release.root, problems)
    return counts


def require_variants(release: Release, markup: str) -> None:
    """Raise :class:`ReleaseError` when ``markup`` lacks one of the released mask folders."""
    files = release.markups[markup]
    missing = [RELEASED_VARIANTS[c] for c in RELEASED_VARIANTS if c not in files.variants]
    if missing:
        raise ReleaseError(
            release.root,
            [f"{files.folder}: missing released mask folder(s): {', '.join(repr(m) for m in missing)}"],
        )
