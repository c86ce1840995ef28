"""Instance label images -> the semantic class maps a stock SegFormer learns.

A semantic segmentation model cannot output instance ids, so each nucleus is drawn as an *interior* surrounded by
a *boundary* ring. Touching nuclei are then separated by two rings of boundary pixels, the interiors become the
watershed markers of :mod:`cryonuseg_hf.model.postprocess`, and the rings are flooded back into the nuclei.

Classes (the ``id2label`` of the checkpoint):

- 0 ``background``;
- 1 ``nucleus_interior``: nucleus pixels farther than ``boundary_width`` pixels from any other label;
- 2 ``nucleus_boundary``: nucleus pixels within ``boundary_width`` pixels (4-neighbour steps) of another label
  or of the background (the image border is not an edge: a cut nucleus keeps its interior there);
- 3 ``nucleus_centre``, only with ``centre_fraction`` > 0: interior pixels at least that fraction of their
  nucleus's deepest distance from its outline (:func:`nucleus_centres`). Two touching nuclei whose interiors the
  model draws as one blob still have two centres, which then seed the watershed.

>>> import numpy as np
>>> labels = np.zeros((5, 7), dtype=np.uint16)
>>> labels[:, 0:3] = 1; labels[:, 3:6] = 2
>>> instances_to_classes(labels)[2]
array([1, 1, 2, 2, 1, 2, 0], dtype=uint8)
>>> instances_to_classes(np.zeros((2, 2), dtype=np.uint16)).max()
np.uint8(0)
"""

from __future__ import annotations

import numpy as np

BACKGROUND, INTERIOR, BOUNDARY, CENTRE = 0, 1, 2, 3
CLASS_NAMES: tuple[str, ...] = ("background", "nucleus_interior", "nucleus_boundary")
CENTRE_CLASS_NAMES: tuple[str, ...] = (*CLASS_NAMES, "nucleus_centre")
IGNORE_INDEX = 255
"""Label value the loss skips (kept free: every pixel of a CryoNuSeg tile has a class)."""


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(
            f"expected an (H, W) integer instance label image, got shape {labels.shape} {labels.dtype}"
        )
    if labels.dtype != bool and labels.size and labels.min() < 0:
        raise ValueError(f"instance labels must be >= 0 (0 = background), got minimum {labels.min()}")
    return labels.astype(np.int64)


def label_edges(labels: np.ndarray) -> np.ndarray:
    """Nucleus pixels with a 4-neighbour of another label (the background or the image border excluded).

    The image border does not count as an edge: a nucleus cut by the tile border keeps its interior there.
    """
    labels = _check_labels(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    differs_v = labels[1:, :] != labels[:-1, :]
    differs_h = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= differs_v
    edge[:-1, :] |= differs_v
    edge[:, 1:] |= differs_h
    edge[:, :-1] |= differs_h
    return edge & (labels > 0)


def class_names(centre_fraction: float = 0.0) -> tuple[str, ...]:
    """The classes a model learns: :data:`CLASS_NAMES`, with ``nucleus_centre`` when ``centre_fraction`` > 0."""
    return CENTRE_CLASS_NAMES if centre_fraction > 0 else CLASS_NAMES


def nucleus_centres(labels: np.ndarray, fraction: float) -> np.ndarray:
    """(H, W) bool: the pixels of each nucleus at least ``fraction`` of its deepest distance from its outline.

    The distance is Euclidean, to the nearest pixel of :func:`label_edges` (the nucleus's own outline, where it
    meets the background or another nucleus); a nucleus thin enough to be all outline has no centre.

    >>> labels = np.zeros((9, 16), dtype=np.uint16)
    >>> labels[1:8, 1:8] = 1; labels[1:8, 8:15] = 2  # two touching 7x7 squares
    >>> nucleus_centres(labels, 0.5)[4].astype(int)
    array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    """
    from scipy import ndimage as ndi

    if not 0 < fraction <= 1:
        raise ValueError(f"centre fraction must be in (0, 1], got {fraction}")
    labels = _check_labels(labels)
    inside = (labels > 0) & ~label_edges(labels)
    depth = ndi.distance_transform_edt(inside)
    deepest = np.zeros(int(labels.max()) + 1)
    np.maximum.at(deepest, labels[inside], depth[inside])
    return inside & (depth >= fraction * deepest[labels])


def instances_to_classes(
    labels: np.ndarray, boundary_width: int = 1, centre_fraction: float = 0.0
) -> np.ndarray:
    """The (H, W) uint8 class map (0 background, 1 interior, 2 boundary, 3 centre) of an instance label image.

    Args:
        labels: (H, W) integer instance labels, 0 = background.
        boundary_width: ring width in pixels; each further pixel is one 4-neighbour step inside the nucleus.
        centre_fraction: > 0 marks the :func:`nucleus_centres` of that fraction as class 3, where they lie in
            the interior; 0 (default) draws the three classes only.

    Returns:
        uint8 class map of the same shape.
    """
    if boundary_width < 1:
        raise ValueError(f"boundary_width must be >= 1, got {boundary_width}")
    labels = _check_labels(labels)
    nucleus = labels > 0
    boundary = label_edges(labels)
    for _ in range(boundary_width - 1):
        grown = boundary.copy()
        grown[1:, :] |= boundary[:-1, :] & (labels[1:, :] == labels[:-1, :])
        grown[:-1, :] |= boundary[1:, :] & (labels[:-1, :] == labels[1:, :])
        grown[:, 1:] |= boundary[:, :-1] & (labels[:, 1:] == labels[:, :-1])
        grown[:, :-1] |= boundary[:, 1:] & (labels[:, :-1] == labels[:, 1:])
        boundary = grown & nucleus
    classes = np.zeros(labels.shape, dtype=np.uint8)
    classes[nucleus] = INTERIOR
    classes[boundary] = BOUNDARY
    if centre_fraction > 0:
        classes[nucleus_centres(labels, centre_fraction) & (classes == INTERIOR)] = CENTRE
    return classes


def contact_zones(labels: np.ndarray, radius: int = 3) -> np.ndarray:
    """(H, W) bool: pixels with two or more different nuclei within ``radius`` pixels (a disk), where touching
    nuclei must be told apart. Training weighs them more (``--contact-weight``).

    >>> labels = np.zeros((3, 7), dtype=np.uint16)
    >>> labels[:, 1:3] = 1; labels[:, 4:6] = 2
    >>> contact_zones(labels, radius=2)[1].astype(int)
    array([0, 0, 1, 1, 1, 0, 0])
    """
    from scipy import ndimage as ndi

    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    labels = _check_labels(labels)
    rows, cols = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = rows**2 + cols**2 <= radius**2
    above = int(labels.max()) + 1  # stands for the background in the minimum, which looks at nuclei only
    highest = ndi.maximum_filter(labels, footprint=disk)
    lowest = ndi.minimum_filter(np.where(labels > 0, labels, above), footprint=disk)
    return (lowest < above) & (highest != lowest)


def classes_to_probabilities(classes: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """One-hot (C, H, W) float32 probabilities of a class map: the ideal output of a perfect model."""
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.size and classes.max() >= n_classes:
        raise ValueError(f"expected an (H, W) class map with values < {n_classes}, got {classes.shape}")
    return (np.arange(n_classes)[:, None, None] == classes[None]).astype(np.float32)
