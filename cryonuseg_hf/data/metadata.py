"""The slide metadata of ``metadata/Selected_WSIs.xlsx``: one clean record per tile.

The authors' sheet ("Current Candidates") has one row per tile, keyed by ``File Name``, and some mess that
this module handles explicitly rather than by luck:

- stray newlines and spaces in values (``'f\\n'``, ``'black\\n'``, ``'Human_Skin_03\\n'``) are stripped;
- the race ``'x'`` (Human_Testes_03) means "not recorded" and becomes null;
- ``Age`` holds TCGA's *days to birth* (a negative day count); it is kept as ``days_to_birth`` and converted to
  completed years, ``age_years = floor(-days_to_birth / 365.25)``;
- the "Nr Cells organwise" columns and the totals row are ``=SUM(...)`` formula cells, and rows below the table
  hold a stray list of organ names: a row is read only if its ``File Name`` cell holds a value, and only the
  columns in :data:`COLUMNS` are read;
- empty cells (Human_Testes_01 has no SVS size and no microns per pixel) stay null; nothing is invented.

Any other surprise (a missing column, a formula or text where a number belongs, an unknown tile, a tile listed
twice or not at all) raises ``ValueError`` naming the cell.
"""

from __future__ import annotations

import math
from pathlib import Path

from cryonuseg_hf.core.folds import TILE_IDS

SHEET = "Current Candidates"
DAYS_PER_YEAR = 365.25
MISSING_RACE = {"x"}
SEXES = {"f": "female", "m": "male"}
DIFFICULTIES = ("easy", "medium", "hard")

# Sheet header (whitespace-normalized) -> (record field, kind). Kinds: str, int, float, race, sex, note.
COLUMNS: dict[str, tuple[str, str]] = {
    "URL": ("slide_url", "str"),
    "TCGA": ("tcga_barcode", "str"),
    "Race": ("race", "race"),
    "Gender": ("sex", "sex"),
    "Age": ("days_to_birth", "int"),
    "Organ": ("organ_site", "str"),
    "BitDepth": ("bit_depth", "int"),
    "Magnification": ("magnification", "int"),
    "SVS-Width": ("svs_width", "int"),
    "SVS-Height": ("svs_height", "int"),
    "Pixel-Dimensions": ("microns_per_pixel", "float"),
    "Disease": ("disease", "str"),
    "File Name": ("tile_id", "str"),
    "CentroidX": ("centroid_x", "float"),
    "CentroidY": ("centroid_y", "float"),
    "Nr Cells (bioinformatician)": ("n_cells_annotator2", "int"),
    "Nr Cells (biologist) 1st round of manual mark-ups": ("n_cells_annotator1_round1", "int"),
    "Nr Cells (biologist) 2nd round of manual mark-ups": ("n_cells_annotator1_round2", "int"),
    "Notes": ("difficulty_note", "note"),
}

FIELDS: tuple[str, ...] = (
    "tcga_barcode",
    "slide_url",
    "race",
    "sex",
    "age_years",
    "days_to_birth",
    "organ_site",
    "disease",
    "bit_depth",
    "magnification",
    "svs_width",
    "svs_height",
    "microns_per_pixel",
    "centroid_x",
    "centroid_y",
    "difficulty",
    "difficulty_note",
    "n_cells_annotator1_round1",
    "n_cells_annotator1_round2",
    "n_cells_annotator2",
)
"""The per-tile metadata fields, in the order the dataset columns use."""


def age_in_years(days_to_birth: int | None) -> int | None:
    """Completed years from TCGA's negative *days to birth*.

    >>> age_in_years(-23554)
    64
    >>> age_in_years(None) is None
    True
    """
    if days_to_birth is None:
        return None
    return math.floor(-days_to_birth / DAYS_PER_YEAR)


def difficulty_of(note: str | None) -> str | None:
    """The difficulty word that starts a note: ``'HARD: low contrast'`` -> ``'hard'``.

    >>> difficulty_of("Easy")
    'easy'
    >>> difficulty_of("Medium: High contrast") , difficulty_of(None)
    ('medium', None)
    """
    if note is None:
        return None
    word = note.split(":")[0].strip().lower()
    return word if word in DIFFICULTIES else None


def _clean(value):
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _convert(value, kind: str, where: str):
    value = _clean(value)
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("="):
        raise ValueError(f"{where}: a formula ({value}) where a value was expected")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if kind == "int":
            if value != int(value):
                raise ValueError(f"{where}: expected a whole number, got {value!r}")
            return int(value)
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected text, got {value!r}")
    if kind == "race":
        return None if value.lower() in MISSING_RACE else value
    if kind == "sex":
        if value.lower() not in SEXES:
            raise ValueError(f"{where}: expected sex 'f' or 'm', got {value!r}")
        return SEXES[value.lower()]
    return value


def read_slide_metadata(path: str | Path) -> dict[str, dict]:
    """Read the sheet into ``{tile_id: record}`` with the fields of :data:`FIELDS`, in ``TILE_IDS`` order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a required column is missing, a cell holds the wrong kind of value, or a tile is unknown,
            duplicated or absent; the message names the file, sheet and cell.
    """
    import openpyxl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: slide metadata sheet not found")
    try:
        workbook = openpyxl.load_workbook(path, read_only=True)
    except Exception as error:  # openpyxl raises zipfile, KeyError and XML errors for a broken file
        raise ValueError(f"{path}: not a readable .xlsx workbook ({type(error).__name__}: {error})") from None
    try:
        if SHEET not in workbook.sheetnames:
            raise ValueError(f"{path}: no sheet {SHEET!r} (sheets: {workbook.sheetnames})")
        rows = list(workbook[SHEET].iter_rows(values_only=True))
    finally:
        workbook.close()
    if not rows:
        raise ValueError(f"{path}: sheet {SHEET!r} is empty")

    header = [" ".join(str(h).split()) if h is not None else None for h in rows[0]]
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise ValueError(f"{path}: sheet {SHEET!r} lacks the column(s) {missing}; found {header}")
    positions = {name: header.index(name) for name in COLUMNS}
    name_col = positions["File Name"]

    records: dict[str, dict] = {}
    for row_number, row in enumerate(rows[1:], start=2):
        if name_col >= len(row) or _clean(row[name_col]) is None:
            continue  # totals row, blank rows and the stray organ list below the table
        record = {}
        for name, (field, kind) in COLUMNS.items():
            cell = row[positions[name]] if positions[name] < len(row) else None
            record[field] = _convert(cell, kind, f"{path} [{SHEET}] row {row_number}, column {name!r}")
        tile = record.pop("tile_id")
        if tile not in TILE_IDS:
            raise ValueError(f"{path} [{SHEET}] row {row_number}: {tile!r} is not a CryoNuSeg tile id")
        if tile in records:
            raise ValueError(f"{path} [{SHEET}] row {row_number}: tile {tile} is listed twice")
        record["age_years"] = age_in_years(record["days_to_birth"])
        record["difficulty"] = difficulty_of(record["difficulty_note"])
        records[tile] = {field: record[field] for field in FIELDS}
    absent = [t for t in TILE_IDS if t not in records]
    if absent:
        raise ValueError(f"{path} [{SHEET}]: no row for {len(absent)} tile(s): {', '.join(absent)}")
    return {t: records[t] for t in TILE_IDS}
