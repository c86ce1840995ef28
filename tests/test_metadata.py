from __future__ import annotations

import csv

import pytest

from cryonuseg_hf.core.folds import TILE_IDS
from cryonuseg_hf.data.metadata import (
    COLUMNS,
    FIELDS,
    SHEET,
    age_in_years,
    difficulty_of,
    read_slide_metadata,
)


@pytest.fixture(scope="module")
def sheet(release):
    return read_slide_metadata(release.metadata_xlsx)


def test_real_sheet_is_cleaned(sheet):
    assert list(sheet) == list(TILE_IDS)
    assert all(list(record) == list(FIELDS) for record in sheet.values())
    # stray newlines: 'black\n', 'f\n', 'Human_Skin_03\n' and 'Human_ThyroidGland_01\n' in the sheet
    assert sheet["Human_AdrenalGland_01"]["race"] == "black"
    assert sheet["Human_Pancreas_01"]["sex"] == "female"
    assert "Human_Skin_03" in sheet and "Human_ThyroidGland_01" in sheet
    assert not any(isinstance(v, str) and v != v.strip() for r in sheet.values() for v in r.values())
    assert sheet["Human_Testes_03"]["race"] is None  # the sheet's 'x'
    assert {r["sex"] for r in sheet.values()} == {"female", "male"}


def test_missing_values_stay_null(sheet):
    testes = sheet["Human_Testes_01"]
    assert (
        testes["svs_width"] is None and testes["svs_height"] is None and testes["microns_per_pixel"] is None
    )
    others = [r for t, r in sheet.items() if t != "Human_Testes_01"]
    assert all(r["svs_width"] and r["microns_per_pixel"] for r in others)


def test_age_and_difficulty(sheet):
    adrenal = sheet["Human_AdrenalGland_01"]
    assert adrenal["days_to_birth"] == -23554 and adrenal["age_years"] == 64  # 23554 / 365.25 = 64.49
    assert age_in_years(-365) == 0 and age_in_years(-366) == 1
    assert all(18 <= r["age_years"] <= 90 for r in sheet.values())
    assert sheet["Human_LymphNodes_01"]["difficulty"] == "hard"  # 'HARD: ...'
    assert sheet["Human_Mediastinum_03"]["difficulty"] == "easy"  # the note is just 'Easy'
    assert difficulty_of("Tricky: whatever") is None
    assert all(r["difficulty"] in ("easy", "medium", "hard") for r in sheet.values())


def test_cell_counts_equal_the_roi_counts(sheet, release):
    with open(release.root / "metadata" / "instance_counts.csv", newline="") as f:
        counts = {row["image"]: row for row in csv.DictReader(f)}
    for tile, record in sheet.items():
        for markup in ("annotator1_round1", "annotator1_round2", "annotator2"):
            assert record[f"n_cells_{markup}"] == int(counts[tile][f"{markup}_roi_count"]), (tile, markup)


# --- small workbooks made in code ---------------------------------------------------------------------------


def _workbook(path, edit=None):
    """A clean sheet with all 30 tiles, a totals row of formulas and a stray organ list, like the real one."""
    import openpyxl

    book = openpyxl.Workbook()
    ws = book.active
    ws.title = SHEET
    header = list(COLUMNS)
    header[header.index("Nr Cells (bioinformatician)")] = "Nr Cells\n(bioinformatician)"
    ws.append([*header, "Nr Cells organwise\n(bioinformatician)"])
    values = {
        "URL": "https://portal.gdc.cancer.gov/files/x",
        "TCGA": "TCGA-AA-0000",
        "Race": "white\n",
        "Gender": "m",
        "Age": -20000,
        "Organ": "Somewhere",
        "BitDepth": 8,
        "Magnification": 40,
        "SVS-Width": 1000,
        "SVS-Height": 2000,
        "Pixel-Dimensions": 0.25,
        "Disease": "Something",
        "CentroidX": 1.5,
        "CentroidY": 2.5,
        "Notes": "Medium: fine",
    }
    for i, tile in enumerate(TILE_IDS):
        row = [values.get(name, i) for name in COLUMNS]
        row[list(COLUMNS).index("File Name")] = tile
        ws.append([*row, "=SUM(P2:P4)" if i % 3 == 2 else None])
    ws.append([None] * 15 + ["=SUM(P2:P31)"])
    ws.append([None] * 6 + ["Thyroid Gland", "Pancreas"])
    if edit:
        edit(ws)
    book.save(path)
    return path


def test_clean_workbook_ignores_formula_columns_and_junk_rows(tmp_path):
    records = read_slide_metadata(_workbook(tmp_path / "ok.xlsx"))
    assert list(records) == list(TILE_IDS)
    assert records["Human_Skin_01"]["race"] == "white" and records["Human_Skin_01"]["age_years"] == 54
    assert records["Human_Larynx_02"]["n_cells_annotator2"] == 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ws: ws.cell(5, 9, "=A1*2"), r"row 5, column 'SVS-Width': a formula"),
        (lambda ws: ws.cell(6, 5, "old"), r"row 6, column 'Age': expected a number, got 'old'"),
        (lambda ws: ws.cell(7, 4, "q"), r"row 7, column 'Gender': expected sex 'f' or 'm'"),
        (lambda ws: ws.cell(3, 13, "Human_Skin_01"), r"row 20: tile Human_Skin_01 is listed twice"),
        (lambda ws: ws.cell(3, 13, "Human_Lung_01"), r"row 3: 'Human_Lung_01' is not a CryoNuSeg tile id"),
        (
            lambda ws: setattr(ws.cell(31, 13), "value", None),
            r"no row for 1 tile\(s\): Human_ThyroidGland_03",
        ),
        (lambda ws: ws.cell(1, 2, "Barcode"), r"lacks the column\(s\) \['TCGA'\]"),
    ],
)
def test_bad_workbooks_name_the_cell(tmp_path, edit, message):
    path = _workbook(tmp_path / "bad.xlsx", edit)
    with pytest.raises(ValueError, match=message):
        read_slide_metadata(path)


def test_unreadable_or_missing_workbook(tmp_path):
    (tmp_path / "broken.xlsx").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.xlsx: not a readable .xlsx"):
        read_slide_metadata(tmp_path / "broken.xlsx")
    with pytest.raises(FileNotFoundError, match="nowhere.xlsx"):
        read_slide_metadata(tmp_path / "nowhere.xlsx")
