from __future__ import annotations

import zipfile

import pytest

from cryonuseg_hf.core import folds
from cryonuseg_hf.data.release import MARKUPS, ReleaseError, extract_zip, open_release


def test_fold_protocol():
    assert folds.ORGANS == tuple(sorted(folds.ORGANS))
    assert [folds.fold_of(f"Human_{o}_01") for o in folds.ORGANS] == list(range(10))
    assert folds.fold_of("Human_AdrenalGland_03") == 0 and folds.fold_of("Human_ThyroidGland_01") == 9
    for k in range(folds.N_FOLDS):
        held_out, train = folds.tiles_of_fold(k), folds.train_tiles(k)
        assert len(held_out) == 3 and len(train) == 27
        assert not set(held_out) & set(train)
        assert {folds.organ_of(t) for t in held_out} == {folds.ORGANS[k]}
    with pytest.raises(ValueError, match="Human_Lung_01"):
        folds.fold_of("Human_Lung_01")
    with pytest.raises(ValueError, match="fold must be"):
        folds.tiles_of_fold(10)


def test_real_release_layout(release):
    assert release.tile_ids == list(folds.TILE_IDS)
    assert set(release.markups) == set(MARKUPS)
    round2 = release.markups["annotator1_round2"]
    # Kaggle's twin nesting and the 'ThyreoidGland' zip spelling are both resolved.
    assert round2.folder.name == round2.folder.parent.name
    assert round2.rois["Human_ThyroidGland_01"].name == "Human_ThyreoidGland_01_RoiSet.zip"
    assert round2.rois["Human_Larynx_03"].name == "Human_Larynx_03RoiSet.zip"
    assert release.markups["annotator2"].rois["Human_Skin_02"].name == "Human_Skin_02.zip"
    assert all(len(files) == 30 for m in release.markups.values() for files in m.variants.values())


def _tiny_release(root, drop=None):
    """A release with the real layout and empty files: enough for the path logic."""
    from cryonuseg_hf.data.release import MARKUP_FOLDERS

    (root / "tissue images").mkdir(parents=True)
    for tile in folds.TILE_IDS:
        if tile != drop:
            (root / "tissue images" / f"{tile}.tif").touch()
    for name, folder in MARKUP_FOLDERS.items():
        base = root / folder / folder if name != "annotator1_round1" else root / folder
        (base / "Imagj_zips").mkdir(parents=True)
        for tile in folds.TILE_IDS:
            (base / "Imagj_zips" / f"{tile}_RoiSet.zip").touch()
    return root


def test_missing_tile_is_named(tmp_path):
    _tiny_release(tmp_path / "rel", drop="Human_Skin_02")
    with pytest.raises(ReleaseError, match="tissue images.*missing 1: Human_Skin_02"):
        open_release(tmp_path / "rel")


def test_missing_annotation_folder_is_named(tmp_path):
    import shutil

    root = _tiny_release(tmp_path / "rel")
    shutil.rmtree(root / "Annotator 2 (bioinformatician)")
    with pytest.raises(ReleaseError, match=r"missing annotation folder 'Annotator 2 \(bioinformatician\)'"):
        open_release(root)


def test_duplicate_tile_names(tmp_path):
    root = _tiny_release(tmp_path / "rel")
    (root / "tissue images" / "Human_Skin_02.tiff").touch()
    with pytest.raises(ReleaseError, match="duplicate tile name Human_Skin_02"):
        open_release(root)


def test_missing_source_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--source"):
        open_release(tmp_path / "nowhere")


def test_zip_release_and_escaping_members(tmp_path):
    root = _tiny_release(tmp_path / "rel")
    archive = tmp_path / "release.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(tmp_path))
    release = open_release(archive)
    assert len(release.images) == 30

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(ReleaseError, match="escape"):
        extract_zip(evil, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "outside.txt").exists()
    assert not any((tmp_path / "cache").glob("*/outside.txt"))
