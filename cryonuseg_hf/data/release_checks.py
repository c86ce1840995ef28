"""Checks that a release's files read and belong together: what ``cryonuseg-hf check`` runs, and what
``build`` runs on the files it has read before it writes anything.

Every file is read once (:func:`cryonuseg_hf.data.readers.read_release`), and per tile the files are compared
with each other: ROI set against label mask, the other masks against the label mask, the label mask against the
tile image, the slide sheet's count against the ROI count, and the mark-ups of a tile against each other. A file
of another tile fails these by a wide margin; each tolerance says what the real release measures.
"""

from __future__ import annotations

import numpy as np

from cryonuseg_hf.data.readers import ReleaseContents, TileContents, read_release
from cryonuseg_hf.data.release import Release, ReleaseError
from cryonuseg_hf.data.roi_checks import own_label_fraction

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


def check_release(release: Release, markups: tuple[str, ...] | None = None) -> dict[str, int]:
    """Read every file a build reads (:func:`cryonuseg_hf.data.readers.read_release`) and check them
    (:func:`check_contents`).

    Args:
        release: from :func:`cryonuseg_hf.data.release.open_release`.
        markups: the mark-ups to check (default: all in ``release``).

    Returns:
        ROIs per mark-up.

    Raises:
        ReleaseError: every problem found, each naming the file.
    """
    return check_contents(read_release(release, markups))


def check_contents(contents: ReleaseContents) -> dict[str, int]:
    """Check that every file of a release read, and how the files of each tile relate to each other
    (:func:`tile_problems`).

    Args:
        contents: from :func:`cryonuseg_hf.data.readers.read_release`.

    Returns:
        ROIs per mark-up.

    Raises:
        ReleaseError: every problem found, each naming the file.
    """
    problems = list(contents.problems)
    counts = dict.fromkeys(contents.markups, 0)
    for tile in contents.tiles.values():
        for markup in _checkable(tile):
            counts[markup] += len(tile.nuclei[markup])
        problems += tile_problems(contents.release, tile, contents.metadata)
    if problems:
        raise ReleaseError(contents.release.root, problems)
    return counts


def tile_problems(release: Release, tile: TileContents, metadata: dict[str, dict] | None) -> list[str]:
    """How the files of one tile relate to each other (empty when they belong together).

    Per mark-up the ROI set must match ``label masks modify`` (:data:`MIN_OWN_LABEL_FRACTION`), the other masks
    must mark the same nuclei, the nuclei must be darker than the rest of the tile image
    (:data:`MAX_NUCLEUS_CONTRAST`) and the slide sheet's nucleus count must equal the ROI count; and two mark-ups
    must overlap (:data:`MIN_MARKUP_DICE`). Files that did not read are left out (their problem is listed where
    they were read).
    """
    problems = []
    for markup in _checkable(tile):
        problems += _markup_problems(release, tile, markup, metadata)
    return problems + _markup_overlaps(release, tile)


def _checkable(tile: TileContents) -> list[str]:
    """The mark-ups of a tile whose ROI set and ``label masks modify`` both read."""
    return [m for m in tile.masks if m in tile.nuclei and "label_masks_modify" in tile.masks[m]]


def _markup_problems(
    release: Release, tile: TileContents, markup: str, metadata: dict[str, dict] | None
) -> list[str]:
    """How one tile's files of one mark-up relate to each other and to the tile image and the sheet."""
    files = release.markups[markup]
    nuclei, masks = tile.nuclei[markup], tile.masks[markup]
    labels = masks["label_masks_modify"].array
    roi_path, mask_path = files.rois[tile.tile], files.variants["label_masks_modify"][tile.tile]
    fix = "the files do not belong together: put back the right file for this tile"
    problems = []
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
    if tile.image is not None:
        contrast = nucleus_contrast(tile.image, labels)
        if contrast > MAX_NUCLEUS_CONTRAST:
            problems.append(
                f"{mask_path}: its nuclei are not darker than the rest of the tile image "
                f"(grey-level ratio {contrast:.3f}, at most {MAX_NUCLEUS_CONTRAST} expected; the release has <= 0.712): "
                f"mask and tile image do not belong together; put back the right file for this tile"
            )
    for column, mask in masks.items():
        path = files.variants[column][tile.tile]
        if column in SAME_FOREGROUND and not np.array_equal(mask.array > 0, labels > 0):
            problems.append(f"{path}: its nuclei differ from those of {mask_path}; {fix}")
        if column in INSIDE_FOREGROUND and np.any((mask.array > 0) & (labels == 0)):
            problems.append(f"{path}: it marks pixels outside the nuclei of {mask_path}; {fix}")
    expected = (metadata or {}).get(tile.tile, {}).get(f"n_cells_{markup}")
    if expected is not None and expected != len(nuclei):
        problems.append(
            f"{roi_path}: holds {len(nuclei)} ROIs but the slide sheet counts {expected} nuclei for {tile.tile} "
            f"({markup}); {fix} (or correct the sheet)"
        )
    return problems


def _markup_overlaps(release: Release, tile: TileContents) -> list[str]:
    """Every pair of mark-ups of a tile whose label masks overlap less than :data:`MIN_MARKUP_DICE`."""
    labels = {m: tile.masks[m]["label_masks_modify"].array for m in _checkable(tile)}
    names, problems = list(labels), []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            dice = foreground_dice(labels[first], labels[second])
            if dice < MIN_MARKUP_DICE:
                problems.append(
                    f"{release.markups[second].variants['label_masks_modify'][tile.tile]}: overlaps the "
                    f"{first} mask of {tile.tile} with Dice {dice:.3f} only (at least {MIN_MARKUP_DICE} expected; "
                    f"the release has >= 0.612): one of the two is another tile's; put back the right file"
                )
    return problems
