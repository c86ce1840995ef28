"""Training consumes the project's ``datasets`` build: the raw release goes through the ``CryoNuSeg`` builder, a
folder written by ``cryonuseg-hf build`` is read with ``load_dataset``, and both give exactly the released pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cryonuseg_hf.core.folds import TILE_IDS
from cryonuseg_hf.training.data import load_tiles, pack_tiles


@pytest.fixture(scope="module")
def from_release(release_path):
    return load_tiles(release_path, ("annotator1_round2", "annotator2"))


def test_default_is_the_datasets_build_of_the_raw_release(release, from_release):
    assert from_release["tile_ids"] == list(TILE_IDS)
    for i in (0, 13, 29):  # the released TIFFs, pixel for pixel
        tile = TILE_IDS[i]
        assert np.array_equal(from_release["images"][i], tifffile.imread(release.images[tile]))
        for markup in ("annotator1_round2", "annotator2"):
            released = tifffile.imread(release.markups[markup].variants["label_masks_modify"][tile])
            assert np.array_equal(from_release["masks"][markup][i], released)
            assert from_release["masks"][markup].dtype == np.uint16


def test_a_published_build_and_a_pack_give_the_same_arrays(built_dataset, from_release, tmp_path):
    built = load_tiles(built_dataset, ("annotator1_round2", "annotator2"))
    packed = load_tiles(pack_tiles(from_release, tmp_path / "tiles.npz"), ("annotator1_round2", "annotator2"))
    for other in (built, packed):
        assert np.array_equal(other["images"], from_release["images"])
        for markup in ("annotator1_round2", "annotator2"):
            assert np.array_equal(other["masks"][markup], from_release["masks"][markup])


def test_a_build_without_the_markup_is_named(built_dataset, tmp_path):
    import shutil

    partial = tmp_path / "cryonuseg"
    shutil.copytree(built_dataset, partial)
    shutil.rmtree(partial / "annotator2")
    with pytest.raises((ValueError, FileNotFoundError), match="annotator2"):
        load_tiles(partial, ("annotator2",))


def test_a_build_whose_files_hold_another_markup_is_refused(built_dataset, tmp_path):
    """Training on a build whose annotator2 files are annotator1_round2's would learn the wrong targets: refused
    before any image is decoded, naming the file and both mark-ups."""
    import shutil

    swapped = tmp_path / "cryonuseg"
    shutil.copytree(built_dataset, swapped)
    shutil.rmtree(swapped / "annotator2")
    shutil.copytree(built_dataset / "annotator1_round2", swapped / "annotator2")
    with pytest.raises(ValueError, match=r"annotator2.*annotator1_round2|annotator1_round2.*annotator2"):
        load_tiles(swapped, ("annotator2",))
