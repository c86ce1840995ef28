"""The dataset builder: the real release built once (``built_dataset``), and small releases made in code."""

from __future__ import annotations

import io
import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cryonuseg_hf.core.folds import ORGANS, TILE_IDS, fold_of, organ_of
from cryonuseg_hf.data.release import MARKUP_FOLDERS, MARKUPS, RELEASED_VARIANTS, ReleaseError

# --- the real release ----------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _card_yaml(folder: Path) -> dict:
    import yaml

    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_build_is_a_hub_repository(built_dataset):
    from cryonuseg_hf.data.rows import features

    assert sorted(p.name for p in built_dataset.iterdir()) == ["README.md", *sorted(MARKUPS)]
    header = _card_yaml(built_dataset)
    assert header["license"] == "cc-by-nc-sa-4.0"
    configs = {c["config_name"]: c for c in header["configs"]}
    assert set(configs) == set(MARKUPS)
    assert [name for name, c in configs.items() if c.get("default")] == ["annotator1_round2"]
    assert configs["annotator2"]["data_files"] == [
        {"split": "train", "path": "annotator2/train-00000-of-00001.parquet"}
    ]
    for info in header["dataset_info"]:
        assert info["features"] == features(info["config_name"])._to_yaml_list()
    # The Parquet files carry their features in their schema, the mark-up as text in every row.
    import pyarrow.parquet as pq

    path = built_dataset / "annotator2" / "train-00000-of-00001.parquet"
    schema = pq.read_schema(path)
    assert b"huggingface" in schema.metadata and "instance_mask" in schema.names
    assert set(pq.read_table(path, columns=["markup"]).column(0).to_pylist()) == {"annotator2"}


def test_card_documents_the_data(built_dataset):
    from cryonuseg_hf.data.rows import features

    card = (built_dataset / "README.md").read_text(encoding="utf-8")
    body = card.split("---\n", 2)[2]
    for needle in (
        "CC BY-NC-SA 4.0",
        "10.1016/j.compbiomed.2021.104349",
        'filters=[("fold", "!=", 3)]',
        "leave one organ out",
        "label masks modify",
        "| **all** | | **30** | **7596** | **8044** | **8251** |",
        "| Mediastinum | 3 | 3 |",
        "365.25",
        "## Human agreement",
        "| intra_observer | `annotator1_round2` | `annotator1_round1` |",
        "equal to `n_nuclei` of the matching config for all 90 tile/mark-up pairs",
        "null where the sheet leaves it empty (Human_Testes_01)",
    ):
        assert needle in body, needle
    for column in features("annotator2"):
        if not column.startswith("nuclei_border_") and column not in ("svs_height", "centroid_y"):
            assert f"`{column}`" in body, column
    assert "nuclei_border_1 .. nuclei_border_10" in body


def test_load_default_config_decodes_the_released_files(built_dataset, release):
    import tifffile
    from datasets import load_dataset

    from cryonuseg_hf.data.mask_variants import nuclei_borders

    ds = load_dataset(str(built_dataset), split="train")
    assert ds.info.config_name == "annotator1_round2" and ds.num_rows == 30
    assert ds.features["markup"].names == ["annotator1_round2"] and set(ds["markup"]) == {0}
    assert ds["tile_id"] == list(TILE_IDS)
    assert ds["fold"] == [fold_of(t) for t in TILE_IDS]
    assert ds.features["organ"].names == list(ORGANS)
    assert ds["organ"] == [ORGANS.index(organ_of(t)) for t in TILE_IDS]
    files = release.markups["annotator1_round2"]
    for i, tile in enumerate(TILE_IDS):
        row = ds[i]
        mask = np.asarray(row["instance_mask"])
        assert row["instance_mask"].mode == "I;16" and mask.dtype == np.uint16
        assert np.array_equal(mask, tifffile.imread(files.variants["label_masks_modify"][tile]))
        assert row["n_instances"] == len(np.unique(mask)) - 1
        assert row["n_nuclei"] == len(row["nuclei"]) == row["n_cells_annotator1_round2"]
    row = ds[7]  # Human_LymphNodes_02: image, every released variant and the regenerated borders
    tile = row["tile_id"]
    assert np.array_equal(np.asarray(row["image"]), tifffile.imread(release.images[tile]))
    assert np.array_equal(
        np.asarray(row["label_masks"]), tifffile.imread(files.variants["label_masks"][tile])
    )
    for column in RELEASED_VARIANTS:
        if column not in ("label_masks_modify", "label_masks"):
            stored = ds.data.column(column)[7].as_py()["bytes"]
            assert stored == files.variants[column][tile].read_bytes(), column  # verbatim
    borders = nuclei_borders(np.asarray(row["instance_mask"]))
    for k in (1, 5, 10):
        assert np.array_equal(np.asarray(row[f"nuclei_border_{k}"]), borders[k])
    nucleus = row["nuclei"][0]
    assert set(nucleus) == {"name", "roi_type", "x", "y"} and len(nucleus["x"]) == len(nucleus["y"]) > 2


def test_other_configs_hold_their_own_markup(built_dataset, release):
    import tifffile
    from datasets import load_dataset

    for markup in ("annotator1_round1", "annotator2"):
        ds = load_dataset(str(built_dataset), markup, split="train")
        assert ds.info.config_name == markup and ds.features["markup"].int2str(ds[0]["markup"]) == markup
        files = release.markups[markup].variants["label_masks_modify"]
        for i in (0, 29):
            assert np.array_equal(np.asarray(ds[i]["instance_mask"]), tifffile.imread(files[TILE_IDS[i]]))
        assert ds["n_nuclei"] == ds[f"n_cells_{markup}"]


def test_fold_filter_streaming_and_literal_name(built_dataset, monkeypatch):
    from datasets import load_dataset

    train = load_dataset(
        str(built_dataset), split="train", filters=[("fold", "!=", 3)], columns=["tile_id", "fold"]
    )
    assert train.num_rows == 27 and 3 not in train["fold"]
    stream = load_dataset(str(built_dataset), "annotator2", split="train", streaming=True)
    first = next(iter(stream))
    assert first["tile_id"] == TILE_IDS[0] and np.asarray(first["instance_mask"]).dtype == np.uint16
    held_out = load_dataset(str(built_dataset), split="train", streaming=True, filters=[("fold", "==", 3)])
    assert [r["tile_id"] for r in held_out] == [t for t in TILE_IDS if fold_of(t) == 3]
    monkeypatch.chdir(built_dataset.parent)
    assert built_dataset.name == "cryonuseg"
    literal = load_dataset("cryonuseg", "annotator2", split="train", columns=["tile_id"])
    assert literal["tile_id"] == list(TILE_IDS)


def test_slide_metadata_columns(built_dataset):
    from datasets import load_dataset

    ds = load_dataset(
        str(built_dataset), split="train", columns=["tile_id", "race", "svs_width", "age_years"]
    )
    rows = {r["tile_id"]: r for r in ds}
    assert rows["Human_Testes_01"]["svs_width"] is None
    assert rows["Human_Testes_03"]["race"] is None
    assert (
        rows["Human_AdrenalGland_01"]["race"] == "black" and rows["Human_AdrenalGland_01"]["age_years"] == 64
    )


def _zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder))
    return archive


def test_zip_build_equals_folder_build(built_dataset, release_path, tmp_path, monkeypatch):
    """A second, independent build of the real release, from the zip: the same Parquet bytes.

    One config keeps the test short; every config and the README are compared on a small release below.
    """
    import tempfile

    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.data.parquet import PARQUET_NAME
    from cryonuseg_hf.reports.dataset_card import dataset_card

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the zip is extracted under tmp_path
    archive = _zip_folder(release_path, tmp_path / "cryonuseg.zip")
    out = build(archive, tmp_path / "from_zip", markups=("annotator2",), card=dataset_card)
    parquet = f"annotator2/{PARQUET_NAME}"
    assert (out / parquet).read_bytes() == (built_dataset / parquet).read_bytes()


# --- small releases made in code -------------------------------------------------------------------------------


def _nuclei(n: int = 3):
    from cryonuseg_hf.data.rois import Nucleus

    square = np.float32([0, 20, 20, 0])
    return [
        Nucleus(f"{i:04d}-0001", square + 40 * i + 10, np.float32([0, 0, 20, 20]) + 30, "freehand")
        for i in range(n)
    ]


def make_release(root: Path) -> Path:
    """A complete release in the Kaggle layout with real-size files; identical files are hard links."""
    import openpyxl
    import tifffile
    from PIL import Image

    from cryonuseg_hf.data.masks import instance_masks
    from cryonuseg_hf.data.metadata import COLUMNS
    from cryonuseg_hf.data.rois import write_roi_set

    proto = root.parent / f".{root.name}-proto"
    proto.mkdir(parents=True)
    rows, cols = np.mgrid[0:512, 0:512]
    nuclei = _nuclei()
    write_roi_set(proto / "rois.zip", nuclei)
    summed, modify = instance_masks(nuclei)
    tile = np.stack([rows // 2, cols // 2, (rows + cols) // 4], -1).astype(np.uint8)
    tile[modify > 0] //= 4  # nuclei are dark in H&E; check_release tests that mask and tile belong together
    tifffile.imwrite(proto / "tile.tif", tile)
    tifffile.imwrite(proto / "label_masks.tif", summed)
    tifffile.imwrite(proto / "label_masks_modify.tif", modify)
    Image.fromarray(np.where(modify > 0, 255, 0).astype(np.uint8)).save(proto / "binary.png")

    def link(source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)

    for tile in TILE_IDS:
        link(proto / "tile.tif", root / "tissue images" / f"{tile}.tif")
    for markup, folder in MARKUP_FOLDERS.items():
        base = root / folder if markup == "annotator1_round1" else root / folder / folder
        for tile in TILE_IDS:
            link(proto / "rois.zip", base / "Imagj_zips" / f"{tile}_RoiSet.zip")
            for column, name in RELEASED_VARIANTS.items():
                source = proto / (f"{column}.tif" if column.startswith("label") else "binary.png")
                link(source, base / name / f"{tile}{source.suffix}")
    book = openpyxl.Workbook()
    book.active.title = "Current Candidates"
    book.active.append(list(COLUMNS))
    for i, tile in enumerate(TILE_IDS):
        values = {"File Name": tile, "Gender": "f", "Age": -10000 - i, "Race": "x", "Notes": "Easy"}
        book.active.append([values.get(name, 3 if name.startswith("Nr") else None) for name in COLUMNS])
    (root / "metadata").mkdir()
    book.save(root / "metadata" / "Selected_WSIs.xlsx")
    return root


@pytest.fixture
def fake(tmp_path) -> Path:
    return make_release(tmp_path / "release")


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # hard-linked: never write through to the other tiles
    path.write_bytes(data)


def _no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_builder_class_matches_build(fake, tmp_path):
    from datasets import load_dataset

    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.data.builder import CryoNuSeg
    from cryonuseg_hf.reports.dataset_card import dataset_card

    builder = CryoNuSeg(config_name="annotator2", data_dir=str(fake), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare(output_dir=str(tmp_path / "prepared"), file_format="parquet")
    prepared = load_dataset(
        "parquet", data_files=str(next((tmp_path / "prepared").glob("*.parquet"))), split="train"
    )
    built = load_dataset(
        str(build(fake, tmp_path / "built", markups=("annotator2",), card=dataset_card)),
        "annotator2",
        split="train",
    )
    assert prepared.features == built.features
    assert prepared.data.table.equals(built.data.table)
    assert CryoNuSeg(config_name="annotator1_round2").config.name == CryoNuSeg().config.name


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "tissue images" / "Human_Skin_02.tif").unlink(), "missing 1: Human_Skin_02"),
        (
            lambda r: shutil.rmtree(r / "Annotator 2 (bioinformatician)"),
            r"missing annotation folder 'Annotator 2 \(bioinformatician\)'",
        ),
        (
            lambda r: _replace(r / "tissue images" / "Human_Skin_02.tif", b"II*\x00garbage"),
            r"Human_Skin_02.tif: unreadable TIFF",
        ),
        (
            lambda r: _write_tiff(r / "tissue images" / "Human_Skin_02.tif", (256, 256, 3)),
            r"got shape \(256, 256, 3\)",
        ),
        (
            lambda r: _write_tiff(r / "tissue images" / "Human_Skin_02.tif", (512, 512)),
            r"got shape \(512, 512\) uint8",
        ),
        (
            lambda r: _write_png(r / "Annotator 1 (biologist)" / "mask binary" / "Human_Skin_02.png", "RGB"),
            r"mask binary/Human_Skin_02.png: expected a 512x512 8-bit grayscale PNG, got 512x512 mode RGB",
        ),
        (
            lambda r: _write_tiff(
                r / "Annotator 1 (biologist)" / "label masks modify" / "Human_Skin_02.tif",
                (300, 512),
                np.uint16,
            ),
            r"label masks modify/Human_Skin_02.tif: expected a 512x512 uint16 label image",
        ),
        (
            lambda r: _replace(
                r / "Annotator 1 (biologist)" / "Imagj_zips" / "Human_Skin_02_RoiSet.zip", _zip({})
            ),
            r"Human_Skin_02_RoiSet.zip: zip holds no .roi files",
        ),
        (
            lambda r: _replace(
                r / "Annotator 1 (biologist)" / "Imagj_zips" / "Human_Skin_02_RoiSet.zip",
                _zip({"0001-0001.roi": b"x"}),
            ),
            r"Human_Skin_02_RoiSet.zip: member 0001-0001.roi: not a readable ImageJ ROI",
        ),
        (
            lambda r: (r / "tissue images" / "Human_Skin_02.tiff").write_bytes(b""),
            "duplicate tile name Human_Skin_02",
        ),
        (
            lambda r: shutil.rmtree(r / "Annotator 1 (biologist)" / "weighted_maps"),
            "missing released mask folder\\(s\\): 'weighted_maps'",
        ),
        (lambda r: (r / "metadata" / "Selected_WSIs.xlsx").unlink(), r"missing metadata/Selected_WSIs.xlsx"),
        (
            lambda r: _write_tiff(
                r / "Annotator 1 (biologist)" / "label masks modify" / "Human_Skin_02.tif",
                (512, 512),
                np.uint16,
                9,
            ),
            r"Human_Skin_02.tif: label 9 but the ROI set .*Human_Skin_02_RoiSet.zip holds only 3 ROIs",
        ),
    ],
    ids=[
        "missing-tile",
        "missing-annotation-folder",
        "corrupt-tiff",
        "wrong-size",
        "wrong-mode-tile",
        "wrong-mode-mask",
        "wrong-size-label-mask",
        "empty-roi-zip",
        "unreadable-roi",
        "duplicate-tile",
        "missing-variant",
        "missing-metadata",
        "mask-and-rois-disagree",
    ],
)
def test_bad_release_is_refused_and_leaves_nothing(fake, tmp_path, damage, message):
    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.reports.dataset_card import dataset_card

    damage(fake)
    out = tmp_path / "out" / "cryonuseg"
    with pytest.raises(ValueError, match=message):
        build(fake, out, card=dataset_card)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or _no_leftovers(tmp_path / "out")


def _write_tiff(path: Path, shape, dtype=np.uint8, value: int = 0) -> None:
    import tifffile

    path.unlink()
    tifffile.imwrite(path, np.full(shape, value, dtype))


def _write_png(path: Path, mode: str) -> None:
    from PIL import Image

    path.unlink()
    Image.new(mode, (512, 512)).save(path)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_zip_with_escaping_paths_is_refused(tmp_path, monkeypatch):
    import tempfile

    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.reports.dataset_card import dataset_card

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "cache"))
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"tissue images/Human_Skin_01.tif": b"", "../../escaped.txt": b"gotcha"}))
    with pytest.raises(
        ReleaseError, match=r"member paths escape the extraction folder: \.\./\.\./escaped\.txt"
    ):
        build(archive, tmp_path / "out", card=dataset_card)
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path / "out").exists()


def test_output_folder_rules(fake, tmp_path):
    from cryonuseg_hf.data.build import build, check_output_folder
    from cryonuseg_hf.reports.dataset_card import dataset_card

    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a previous cryonuseg-hf build; refusing"):
            build(fake, other, overwrite=overwrite, card=dataset_card)
    assert (other / "mine.txt").read_text() == "keep me" and len(list(other.iterdir())) == 1

    out = build(fake, tmp_path / "cryonuseg", markups=("annotator2",), card=dataset_card)
    with pytest.raises(FileExistsError, match="previous build; pass --overwrite"):
        build(fake, out, markups=("annotator2",), card=dataset_card)
    (out / "stray.txt").write_text("")  # a previous build with something added is no longer ours to delete
    with pytest.raises(FileExistsError, match="not a previous cryonuseg-hf build"):
        build(fake, out, overwrite=True, markups=("annotator2",), card=dataset_card)
    (out / "stray.txt").unlink()
    (out / "annotator2" / "train-00000-of-00001.parquet").write_bytes(b"stale")
    build(fake, out, overwrite=True, markups=("annotator2",), card=dataset_card)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "annotator2"]
    assert (out / "annotator2" / "train-00000-of-00001.parquet").read_bytes()[:4] == b"PAR1"
    assert _no_leftovers(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output_folder(empty, overwrite=False)  # an empty folder is fine
    with pytest.raises(FileExistsError, match="not a folder"):
        check_output_folder(other / "mine.txt", overwrite=True)


# --- CLI and network ends ------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_builds_are_deterministic_from_folder_and_zip(fake, tmp_path, monkeypatch, capsys):
    import tempfile

    from cryonuseg_hf.cli import main
    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.reports.dataset_card import dataset_card

    out = tmp_path / "a" / "cryonuseg"
    assert main(["build", "--source", str(fake), "--out", str(out)]) == 0
    assert "built annotator1_round1, annotator1_round2, annotator2" in capsys.readouterr().out
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    archive = _zip_folder(fake, tmp_path / "fake.zip")
    from_zip = build(archive, tmp_path / "b" / "cryonuseg", card=dataset_card, workers=1)
    assert _files(from_zip) == _files(out)  # the CLI's build spreads tiles over processes; this one does not
    assert (out / "README.md").read_text(encoding="utf-8").count("## Human agreement") == 1
    assert main(["build", "--source", str(fake), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert _no_leftovers(tmp_path / "a")


def test_download_fails_fast_offline(tmp_path, monkeypatch, no_network, capsys):
    import time

    from cryonuseg_hf.cli import main

    start = time.perf_counter()
    assert main(["download"]) == 2
    monkeypatch.delenv("CRYONUSEG_DATA")  # no release named: build downloads one
    assert main(["build", "--out", str(tmp_path / "out")]) == 2
    assert time.perf_counter() - start < 30  # generous: the point is seconds, not minutes of retries
    err = capsys.readouterr().err
    assert err.count("cannot download CryoNuSeg from Kaggle") == 2 and "--source" in err
    assert not (tmp_path / "out").exists()
    # the other commands have no default location: they say how to name a release
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "pass --source" in err and "$CRYONUSEG_DATA" in err


def test_push_stops_where_the_network_starts(built_dataset, tmp_path, monkeypatch, no_network, capsys):
    from cryonuseg_hf.apps.hub import push_dataset
    from cryonuseg_hf.cli import main

    with pytest.raises(ValueError, match="not a dataset folder made by `cryonuseg-hf build`"):
        push_dataset(tmp_path, "someone/cryonuseg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE is set"):
        push_dataset(built_dataset, "someone/cryonuseg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert main(["push", str(built_dataset), "--repo-id", "someone/cryonuseg"]) == 2
    assert "the Hub is unreachable" in capsys.readouterr().err


def test_loading_script_only_runs_the_package_builder(fake, tmp_path, monkeypatch):
    import ast
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    tree = ast.parse((root / "loading_script.py").read_text())
    assert not [
        n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name != "main"
    ]
    spec = importlib.util.spec_from_file_location("loading_script", root / "loading_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prepared = tmp_path / "prepared"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    argv = ["--config", "annotator2", "--source", str(fake), "--prepare-into", str(prepared)]
    assert module.main(argv) == 0
    assert [p.suffix for p in prepared.glob("*.parquet")] == [".parquet"]
