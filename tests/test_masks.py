"""Masks: poly2mask conventions, summed vs max labels, MATLAB disks and borders, the weight-map formula, and
agreement with the released files of the real release."""

from __future__ import annotations

import numpy as np
import pytest

from cryonuseg_hf.data.mask_variants import VARIANTS, mask_variants, nuclei_borders, unet_weight_map
from cryonuseg_hf.data.masks import instance_masks, polygon_mask
from cryonuseg_hf.data.morphology import disk_footprint
from cryonuseg_hf.data.readers import read_mask
from cryonuseg_hf.data.roi_checks import empty_nuclei, hidden_nuclei
from cryonuseg_hf.data.rois import Nucleus, read_roi_set


def _rect(x0, y0, x1, y1, name="r"):
    return Nucleus(name, np.float32([x0, x1, x1, x0]), np.float32([y0, y0, y1, y1]), "polygon")


def test_poly2mask_pixel_convention():
    # Integer vertices (an outline traced along pixel edges): exactly the enclosed pixels, as in ImageJ.
    expected = np.zeros((5, 5), bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(
        polygon_mask(np.float32([1, 3, 3, 1]), np.float32([1, 1, 3, 3]), (5, 5)), expected
    )
    # Sub-pixel vertices: MATLAB tests pixel [i, j] at ImageJ point (j + 1, i + 1), not at the centre
    # (j + 0.5, i + 0.5): x in 1.6..3.6 keeps columns 1 and 2 (ImageJ's centre rule would keep 2 and 3).
    mask = polygon_mask(np.float32([1.6, 3.6, 3.6, 1.6]), np.float32([1, 1, 3, 3]), (5, 5))
    np.testing.assert_array_equal(mask, expected)
    # Clipped at the tile border, never wrapped.
    mask = polygon_mask(np.float32([-3, 2, 2, -3]), np.float32([3, 3, 7, 7]), (6, 6))
    assert mask[3:6, 0:2].all() and mask.sum() == 6


def test_overlaps_summed_versus_max():
    nuclei = [_rect(0, 0, 3, 2, "a"), _rect(2, 0, 5, 2, "b"), _rect(1, 1, 4, 3, "c")]
    summed, modify = instance_masks(nuclei, (4, 6))
    assert summed.dtype == np.uint16 and modify.dtype == np.uint16
    np.testing.assert_array_equal(
        summed,
        [[1, 1, 3, 2, 2, 0], [1, 4, 6, 5, 2, 0], [0, 3, 3, 3, 0, 0], [0, 0, 0, 0, 0, 0]],
    )
    np.testing.assert_array_equal(
        modify,
        [[1, 1, 2, 2, 2, 0], [1, 3, 3, 3, 2, 0], [0, 3, 3, 3, 0, 0], [0, 0, 0, 0, 0, 0]],
    )


def test_hidden_and_empty_nuclei_are_named():
    nuclei = [_rect(2, 2, 4, 4, "small"), _rect(0, 0, 8, 8, "big"), _rect(3, 3, 3, 7, "flat")]
    _, modify = instance_masks(nuclei, (10, 10))
    assert hidden_nuclei(nuclei, modify) == ["small"]
    assert empty_nuclei(nuclei, (10, 10)) == ["flat"]


def test_matlab_disk_footprints():
    np.testing.assert_array_equal(disk_footprint(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk_footprint(2).shape == (5, 5) and disk_footprint(2).sum() == 13  # x^2 + y^2 <= 4
    # From radius 3 on, strel('disk', r) is MATLAB's periodic-line approximation, not a Euclidean disk:
    # radius 3 is a full 5x5 square, radius 10 spans 19x19.
    assert disk_footprint(3).all() and disk_footprint(3).shape == (5, 5)
    assert disk_footprint(10).shape == (19, 19)
    assert disk_footprint(4).sum() == 37


def test_border_widths_on_a_square():
    square = np.zeros((21, 21), np.uint16)
    square[5:16, 5:16] = 7
    borders = nuclei_borders(square, range(1, 6))
    assert all(b.dtype == np.uint8 and set(np.unique(b)) <= {0, 255} for b in borders.values())
    # An 11x11 square loses a ring as wide as the footprint's reach along the axes: 1, 2, 2 (the 5x5 square of
    # disk 3), 3, 4 pixels.
    assert {k: int((b > 0).sum()) for k, b in borders.items()} == {1: 40, 2: 72, 3: 72, 4: 96, 5: 112}
    ring = borders[1] > 0
    assert ring[5, 5:16].all() and not ring[6:15, 6:15].any()
    # The same from the nuclei themselves.
    from_nuclei = nuclei_borders([_rect(5, 5, 16, 16)], range(1, 6), shape=(21, 21))
    assert all(np.array_equal(from_nuclei[k], borders[k]) for k in borders)


def test_border_at_the_image_edge():
    # imerode pads with the maximum: the image edge is not a nucleus border.
    labels = np.zeros((12, 12), np.uint8)
    labels[0:6, 0:6] = 1
    border = nuclei_borders(labels, [2])[2] > 0
    assert not border[0, 0:3].any() and not border[0:3, 0].any()
    assert border[4:6, 0:6].all() and border[0:6, 4:6].all() and border.sum() == 20


def test_weight_map_formula_by_hand():
    gt = np.zeros((1, 7))
    gt[0, [0, 6]] = 255
    weight = unet_weight_map(gt)
    # Class weights 1/count normalised by the max: background (5 px) 2/5, cells (2 px) 1. Every background
    # pixel lies between the two cells, so d1 + d2 = 6 and the border term is 10 * exp(-36 / 50).
    expected = np.full(7, 2 / 5 + 10 * np.exp(-36 / 50))
    expected[[0, 6]] = 1.0
    np.testing.assert_allclose(weight[0], expected)
    # A single cell has no border term.
    gt1 = np.zeros((3, 3))
    gt1[1, 1] = 255
    np.testing.assert_allclose(unet_weight_map(gt1), np.where(gt1 > 0, 1.0, 1 / 8))


def test_mask_variants_keys_and_types():
    variants = mask_variants([_rect(10, 10, 20, 18, "a"), _rect(18, 12, 30, 25, "b")], (40, 40))
    assert tuple(variants) == VARIANTS
    assert variants["label_masks"].dtype == np.uint16 and variants["label_masks_modify"].dtype == np.uint16
    assert all(variants[k].dtype == np.uint8 for k in VARIANTS[2:])
    assert variants["distance_maps"].max() == 255 and variants["weighted_maps"].max() == 255
    # The two overlapping nuclei are separated in the border-removed mask.
    without = variants["mask_binary_without_border"] > 0
    assert without.sum() < (variants["mask_binary"] > 0).sum()


@pytest.mark.parametrize(
    ("markup", "tile"),
    [
        ("annotator1_round2", "Human_Larynx_01"),
        ("annotator2", "Human_LymphNodes_03"),
        ("annotator2", "Human_Pancreas_02"),
    ],
)
def test_real_release_variants_are_reproduced(release, markup, tile):
    """Measured over all 90 pairs (results/mask_agreement.md): every released variant is bit-identical.

    Larynx_01 round 2 needs bwdist's single precision (distance-map ties), LymphNodes_03 has a ROI crossing the
    tile edge, Pancreas_02 (Annotator 2) needs the generator's -2 pixel in the weight maps.
    """
    from cryonuseg_hf.data.mask_agreement import compare_variant, matched_iou

    files = release.markups[markup]
    variants = mask_variants(read_roi_set(files.rois[tile]))
    released = read_mask(files.variants["label_masks_modify"][tile])
    assert released.dtype == np.uint16
    assert matched_iou(released, variants["label_masks_modify"]) == 1.0
    for name, by_tile in files.variants.items():
        row = compare_variant(variants[name], read_mask(by_tile[tile]), name)
        assert row["n_differing_pixels"] == 0, (name, row)
