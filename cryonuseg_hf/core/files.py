"""All-or-nothing writing: the one way the package puts files and folders in place.

Everything is first written under a temporary name beside its target (same folder, so the final rename is atomic
on one file system), and renamed into place only when all of it is complete. An exception, Ctrl-C included,
leaves the old files (or nothing) where they were, never a half-written file or a mix of old and new.

- :func:`staged_files`: several files that belong together (the outputs of one image or one slide, one training
  state): all of them or none.
- :func:`staged_folder`: a whole folder (a dataset build, an extracted release, a Hub export).

:func:`ensure_writable_folder` checks an output folder before any work is done; :func:`check_can_create` and
:func:`free_bytes` check where a folder will go before it is made.

A staging name says who made it: ``.writing-<host>-<pid>-<random>`` (:func:`staged_files`) and
``.<target>.partial-<host>-<pid>-<random>`` / ``.<target>.old-...`` (:func:`staged_folder`). A run that was killed
leaves its stage behind; the next write beside it deletes the stages of processes of this host that no longer run
(:func:`sweep_stale_stages`), and nothing else. Errors while staging name the user's path, never the hidden stage,
and the problem in words, never a bare ``[Errno 28]``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

K = TypeVar("K")

logger = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"
"""This machine, as stage names carry it: a stage of another machine (a shared disk) is never swept here."""

_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free space there or write elsewhere",
    errno.EACCES: "no permission to write there: write elsewhere",
    errno.EPERM: "no permission to write there: write elsewhere",
    errno.EROFS: "a read-only file system: write elsewhere",
}


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
    aside: dict[Path, Path] = {}
    try:
        for folder in {path.parent for path in paths.values()}:
            sweep_stale_stages(folder)
            aside[folder] = _make_stage(folder, "writing")
        twins = {key: aside[path.parent] / path.name for key, path in paths.items()}
        yield twins
        _swap_in({twins[key]: paths[key] for key in paths if twins[key].exists()}, aside)
    except OSError as error:
        raise shown_error(error, {stage: folder for folder, stage in aside.items()}) from None
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
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_stages(target.parent, target.name)
        staging = _make_stage(target.parent, f"{target.name}.partial")
        yield staging
        os.chmod(staging, mode)  # mkdtemp makes it 0700; a published folder should be readable
        if target.is_dir() and not target.is_symlink():
            old = _make_stage(target.parent, f"{target.name}.old")
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
    except OSError as error:
        raise shown_error(error, {staging: target} if staging is not None else {}, target) from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _make_stage(folder: Path, kind: str) -> Path:
    """A new, empty stage in ``folder`` named ``.<kind>-<host>-<pid>-<random>``."""
    return Path(tempfile.mkdtemp(prefix=f".{kind}-{_HOST}-{os.getpid()}-", dir=folder))


def _stage_pattern(target_name: str | None) -> re.Pattern:
    kinds = "writing" if target_name is None else rf"{re.escape(target_name)}\.(?:partial|old)"
    return re.compile(rf"^\.(?P<kind>{kinds})-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[a-z0-9_]+$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def sweep_stale_stages(folder: Path, target_name: str | None = None) -> list[Path]:
    """Delete the stages in ``folder`` left by runs of this host that were killed: those of
    :func:`staged_files` (``target_name`` None) or of :func:`staged_folder` for ``folder / target_name``.

    Only folders with this module's own stage names are touched, and only when the process that made them no
    longer runs. A stage that holds the previous version of its target (the run was killed in the instant
    between moving the old one aside and putting the new one in place) is kept while its target is missing,
    with a warning that says how to put it back.

    Returns:
        The stages deleted.
    """
    pattern = _stage_pattern(target_name)
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    swept = []
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or match["host"] != _HOST or int(match["pid"]) == os.getpid():
            continue
        if _running(int(match["pid"])) or not entry.is_dir() or entry.is_symlink():
            continue
        if _holds_the_only_copy(entry, match["kind"], folder, target_name):
            logger.warning(
                "%s: the previous version of what a stopped run was replacing; move it back into place by hand",
                entry,
            )
            continue
        shutil.rmtree(entry, ignore_errors=True)
        swept.append(entry)
    return swept


def _holds_the_only_copy(stage: Path, kind: str, folder: Path, target_name: str | None) -> bool:
    if kind.endswith(".old"):
        return not (Path(folder) / str(target_name)).exists()
    if kind == "writing":
        return any(
            p.name.startswith("old-") and not (Path(folder) / p.name[4:]).exists() for p in stage.iterdir()
        )
    return False


def shown_error(
    error: OSError, stages: dict[Path, Path] | None = None, target: Path | None = None, writing: bool = True
) -> OSError:
    """``error`` as a user should read it: the user's path instead of a stage's, and the problem in words with
    what to do, never a bare ``[Errno 28]``. Errors that carry no errno and no stage's path (messages written for
    users) come back unchanged.

    Args:
        error: what was raised.
        stages: stage -> the path it stands for (the target folder of :func:`staged_folder`, or the folder of
            :func:`staged_files`).
        target: the path to name when the error names none.
        writing: whether the error came from writing (adds what to do about a full disk or missing permission).

    >>> str(shown_error(OSError(28, "No space left on device", "/d/.out.partial-h-1-x/a.parquet"),
    ...                 {Path("/d/.out.partial-h-1-x"): Path("/d/out")}))
    '/d/out/a.parquet: No space left on device (the disk is full: free space there or write elsewhere)'
    """
    stages = stages or {}
    text = str(error)
    raw = re.compile(r"\[[Ee]rrno \d+\]\s*")
    if error.errno is None and not raw.search(text) and not any(str(s) in text for s in stages):
        return error
    path = error.filename if error.filename is not None else target
    problem = error.strerror or raw.sub("", text)
    for stage, shown in stages.items():
        problem = problem.replace(str(stage), str(shown))
        path = str(path).replace(str(stage), str(shown)) if path is not None else None
    code = error.errno or next((e for e in _HINTS if os.strerror(e) in text), None)
    hint = _HINTS.get(code) if writing or code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else None
    message = f"{path}: {problem}" if path is not None and str(path) not in problem else problem
    if hint:
        message += f" ({hint})"
    try:
        result = type(error)(message)
    except TypeError:  # a subclass with another constructor
        result = OSError(message)
    result.errno = error.errno
    return result


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the disk that holds ``path``, or would hold it (its nearest existing ancestor)."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_can_create(path: str | os.PathLike) -> Path:
    """Check, before any work, that the folder ``path`` takes new files: it is a folder that does, or it can be
    made (its nearest existing ancestor is a folder that takes a new file). Returns that folder or ancestor.

    Raises:
        NotADirectoryError: ``path`` or an ancestor is a file.
        PermissionError: the folder takes no new file (permissions, a read-only disk).
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    made = existing == path
    if not existing.is_dir():
        where = "is a file" if made else f"cannot be created, {existing} is a file"
        raise NotADirectoryError(f"{path}: {where}, not a folder; name a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        problem = error.strerror or str(error)
        hint = _HINTS.get(error.errno, "write elsewhere")
        where = "takes no new file" if made else f"cannot be created, {existing} takes no new file"
        raise PermissionError(f"{path}: {where} ({problem}; {hint})") from None
    return existing


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
