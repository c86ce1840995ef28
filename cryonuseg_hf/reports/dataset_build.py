"""The published dataset folder: one Parquet file per mark-up (rows from :mod:`cryonuseg_hf.data.builder`), and
the dataset card with the human agreement, written all-or-nothing.

``load_dataset(<folder>)`` reads what :func:`build` writes; ``cryonuseg-hf build`` runs it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from cryonuseg_hf.data.builder import (
    PARQUET_NAME,
    check_output_folder,
    check_release,
    encode_images,
    features,
    generate_examples,
    load_metadata,
    summarize,
    write_config,
)
from cryonuseg_hf.data.release import MARKUPS, default_source, open_release
from cryonuseg_hf.evaluation.agreement import human_agreement
from cryonuseg_hf.reports.dataset_card import render_card

logger = logging.getLogger(__name__)


def build(
    source: str | Path | None,
    out_dir: str | Path,
    overwrite: bool = False,
    markups: tuple[str, ...] = MARKUPS,
    agreement: dict | None = None,
    timings: dict | None = None,
) -> Path:
    """Build the Hub dataset folder: ``<config>/train-00000-of-00001.parquet`` per mark-up plus ``README.md``.

    The folder is written into a temporary sibling and renamed at the end, so a failed build leaves nothing
    behind and a previous build stays intact until the new one is complete.

    Args:
        source: the raw release folder or Kaggle zip (``None``: :func:`cryonuseg_hf.data.release.default_source`).
        out_dir: the folder to create (its name is what ``load_dataset(<name>)`` finds from its parent).
        overwrite: replace a previous build in ``out_dir``; other content is never deleted.
        markups: the configs to build (all three by default).
        agreement: the human agreement (:func:`cryonuseg_hf.evaluation.agreement.human_agreement`) shown in the card;
            computed here from the same release when omitted (about a second) and all three mark-ups are built.
        timings: if given, filled with seconds per stage (``open``, ``images``, each mark-up, ``card``, ``total``).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        FileExistsError: ``out_dir`` holds something (see :func:`cryonuseg_hf.data.builder.check_output_folder`).
        ReleaseError, ValueError: the release is incomplete or a file is bad; the message names it.
    """
    import time

    start = time.perf_counter()
    clock = {"last": start}

    def lap(name: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[name] = round(now - clock["last"], 3)
        clock["last"] = now

    out_dir = Path(out_dir).absolute()
    unknown = [m for m in markups if m not in MARKUPS]
    if unknown or not markups:
        raise ValueError(f"unknown or no mark-ups {unknown or markups}; expected some of {MARKUPS}")
    check_output_folder(out_dir, overwrite)
    release = open_release(default_source() if source is None else source, markups=tuple(markups))
    check_release(release, tuple(markups))
    metadata = load_metadata(release)
    lap("open")
    images = encode_images(release)
    lap("images")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        splits, summaries = {}, {}
        for markup in MARKUPS:
            if markup not in markups:
                continue
            rows = [row for _, row in generate_examples(release, markup, metadata, images)]
            splits[markup] = write_config(rows, partial / markup / PARQUET_NAME)
            summaries[markup] = summarize(rows)
            logger.info("%s: %d tiles, %d ROIs", markup, len(rows), summaries[markup]["n_nuclei"])
            lap(markup)
        if agreement is None and set(markups) == set(MARKUPS):
            agreement = human_agreement(release)
            lap("agreement")
        card = render_card(splits, summaries, features(), metadata, agreement)
        (partial / "README.md").write_text(card, encoding="utf-8")
        lap("card")
        os.chmod(partial, 0o755)  # mkdtemp makes it 0700; a published folder should be readable
        _replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if timings is not None:
        timings["total"] = round(time.perf_counter() - start, 3)
    return out_dir


def _replace(partial: Path, out_dir: Path) -> None:
    """Move the finished build into place; an old build (checked before) is removed only after the swap."""
    if not out_dir.exists():
        partial.rename(out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        partial.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old.rmdir()
    out_dir.rename(old)
    partial.rename(out_dir)
    shutil.rmtree(old)
