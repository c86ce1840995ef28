"""All-or-nothing writing: the one way the package puts files and folders in place.

Everything is first written under a temporary name beside its target (same folder, so the final rename is atomic
on one file system), and renamed into place only when all of it is complete. An exception, Ctrl-C included,
leaves the old files (or nothing) where they were, never a half-written file or a mix of old and new.

- :func:`staged_files`: several files that belong together (the outputs of one image or one slide, one training
  state): all of them or none.
- :func:`staged_folder`: a whole folder (a dataset build, an extracted release, a Hub export).

:func:`ensure_writable_folder` checks an output folder before any work is done.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

K = TypeVar("K")


@contextmanager
def staged_files(paths: Mapping[K, Path]) -> Iterator[dict[K, Path]]:
    """Temporary twins of ``paths`` to write into, renamed onto ``paths`` together when the block ends without an
    exception; on an exception every twin is deleted and the old files stay.

    Files that are replaced are moved aside first and put back if a rename fails, so a failure leaves either the
    old set or nothing, never a mix. A twin the block did not create is not an error when its target is left
    alone: only twins that exist are put in place.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> with staged_files({"a": folder / "a.txt"}) as twin:
    ...     _ = twin["a"].write_text("new")
    >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
    ('new', ['a.txt'])
    >>> try:
    ...     with staged_files({"a": folder / "a.txt"}) as twin:
    ...         _ = twin["a"].write_text("half")
    ...         raise KeyboardInterrupt
    ... except KeyboardInterrupt:
    ...     pass
    >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
    ('new', ['a.txt'])
    """
    paths = {key: Path(path) for key, path in paths.items()}
    folders = {path.parent for path in paths.values()}
    aside = {folder: Path(tempfile.mkdtemp(prefix=".writing-", dir=folder)) for folder in folders}
    twins = {key: aside[path.parent] / path.name for key, path in paths.items()}
    try:
        yield twins
        _swap_in({twins[key]: paths[key] for key in paths if twins[key].exists()}, aside)
    finally:
        for folder in aside.values():
            shutil.rmtree(folder, ignore_errors=True)


def _swap_in(moves: dict[Path, Path], aside: dict[Path, Path]) -> None:
    """Rename every ``new -> target`` together: old targets go aside first and come back on failure."""
    moved_aside: list[Path] = []
    placed: list[Path] = []

    def old(target: Path) -> Path:
        return aside[target.parent] / f"old-{target.name}"

    try:
        for target in moves.values():
            if target.exists() or target.is_symlink():
                os.replace(target, old(target))
                moved_aside.append(target)
        for new, target in moves.items():
            os.replace(new, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            _remove(target)
        for target in moved_aside:
            os.replace(old(target), target)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def staged_folder(target: Path, mode: int = 0o755) -> Iterator[Path]:
    """A temporary folder beside ``target`` to fill, renamed onto ``target`` when the block ends without an
    exception (an old ``target`` is removed only after the new one is in place); on an exception it is deleted
    and an old ``target`` stays.

    The caller decides beforehand whether an existing ``target`` may be replaced.

    >>> import tempfile; target = Path(tempfile.mkdtemp()) / "build"
    >>> with staged_folder(target) as folder:
    ...     _ = (folder / "README.md").write_text("v1")
    >>> with staged_folder(target) as folder:
    ...     _ = (folder / "README.md").write_text("v2")
    >>> (target / "README.md").read_text(), sorted(p.name for p in target.parent.iterdir())
    ('v2', ['build'])
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, mode)  # mkdtemp makes it 0700; a published folder should be readable
        if target.is_dir() and not target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            target.rename(old)
            try:
                staging.rename(target)
            except BaseException:
                old.rename(target)
                raise
            shutil.rmtree(old)
        else:
            if target.exists() or target.is_symlink():
                target.unlink()
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def ensure_writable_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there, before any work is done."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: output path exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(
            f"{path}: cannot write to the output folder ({error.strerror or error})"
        ) from None
    return path
