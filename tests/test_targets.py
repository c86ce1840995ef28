"""Instance labels -> class maps: hand-computed golden arrays plus invariants on the real masks."""

from __future__ import annotations

import numpy as np
import pytest

from cryonuseg_hf.data.targets import (
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    classes_to_probabilities,
    instances_to_classes,
    label_edges,
)


def test_golden_touching_squares():
    labels = np.zeros((7, 9), dtype=np.uint16)
    labels[1:6, 1:4] = 3
    labels[1:6, 4:8] = 7
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 2, 2, 2, 2, 2, 2, 2, 0],
            [0, 2, 1, 2, 2, 1, 1, 2, 0],
            [0, 2, 1, 2, 2, 1, 1, 2, 0],
            [0, 2, 1, 2, 2, 1, 1, 2, 0],
            [0, 2, 2, 2, 2, 2, 2, 2, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(instances_to_classes(labels), expected)


def test_wider_boundary_and_image_border():
    labels = np.zeros((9, 9), dtype=np.int32)
    labels[:, :5] = 1  # cut by the left image border
    classes = instances_to_classes(labels, boundary_width=2)
    # two-pixel ring towards the background, none along the image border
    np.testing.assert_array_equal(classes[4], [1, 1, 1, 2, 2, 0, 0, 0, 0])
    assert (classes[:, 0] == INTERIOR).all()


def test_empty_and_bad_input():
    assert (instances_to_classes(np.zeros((4, 4), dtype=np.uint16)) == BACKGROUND).all()
    with pytest.raises(ValueError, match="integer instance label"):
        instances_to_classes(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="boundary_width"):
        instances_to_classes(np.zeros((4, 4), dtype=np.uint16), boundary_width=0)
    with pytest.raises(ValueError, match=">= 0"):
        instances_to_classes(-np.ones((4, 4), dtype=np.int32))


def test_one_hot_probabilities():
    classes = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    probabilities = classes_to_probabilities(classes)
    assert probabilities.shape == (3, 2, 2) and probabilities.dtype == np.float32
    np.testing.assert_array_equal(probabilities.argmax(0), classes)
    np.testing.assert_array_equal(probabilities.sum(0), 1)


def test_real_masks_invariants(release):
    import tifffile

    path = release.markups["annotator1_round2"].variants["label_masks_modify"]["Human_Larynx_01"]
    labels = tifffile.imread(path)
    classes = instances_to_classes(labels)
    np.testing.assert_array_equal(classes > 0, labels > 0)
    # no interior pixel of one nucleus touches another nucleus or the background (4-neighbours)
    interior = classes == INTERIOR
    assert not (interior & label_edges(labels)).any()
    # every nucleus has a boundary ring
    with_ring = np.unique(labels[classes == BOUNDARY])
    np.testing.assert_array_equal(with_ring, np.unique(labels[labels > 0]))


def test_contact_zones_lie_between_nuclei_only():
    from cryonuseg_hf.data.targets import contact_zones

    labels = np.zeros((20, 30), dtype=np.uint16)
    labels[5:15, 3:10] = 1
    labels[5:15, 10:17] = 2  # touches 1 along column 9/10
    labels[5:15, 23:28] = 3  # alone: 6 px from 2
    zones = contact_zones(labels, radius=3)
    cols = np.flatnonzero(zones.any(axis=0))
    assert cols.min() >= 7 and cols.max() <= 12  # a band of 3 px either side of the contact line
    assert zones[10, 9] and zones[10, 10]
    assert not zones[:, 20:].any()  # gap wider than the radius: no contact with nucleus 3
    assert not contact_zones(labels == 1, radius=3).any()  # a single nucleus has no contact
    with pytest.raises(ValueError, match="radius"):
        contact_zones(labels, radius=0)


def test_centre_class_marks_the_middle_of_each_nucleus():
    from cryonuseg_hf.data.targets import CENTRE, class_names, nucleus_centres

    labels = np.zeros((20, 40), dtype=np.uint16)
    labels[2:17, 2:17] = 1  # a 15x15 square
    labels[2:17, 17:24] = 2  # a 7 px wide one touching it
    labels[18, 30] = 3  # one pixel: all outline, no centre
    centres = nucleus_centres(labels, 0.5)
    assert centres[9, 9] and not centres[3, 3]  # the middle, not the rim
    assert set(np.unique(labels[centres])) == {1, 2}  # every nucleus with an inside has a centre ...
    assert not centres[18, 30]  # ... a one-pixel nucleus has none
    # a larger fraction keeps a smaller centre inside the larger one's
    assert (nucleus_centres(labels, 0.8) <= centres).all() and nucleus_centres(
        labels, 0.8
    ).sum() < centres.sum()
    classes = instances_to_classes(labels, boundary_width=2, centre_fraction=0.5)
    np.testing.assert_array_equal(classes > 0, labels > 0)
    assert ((classes == CENTRE) == (centres & (instances_to_classes(labels, 2) == INTERIOR))).all()
    np.testing.assert_array_equal(instances_to_classes(labels, 2, 0.0), instances_to_classes(labels, 2))
    assert class_names(0.5)[CENTRE] == "nucleus_centre" and len(class_names(0.0)) == 3
    with pytest.raises(ValueError, match="centre fraction"):
        nucleus_centres(labels, 0.0)
