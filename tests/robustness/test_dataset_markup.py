"""Robustness of the built dataset and of `build`: rows that name their mark-up, files that contradict the card,
and a build that checks what it can before it works and speaks in the user's paths.

The real release is built once for the module (``built``); each case damages a copy of it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustness.helpers import assert_user_error, bounded, mirror_release, run_cli, tree_state, zip_bytes

PARQUET = "train-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def built(release_path, tmp_path_factory) -> Path:
    """The real release built once, all three configs."""
    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.reports.dataset_card import dataset_card

    return build(release_path, tmp_path_factory.mktemp("markup") / "cryonuseg", card=dataset_card)


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A copy of the module's build to damage."""
    return Path(shutil.copytree(built, tmp_path / "cryonuseg"))


def _edit_card(folder: Path, old: str, new: str) -> None:
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    card.write_text(text.replace(old, new), encoding="utf-8")


def _load_refused(folder: Path, config: str, found: str, file: Path, caplog) -> None:
    """load_dataset(folder, config) fails on the first row of mark-up ``found`` and logs ``file``."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    with bounded(60, 500), pytest.raises(DatasetGenerationError) as caught:
        load_dataset(str(folder), config, split="train")
    assert f"Invalid string class label {found}" in str(caught.value.__cause__)
    assert f"Failed to read file '{file}'" in caplog.text


def test_rows_name_their_markup(built):
    """Every config loaded through the card: each row's markup is the config's own, and the Parquet files hold it
    as text for any reader."""
    import pyarrow.parquet as pq
    from datasets import load_dataset

    for config in ("annotator1_round1", "annotator1_round2", "annotator2"):
        rows = load_dataset(str(built), config, split="train", columns=["tile_id", "markup"])
        assert rows.features["markup"].names == [config] and len(rows) == 30
        assert {rows.features["markup"].int2str(m) for m in rows["markup"]} == {config}
        stored = pq.read_table(built / config / PARQUET, columns=["markup"]).column(0).to_pylist()
        assert stored == [config] * 30


def test_card_maps_a_config_to_another_markups_file(copy, caplog):
    """A build whose card maps config annotator2 to annotator1_round1's Parquet file: load_dataset is refused
    naming the mark-up found, and `check` names the file, the config and the mark-up found."""
    _edit_card(copy, f"path: annotator2/{PARQUET}", f"path: annotator1_round1/{PARQUET}")
    _load_refused(copy, "annotator2", "annotator1_round1", copy / "annotator1_round1" / PARQUET, caplog)
    assert_user_error(
        run_cli("check", "--source", copy),
        f"{copy / 'annotator1_round1' / PARQUET}: the card gives this file to config 'annotator2'",
        "its rows are mark-up annotator1_round1",
    )


def test_swapped_parquet_files(copy, caplog):
    """The Parquet files of annotator1_round2 and annotator2 swapped, card untouched: load_dataset of either
    config is refused, and `check` names the file, the config and the mark-up found."""
    a, b = copy / "annotator1_round2" / PARQUET, copy / "annotator2" / PARQUET
    a.rename(copy / "aside.parquet")
    b.rename(a)
    (copy / "aside.parquet").rename(b)
    _load_refused(copy, "annotator2", "annotator1_round2", b, caplog)
    _load_refused(copy, "annotator1_round2", "annotator2", a, caplog)
    assert_user_error(
        run_cli("check", "--source", copy),
        f"{a}: the card gives this file to config 'annotator1_round2'",
        "its rows are mark-up annotator2",
    )


def test_push_of_a_build_with_swapped_files(copy, monkeypatch):
    """`push` of a build whose annotator2 file holds annotator1_round2's rows: refused naming the file before any
    connection is tried, so wrong rows are never published."""
    a, b = copy / "annotator1_round2" / PARQUET, copy / "annotator2" / PARQUET
    b.unlink()
    b.write_bytes(a.read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # were the check skipped, push would try the network
    assert_user_error(
        run_cli("push", str(copy), "--repo-id", "someone/cryonuseg"),
        f"{b}: the card gives this file to config 'annotator2'",
        "its rows are mark-up annotator1_round2",
    )


def test_one_row_of_another_markup(copy, built, caplog):
    """annotator2's file with one row (Human_Skin_02) taken from annotator1_round1's file: load_dataset is refused
    at that row, and `check` names the file, the config and the mark-up found."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = copy / "annotator2" / PARQUET
    own, other = pq.read_table(path), pq.read_table(built / "annotator1_round1" / PARQUET)
    mixed = pa.concat_tables([own.slice(0, 25), other.slice(25, 1), own.slice(26)])
    pq.write_table(mixed.replace_schema_metadata(own.schema.metadata), path, row_group_size=10)
    _load_refused(copy, "annotator2", "annotator1_round1", path, caplog)
    assert_user_error(
        run_cli("check", "--source", copy),
        f"{path}: the card gives this file to config 'annotator2', but its rows are mark-up annotator1_round1",
    )


def test_deleted_parquet_file(copy):
    """annotator2's Parquet file deleted: load_dataset names the missing file; `check` names it and the config."""
    from datasets import load_dataset

    path = copy / "annotator2" / PARQUET
    path.unlink()
    with pytest.raises(FileNotFoundError, match=str(path)):
        load_dataset(str(copy), "annotator2", split="train")
    assert_user_error(
        run_cli("check", "--source", copy), f"{path}: missing, yet the card gives it to config 'annotator2'"
    )


def test_card_without_declared_features(copy):
    """A card mapping annotator2 to annotator1_round1's file with its dataset_info removed: load_dataset cannot
    refuse, but every row says annotator1_round1; `check` refuses naming the file, the config and the mark-up."""
    import yaml
    from datasets import load_dataset

    text = (copy / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    header = yaml.safe_load(header)
    del header["dataset_info"]
    for entry in header["configs"]:
        if entry["config_name"] == "annotator2":
            entry["data_files"][0]["path"] = f"annotator1_round1/{PARQUET}"
    (copy / "README.md").write_text(f"---\n{yaml.safe_dump(header)}---\n{body}", encoding="utf-8")
    rows = load_dataset(str(copy), "annotator2", split="train", columns=["tile_id", "markup"])
    assert set(rows["markup"]) == {"annotator1_round1"}
    assert_user_error(run_cli("check", "--source", copy), "its rows are mark-up annotator1_round1")


def test_card_declares_another_markup(copy):
    """A card whose config annotator2 declares markup as ClassLabel(names=['annotator1_round1']) and points to that
    mark-up's file (consistent, so load_dataset loads it labelled annotator1_round1): `check` refuses the card."""
    from datasets import load_dataset

    card = copy / "README.md"
    text = card.read_text(encoding="utf-8")
    head, body = text.split("\n---\n", 1)
    start = head.index("- config_name: annotator2\n  features:")
    names = head.index("'0': annotator2", start)
    head = head[:names] + "'0': annotator1_round1" + head[names + len("'0': annotator2") :]
    card.write_text(f"{head}\n---\n{body}", encoding="utf-8")
    _edit_card(copy, f"path: annotator2/{PARQUET}", f"path: annotator1_round1/{PARQUET}")
    rows = load_dataset(str(copy), "annotator2", split="train", columns=["markup"])
    assert rows.features["markup"].names == ["annotator1_round1"]  # the rows still say whose they are
    assert_user_error(
        run_cli("check", "--source", copy),
        "config 'annotator2' declares its `markup` column as ['annotator1_round1']",
    )


def test_build_without_markup_column(copy):
    """A build made before rows named their mark-up (no markup column in annotator2's file): `check` refuses it
    saying the rows carry no mark-up and to rebuild."""
    import pyarrow.parquet as pq

    path = copy / "annotator2" / PARQUET
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["markup"]), path)
    assert_user_error(
        run_cli("check", "--source", copy),
        f"{path}: its rows carry no `markup` column",
        "cryonuseg-hf build --overwrite",
    )


# ------------------------------------------------------------------------------------------------ build


def test_build_out_below_a_file(release_path, tmp_path):
    """build --out below a regular file: refused before decoding (seconds), naming the file, no raw errno."""
    (tmp_path / "notes.txt").write_text("keep")
    with bounded(15, 100):
        result = run_cli("build", "--source", release_path, "--out", tmp_path / "notes.txt" / "cryonuseg")
    assert_user_error(result, f"{tmp_path / 'notes.txt'} is a file, not a folder")
    assert "[Errno" not in result.err and tree_state(tmp_path) == {"notes.txt": b"keep"}


def test_build_disk_too_small(release_path, tmp_path, monkeypatch):
    """build onto a disk with 10 MB free: refused before decoding, with the estimate and the free space, and
    nothing written."""
    import cryonuseg_hf.data.build

    monkeypatch.setattr(cryonuseg_hf.data.build, "free_bytes", lambda path: 10_000_000)
    with bounded(15, 100):
        result = run_cli("build", "--source", release_path, "--out", tmp_path / "cryonuseg")
    assert_user_error(result, f"{tmp_path / 'cryonuseg'}: the build needs about 92 MB", "10 MB free", "--out")
    assert not list(tmp_path.iterdir())


def test_build_zip_too_large_to_extract(tmp_path, monkeypatch):
    """A release zip whose members need more room than the extraction disk has: refused before extracting."""
    import tempfile

    import cryonuseg_hf.data.release

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "cache"))
    monkeypatch.setattr(cryonuseg_hf.data.release, "free_bytes", lambda path: 1000)
    archive = tmp_path / "release.zip"
    archive.write_bytes(zip_bytes({"tissue images/Human_Skin_01.tif": bytes(3_000_000)}))
    with bounded(10, 100):
        result = run_cli("build", "--source", archive, "--out", tmp_path / "out")
    assert_user_error(result, f"{archive}: extracting it needs 3 MB", "0 MB free", "as --source")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_build_source_file_unreadable(release, tmp_path):
    """A release whose tile Human_Skin_02.tif cannot be read (an I/O error): refused before decoding, naming the
    file and the problem in words."""
    root = mirror_release(release.root, tmp_path / "release")
    tile = root / release.images["Human_Skin_02"].relative_to(release.root)
    tile.unlink()
    tile.symlink_to("/proc/self/mem")  # opens, then fails to read: an I/O error even for root
    with bounded(15, 100):
        result = run_cli("build", "--source", root, "--out", tmp_path / "cryonuseg")
    assert_user_error(result, f"{tile}: cannot be read (Input/output error)")
    assert "[Errno" not in result.err and not (tmp_path / "cryonuseg").exists()


def test_build_disk_fills_while_writing(copy, release_path, monkeypatch):
    """The disk fills while build --overwrite writes a Parquet file: exit 2 naming the user's path and the
    problem (no '[Errno 28]', no hidden staging path), the previous build intact and no stage left."""
    import cryonuseg_hf.data.build

    def full(rows, path, markup):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cryonuseg_hf.data.build, "write_config", full)
    before = tree_state(copy)
    result = run_cli("build", "--source", release_path, "--out", copy, "--overwrite")
    assert_user_error(
        result, f"{copy / 'annotator1_round1' / PARQUET}: No space left on device", "free space there"
    )
    assert "[Errno" not in result.err and ".partial-" not in result.err
    assert tree_state(copy) == before and sorted(p.name for p in copy.parent.iterdir()) == ["cryonuseg"]


def test_stage_of_a_killed_build_is_swept(release_path, tmp_path):
    """A build killed while writing leaves its hidden stage beside --out; the next build deletes it, and keeps a
    look-alike folder of another scheme."""
    target = tmp_path / "cryonuseg"
    killed = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from cryonuseg_hf.core.files import staged_folder\n"
        "with staged_folder(Path(sys.argv[1])) as stage:\n"
        "    (stage / 'half.parquet').write_bytes(b'PAR1')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", killed, str(target)]).returncode == -9
    (stale,) = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    (tmp_path / ".cryonuseg.partial-mine").mkdir()  # not a stage this package named: never touched
    assert run_cli("build", "--source", release_path, "--out", target).code == 0
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cryonuseg.partial-mine", "cryonuseg"]


def test_stage_of_a_killed_file_set_is_swept(tmp_path):
    """staged_files killed while writing leaves a .writing-* stage: the next write in that folder deletes it."""
    from cryonuseg_hf.core.files import staged_files

    killed = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from cryonuseg_hf.core.files import staged_files\n"
        "with staged_files({'a': Path(sys.argv[1])}) as twin:\n"
        "    twin['a'].write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", killed, str(tmp_path / "a.txt")]).returncode == -9
    (stale,) = tmp_path.glob(".writing-*")
    with staged_files({"b": tmp_path / "b.txt"}) as twin:
        twin["b"].write_text("b")
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
