"""Robustness of `check`, `build`, `agreement` and `mask-report`: releases damaged in one file each.

Two damaged copies of the real release (symlink mirrors, see helpers.py) each carry several independent kinds of
damage in different tiles; `check` runs once per copy and must list every one of them, naming the file and saying
it does not belong or cannot be read; `build` must refuse the same copy with the same list before writing anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robustness.helpers import (
    assert_user_error,
    mirror_release,
    replace_file,
    run_cli,
    swap_files,
    tiff_bytes,
    tree_state,
    zip_bytes,
)

R1, R2, A2 = "annotator1_round1", "annotator1_round2", "annotator2"


def _problems(text: str) -> set[str]:
    return {line[4:] for line in text.splitlines() if line.startswith("  - ")}


def _mirrored(release, root: Path, path: Path) -> Path:
    return root / Path(path).relative_to(release.root)


@pytest.fixture(scope="module")
def damaged_a(release, tmp_path_factory):
    """Copy A: eleven kinds of damage, each in its own tile or mark-up."""
    import openpyxl

    root = mirror_release(release.root, tmp_path_factory.mktemp("a") / "release")

    def mirrored(path):
        return _mirrored(release, root, path)

    rois = {m: {t: mirrored(p) for t, p in f.rois.items()} for m, f in release.markups.items()}
    variants = {
        m: {c: {t: mirrored(p) for t, p in by_tile.items()} for c, by_tile in f.variants.items()}
        for m, f in release.markups.items()
    }
    images = {t: mirrored(p) for t, p in release.images.items()}
    files = {
        "swapped_rois": (rois[R2]["Human_AdrenalGland_02"], rois[R2]["Human_Pancreas_03"]),
        "empty_roi_zip": rois[R1]["Human_Larynx_02"],
        "zip_without_roi": rois[R1]["Human_Larynx_03"],
        "garbage_roi": rois[R1]["Human_LymphNodes_01"],
        "truncated_label_mask": variants[A2]["label_masks_modify"]["Human_Mediastinum_01"],
        "empty_mask_png": variants[R1]["mask_binary"]["Human_Mediastinum_02"],
        "truncated_tile": images["Human_Pleura_01"],
        "swapped_tiles": (images["Human_Skin_01"], images["Human_Skin_02"]),
        "variant_of_other_tile": (
            variants[R2]["mask_binary"]["Human_Testes_01"],
            variants[R2]["mask_binary"]["Human_Testes_02"],
        ),
        "mask_and_rois_of_other_tile": (
            variants[A2]["label_masks_modify"]["Human_Thymus_01"],
            rois[A2]["Human_Thymus_01"],
        ),
        "sheet_count": root / "metadata" / "Selected_WSIs.xlsx",
    }
    swap_files(*files["swapped_rois"])
    replace_file(files["empty_roi_zip"], zip_bytes({}))
    replace_file(files["zip_without_roi"], zip_bytes({"readme.txt": b"ROIs are elsewhere"}))
    replace_file(files["garbage_roi"], zip_bytes({"0001-0001.roi": b"this is not an ImageJ ROI" * 4}))
    data = files["truncated_label_mask"].read_bytes()
    replace_file(files["truncated_label_mask"], data[: len(data) // 3])
    replace_file(files["empty_mask_png"], b"")
    data = files["truncated_tile"].read_bytes()
    replace_file(files["truncated_tile"], data[:1000])
    swap_files(*files["swapped_tiles"])
    swap_files(*files["variant_of_other_tile"])
    # the annotator2 mask and ROI set of Human_Thymus_02 in place of Human_Thymus_01's: they agree with
    # each other, but not with the tile image nor with the other two mark-ups of Human_Thymus_01
    for path in files["mask_and_rois_of_other_tile"]:
        other = Path(str(path).replace("Human_Thymus_01", "Human_Thymus_02"))
        path.unlink()
        path.symlink_to(other.resolve())
    book = openpyxl.load_workbook(release.metadata_xlsx)
    sheet = book["Current Candidates"]
    header = [" ".join(str(c.value).split()) if c.value else None for c in sheet[1]]
    column = header.index("Nr Cells (bioinformatician)") + 1
    name_column = header.index("File Name") + 1
    row = next(
        r
        for r in range(2, sheet.max_row + 1)
        if str(sheet.cell(r, name_column).value).strip() == "Human_ThyroidGland_01"
    )
    sheet.cell(row, column).value = int(sheet.cell(row, column).value) + 5
    files["sheet_count"].unlink()
    book.save(files["sheet_count"])
    check = run_cli("check", "--source", root)
    return root, files, check


def test_check_lists_every_problem_and_exits_2(damaged_a):
    """check on a release damaged in many files: exit 2, no traceback, one line per problem, the fix stated."""
    _, _, check = damaged_a
    assert_user_error(check, "not a complete CryoNuSeg release", "Replace each file named above")
    assert len(_problems(check.err)) >= 11


def _lines_naming(check, path: Path) -> list[str]:
    return [p for p in _problems(check.err) if str(path) in p]


def test_swapped_roi_zips_same_count(damaged_a):
    """Two tiles' ROI zips swapped (same ROI count, the issue's example): each named, 0 % on its own label."""
    _, files, check = damaged_a
    for path in files["swapped_rois"]:
        (line,) = [p for p in _lines_naming(check, path) if "carry their own label" in p]
        assert "only 0.0% of the ROI pixels" in line and "put back the right file" in line


def test_empty_roi_zip(damaged_a):
    """A ROI zip with no member at all."""
    _, files, check = damaged_a
    (line,) = _lines_naming(check, files["empty_roi_zip"])
    assert "holds no .roi files" in line


def test_zip_without_roi_members(damaged_a):
    """A ROI zip holding files, none of them a .roi."""
    _, files, check = damaged_a
    (line,) = _lines_naming(check, files["zip_without_roi"])
    assert "holds no .roi files (members: 1)" in line


def test_garbage_roi_member(damaged_a):
    """A .roi member that is not an ImageJ ROI: the zip and the member are named."""
    _, files, check = damaged_a
    (line,) = _lines_naming(check, files["garbage_roi"])
    assert "member 0001-0001.roi: not a readable ImageJ ROI" in line


def test_truncated_label_mask(damaged_a):
    """A label TIFF cut to a third of its bytes."""
    _, files, check = damaged_a
    lines = _lines_naming(check, files["truncated_label_mask"])
    assert lines and all("unreadable" in line or "expected" in line for line in lines)


def test_empty_mask_png(damaged_a):
    """A released binary mask of 0 bytes."""
    _, files, check = damaged_a
    (line,) = _lines_naming(check, files["empty_mask_png"])
    assert line.endswith("Human_Mediastinum_02.png: empty file (0 bytes)")


def test_truncated_tile_image(damaged_a):
    """A tile TIFF cut after 1000 bytes."""
    _, files, check = damaged_a
    (line,) = _lines_naming(check, files["truncated_tile"])
    assert "unreadable TIFF" in line


def test_swapped_tile_images(damaged_a):
    """Two tiles' images swapped: every mark-up's mask of each says its nuclei are not darker than the tile."""
    _, files, check = damaged_a
    for image in files["swapped_tiles"]:
        tile = image.stem
        lines = [p for p in _problems(check.err) if f"{tile}.tif: its nuclei are not darker" in p]
        assert len(lines) == 3 and all("do not belong together" in line for line in lines)


def test_released_variant_of_another_tile(damaged_a):
    """A `mask binary` file swapped with another tile's: it marks other nuclei than the label mask."""
    _, files, check = damaged_a
    for path in files["variant_of_other_tile"]:
        (line,) = _lines_naming(check, path)
        assert "its nuclei differ from those of" in line and "put back the right file" in line


def test_mask_and_rois_of_another_tile(damaged_a):
    """Mask and ROI set of one mark-up both from another tile: they agree, but not with the image or other mark-ups."""
    _, files, check = damaged_a
    mask = files["mask_and_rois_of_other_tile"][0]
    lines = _lines_naming(check, mask)
    assert any("not darker" in line for line in lines)
    assert any("overlaps the annotator1_round1 mask of Human_Thymus_01 with Dice" in line for line in lines)


def test_sheet_count_differs_from_roi_count(damaged_a):
    """The slide sheet's nucleus count of one tile and mark-up changed: the ROI set and the sheet are named."""
    _, _, check = damaged_a
    (line,) = [p for p in _problems(check.err) if "slide sheet counts" in p and "ThyroidGland" in p]
    roi_set = next(
        p
        for p in damaged_a[1]["sheet_count"].parent.parent.rglob("Human_ThyroidGland_01*.zip")
        if "Annotator 2" in str(p)
    )
    n_rois = int(line.split(" holds ")[1].split()[0])
    assert line.startswith(f"{roi_set}: holds {n_rois} ROIs but the slide sheet counts {n_rois + 5} nuclei")
    assert "Human_ThyroidGland_01 (annotator2)" in line


def test_build_refuses_with_the_same_problems_before_writing(damaged_a, tmp_path):
    """build on copy A: exit 2, the very problems check listed, and no output or partial folder."""
    root, _, check = damaged_a
    out = tmp_path / "out" / "cryonuseg"
    build = run_cli("build", "--source", root, "--out", out)
    assert_user_error(build, "not a complete CryoNuSeg release")
    assert _problems(build.err) == _problems(check.err)
    assert not out.exists() and not (tmp_path / "out").exists()


def test_agreement_refuses_files_that_do_not_belong(damaged_a, tmp_path):
    """agreement on copy A: scores of swapped files would be silently wrong, so it refuses and writes nothing."""
    root, _, _ = damaged_a
    result = run_cli("agreement", "--source", root, "--out", tmp_path / "agreement")
    assert_user_error(result, "not a complete CryoNuSeg release", "carry their own label")
    assert not (tmp_path / "agreement").exists()


@pytest.fixture(scope="module")
def damaged_b(release, tmp_path_factory):
    """Copy B: a corrupt slide sheet, a tile of the wrong size, a `label masks` file of another tile."""
    import tifffile

    root = mirror_release(release.root, tmp_path_factory.mktemp("b") / "release")
    files = {
        "corrupt_sheet": root / "metadata" / "Selected_WSIs.xlsx",
        "small_tile": _mirrored(release, root, release.images["Human_ThyroidGland_03"]),
        "summed_mask_of_other_tile": _mirrored(
            release, root, release.markups[R2].variants["label_masks"]["Human_Skin_03"]
        ),
    }
    replace_file(files["corrupt_sheet"], b"PK\x03\x04 this is not a workbook")
    tile = tifffile.imread(release.images["Human_ThyroidGland_03"])
    replace_file(files["small_tile"], tiff_bytes(tile[:256, :256], photometric="rgb"))
    other = release.markups[R2].variants["label_masks"]["Human_Larynx_01"]
    replace_file(files["summed_mask_of_other_tile"], other.read_bytes())
    return root, files, run_cli("check", "--source", root)


def test_corrupt_slide_sheet(damaged_b):
    """Selected_WSIs.xlsx that is not a workbook."""
    _, files, check = damaged_b
    assert_user_error(check)
    (line,) = _lines_naming(check, files["corrupt_sheet"])
    assert "not a readable .xlsx workbook" in line


def test_tile_of_wrong_size(damaged_b):
    """A tile image of 256x256 instead of 512x512."""
    _, files, check = damaged_b
    (line,) = _lines_naming(check, files["small_tile"])
    assert "expected a 512x512 RGB uint8 image, got shape (256, 256, 3)" in line


def test_summed_label_mask_of_another_tile(damaged_b):
    """The `label masks` (summed) file of another tile."""
    _, files, check = damaged_b
    (line,) = _lines_naming(check, files["summed_mask_of_other_tile"])
    assert "its nuclei differ from those of" in line


def test_missing_slide_sheet(release, tmp_path):
    """No metadata/Selected_WSIs.xlsx: check names it."""
    root = mirror_release(release.root, tmp_path / "release")
    (root / "metadata" / "Selected_WSIs.xlsx").unlink()
    assert_user_error(run_cli("check", "--source", root), "missing metadata/Selected_WSIs.xlsx")


def test_missing_tile_is_found_before_any_decoding(release, tmp_path):
    """A tile image missing: refused by the file listing (fast), naming the folder and the tile."""
    root = mirror_release(release.root, tmp_path / "release")
    (root / "tissue images" / "Human_Skin_02.tif").unlink()
    result = run_cli("check", "--source", root)
    assert_user_error(result, "tissue images", "missing 1: Human_Skin_02")
    assert result.seconds < 5


def test_real_release_passes_check(release_path):
    """The clean release passes every cross-file tolerance (the measured margins are in results/robustness.md)."""
    result = run_cli("check", "--source", release_path)
    assert result.code == 0, result.err
    assert "complete release of 30 tiles" in result.out


def test_source_that_does_not_exist(tmp_path):
    """--source naming nothing: exit 2, names it and says to pass --source or set $CRYONUSEG_DATA."""
    assert_user_error(run_cli("check", "--source", tmp_path / "nowhere"), "nowhere", "--source")


def test_source_zip_that_is_not_a_zip(tmp_path):
    """--source naming a file that is not a zip."""
    path = tmp_path / "release.zip"
    path.write_bytes(b"not a zip")
    assert_user_error(run_cli("check", "--source", path), f"{path}: not a readable zip file")


def test_source_zip_with_path_traversal(tmp_path):
    """A zip whose members escape the extraction folder is refused before anything is extracted."""
    path = tmp_path / "evil.zip"
    path.write_bytes(zip_bytes({"../../escaped.txt": b"x"}))
    assert_user_error(run_cli("check", "--source", path), "escape the extraction folder")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_build_out_is_the_current_folder(release_path, tmp_path, monkeypatch):
    """build --out . is refused at once, before any work, saying to name a new folder."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("build", "--source", release_path, "--out", ".")
    assert_user_error(result, "is the current folder", "--out cryonuseg")
    assert result.seconds < 2 and tree_state(tmp_path) == {}


def test_build_out_is_a_folder_with_other_files(release_path, tmp_path):
    """build --out into a folder holding the user's files: refused at once, even with --overwrite."""
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("build", "--source", release_path, "--out", tmp_path, "--overwrite")
    assert_user_error(result, "not a previous cryonuseg-hf build; refusing")
    assert result.seconds < 2 and tree_state(tmp_path) == {"notes.txt": b"mine"}


def test_mask_report_unknown_tile():
    """mask-report --tiles Human_Foo_01: refused by the parser, listing the tile ids."""
    assert_user_error(run_cli("mask-report", "--tiles", "Human_Foo_01"), "--tiles", "Human_Larynx_01")


def test_mask_report_is_not_fooled_by_a_swapped_roi_set(release, tmp_path):
    """mask-report with one ROI set swapped: it reports the tile as differing (its job), it does not say identical."""
    root = mirror_release(release.root, tmp_path / "release")
    swap_files(
        _mirrored(release, root, release.markups[R2].rois["Human_AdrenalGland_02"]),
        _mirrored(release, root, release.markups[R2].rois["Human_Pancreas_03"]),
    )
    out = tmp_path / "report"
    result = run_cli("mask-report", "--source", root, "--out", out, "--tiles", "Human_AdrenalGland_02")
    assert result.code == 0, result.err
    line = next(
        line
        for line in result.out.splitlines()
        if "annotator1_round2" in line and "label_masks_modify" in line
    )
    assert "identical  0/1" in line


def test_agreement_source_missing(tmp_path):
    """agreement --source naming nothing."""
    assert_user_error(run_cli("agreement", "--source", tmp_path / "nope", "--out", tmp_path / "o"), "nope")
    assert not (tmp_path / "o").exists()
