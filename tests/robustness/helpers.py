"""Bad inputs made from the real release and real tiles, and a way to run the CLI as a user does.

Every case starts from real files: a release is mirrored into ``tmp_path`` as symlinks (fast), and only the
files a case damages are replaced by real, damaged copies, never written through to the release.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class CliResult:
    """What a user sees: the exit code, stdout and stderr of one ``cryonuseg-hf`` run, and how long it took."""

    code: int
    out: str
    err: str
    seconds: float


def run_cli(*argv: str) -> CliResult:
    """Run ``cryonuseg-hf argv`` in this process; parser errors (SystemExit) become exit codes, as in a shell."""
    from cryonuseg_hf.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue(), time.perf_counter() - start)


def assert_user_error(result: CliResult, *fragments: str, code: int = 2) -> None:
    """The run failed with ``code``, printed no traceback, and its message holds every fragment."""
    text = result.err + result.out
    assert result.code == code, (result.code, text[-2000:])
    assert "Traceback" not in text, text[-2000:]
    for fragment in fragments:
        assert fragment in text, (fragment, text[-2000:])


def mirror_release(source: Path, target: Path) -> Path:
    """A copy of a release folder made of symlinks to the real files; replace a link to damage one file."""
    for folder, _, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in files:
            (target / relative / name).symlink_to(Path(folder) / name)
    return target


def replace_file(path: Path, data: bytes) -> Path:
    """Put ``data`` where the symlink ``path`` was (never writing through to the real release)."""
    path.unlink()
    path.write_bytes(data)
    return path


def swap_files(a: Path, b: Path) -> None:
    """Swap two mirrored files (their symlink targets)."""
    target_a, target_b = os.readlink(a), os.readlink(b)
    a.unlink()
    b.unlink()
    a.symlink_to(target_b)
    b.symlink_to(target_a)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray, **options) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def png_bytes(array: np.ndarray, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def tree_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), to prove that nothing was written or replaced."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_checkpoint(target: Path) -> Path:
    from cryonuseg_hf import MODEL_PATH

    shutil.copytree(MODEL_PATH, target)
    return target


BOUNDED_MARK = "bounded:"
"""How :func:`bounded` prints what a block used, for ``benchmarks/robustness_report.py`` to read back."""


@dataclass
class Cost:
    """What a bounded block used: wall-clock seconds and the peak of Python and numpy allocations in MB."""

    seconds: float = 0.0
    peak_mb: float = 0.0


@contextlib.contextmanager
def bounded(seconds: float, megabytes: float):
    """Assert that the block ends within ``seconds`` and its allocations peak below ``megabytes``.

    The peak is ``tracemalloc``'s, which sees Python objects and numpy arrays (numpy reports its buffers to it);
    memory that torch or a C library allocates on its own is not counted. The bounds are generous on purpose:
    they tell "refused or done at once" from "worked for minutes / asked for gigabytes", not one speed from another.
    Tracing makes Python allocations slow (importing ``transformers`` under it takes about a minute): import the
    heavy modules a case needs before the block, or let a first, untraced call import them.
    Yields a :class:`Cost` filled in when the block ends (also when it raises), and prints it (one line starting
    with :data:`BOUNDED_MARK`) when the block ends normally.
    """
    import tracemalloc

    cost = Cost()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - start
        cost.peak_mb = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        if not tracing:
            tracemalloc.stop()
    print(f"{BOUNDED_MARK} {cost.seconds:.2f} s, {cost.peak_mb:.0f} MB (bounds {seconds} s, {megabytes} MB)")
    assert cost.seconds < seconds, f"took {cost.seconds:.1f} s, bound {seconds} s"
    assert cost.peak_mb < megabytes, f"allocated {cost.peak_mb:.0f} MB at the peak, bound {megabytes} MB"


def claimed_tiff(array: np.ndarray, height: int, width: int) -> bytes:
    """TIFF bytes of ``array`` whose header claims ``height`` x ``width``."""
    import tifffile

    buffer = io.BytesIO(tiff_bytes(array))
    with tifffile.TiffFile(buffer, mode="r+b") as tiff:
        tiff.pages[0].tags["ImageWidth"].overwrite(width)
        tiff.pages[0].tags["ImageLength"].overwrite(height)
    return buffer.getvalue()


def claimed_png(array: np.ndarray, height: int, width: int) -> bytes:
    """PNG bytes of ``array`` whose IHDR claims ``height`` x ``width`` (CRC fixed)."""
    data = bytearray(png_bytes(array))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)
