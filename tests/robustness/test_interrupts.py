"""Ctrl-C and bugs as a user meets them: a real ``cryonuseg-hf`` process, a real SIGINT, and what it leaves."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustness.helpers import run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "cryonuseg_hf" / "examples"


def _interrupt(argv: list[str], ready, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start ``cryonuseg-hf argv``, send SIGINT (Ctrl-C) once ``ready()`` is true (polled; at most 120 s);
    (exit code, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cryonuseg_hf.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    deadline = time.monotonic() + 120
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def _sets(folder: Path) -> dict[str, set[str]]:
    """Output file name -> the suffixes written for it (``Human_Larynx_01_labels.tif`` -> ``_labels.tif``)."""
    sets: dict[str, set[str]] = {}
    for path in folder.iterdir():
        stem = (
            path.name.split(".")[0].removesuffix("_labels").removesuffix("_nuclei").removesuffix("_overlay")
        )
        stem = stem.removesuffix("_RoiSet")
        sets.setdefault(stem, set()).add(path.name[len(stem) :])
    return sets


def test_ctrl_c_in_predict(tmp_path):
    """Ctrl-C while predict works through 12 images (once the second is written): exit 130, one line and no traceback, every image's output
    set whole or absent, and no staging folder left behind."""
    images = tmp_path / "images"
    images.mkdir()
    for k in range(12):
        shutil.copy(EXAMPLES / "Human_Larynx_01.png", images / f"tile_{k:02d}.png")
    out = tmp_path / "out"
    code, err = _interrupt(
        ["predict", str(images), "-o", str(out)], ready=lambda: (out / "tile_01_nuclei.csv").exists()
    )
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err, err[-2000:]
    written = _sets(out) if out.exists() else {}
    assert len(written) < 12, "the run ended before the interrupt: give it more images"
    full = max(written.values(), key=len) if written else set()
    assert all(suffixes == full for suffixes in written.values()), written
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".writing")]


def test_ctrl_c_in_build(tmp_path, release_path):
    """Ctrl-C while build decodes the release: exit 130, one line and no traceback (the worker processes
    included), and no output folder or staging folder left."""
    out = tmp_path / "built"
    started = time.monotonic()
    code, err = _interrupt(
        ["build", "--source", str(release_path), "--out", str(out)],
        ready=lambda: any(tmp_path.glob(".built.partial-*")) or time.monotonic() - started > 4,
    )
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err, err[-2000:]
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".writing")]


def test_an_unexpected_error_is_one_line_with_the_way_to_report_it(monkeypatch):
    """A bug (an exception no check foresaw) reaches the user as one line naming it and asking for a report
    with -v; with -v the traceback is shown."""
    from cryonuseg_hf.cli import evaluate

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(evaluate, "cmd_agreement", broken)  # the parser is built per run: it takes the patch
    result = run_cli("agreement")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert "unexpected error: KeyError" in result.err and "-v" in result.err
    with pytest.raises(KeyError):
        run_cli("-v", "agreement")


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    """A folder ``root/start`` holding ``files``."""
    folder = root / "start"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


SEGFORMER = {"config.json": b'{"model_type": "segformer"}'}


@pytest.mark.parametrize(
    "files, fragment",
    [
        (None, "no such folder"),
        ({"config.json": b'{"model_type": "bert"}'}, "'bert' checkpoint, not a SegFormer"),
        ({}, "no config.json"),
        ({"config.json": b"{not json"}, "not a JSON object"),
        (SEGFORMER, "no model.safetensors or pytorch_model.bin"),
        ({**SEGFORMER, "model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{"}, "damaged or cut short"),
    ],
    ids=["missing", "not-segformer", "no-config", "config-not-json", "no-weights", "cut-weights"],
)
def test_train_init_that_is_not_a_segformer(tmp_path, files, fragment):
    """train --init naming something that is not a SegFormer start point: refused at once, before any data is
    read, naming the folder and what a start point is (was: a traceback after a minute of work)."""
    from robustness.helpers import assert_user_error, bounded

    init = tmp_path / "missing" if files is None else _folder(tmp_path, files)
    with bounded(seconds=20, megabytes=200):
        result = run_cli("train", "--init", str(init), "--fold", "0", "--data", str(tmp_path / "no-data"))
    assert_user_error(result, str(init), fragment)
