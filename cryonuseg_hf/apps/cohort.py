"""A cohort of whole slides on Dask distributed: one task per slide, resumable, and one bad slide fails alone.

``cryonuseg-hf predict`` runs several slides (a folder, a glob, a list file; :func:`find_slides`) as a cohort
(:func:`run_cohort`):

- The cluster: a Dask ``LocalCluster`` by default, sized by :func:`local_cluster_size` (one worker per GPU, else
  one per core), or an existing Dask scheduler by its address (``--cluster tcp://host:8786``). Dask because it
  is pure Python (``pip install "dask[distributed]"``), starts a local cluster inside the command with nothing
  to set up, and reaches the clusters people already run: ``dask scheduler`` and ``dask worker`` by hand, or
  dask-jobqueue on SLURM and PBS. Every worker must see the slides, the model and the output folder at the
  same paths.
- Each slide is one task (:func:`predict_one`) that writes the slide's outputs as
  :func:`~cryonuseg_hf.model.slides.predict.predict_slide` does, all or nothing, and returns the slide's row of
  the summary. A slide that fails (unreadable, truncated, not H&E, ...) becomes a row with its error and the
  others go on; a worker that dies (out of memory) is replaced by the cluster, its slide tried again, then
  reported.
- Resumable: a slide whose outputs are all there is skipped (``done earlier``), so a run started again after a
  crash or Ctrl-C predicts only what is left; ``--overwrite`` predicts every slide again.
- Memory: a worker predicts one slide at a time, whatever its thread count, so it holds what ``predict`` holds
  for one slide (the model, one block and its labels).
- The model is loaded once per worker (:func:`worker_predictor`), by the first slide the worker gets.
- Progress: a bar over the slides with the nuclei found so far and the time left, and a log line per slide.
- The summary (:mod:`cryonuseg_hf.reports.cohort`): ``cohort_summary.csv`` and ``cohort_summary.md`` in the
  output folder, written at the end of the run, an interrupted one included.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.files import ensure_writable_folder
from cryonuseg_hf.model.images import IMAGE_SUFFIXES, find_images
from cryonuseg_hf.model.predict import load_predictor
from cryonuseg_hf.model.slides.outputs import slide_output_paths
from cryonuseg_hf.model.slides.predict import predict_slide
from cryonuseg_hf.model.slides.reader import is_slide
from cryonuseg_hf.reports.cohort import count, write_cohort_summary

logger = logging.getLogger(__name__)

LIST_SUFFIX = ".txt"
"""A file of slide paths, one per line, has this suffix."""
GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class ModelChoice:
    """How each worker loads the model: the arguments of :func:`~cryonuseg_hf.model.predict.load_predictor`."""

    model: str | None = None
    device: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    head: str = "stock"
    precision: str = "fp32"
    phases: int = 1


# ------------------------------------------------------------------------------------------------- the inputs


def find_slides(items: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """The whole slides among the inputs of ``predict``, and the rest (images, and paths that do not exist).

    An item is a file; a folder (its slides and images, not its subfolders; the outputs a prediction wrote there
    are skipped); a glob pattern (``"scans/**/*.svs"``, quoted so that the shell leaves it to us); or a ``.txt``
    file listing such items one per line (relative to the list's folder; blank lines and ``#`` comments are
    skipped). Each slide comes once, in the order found. A pattern that matches nothing is kept as a path that
    does not exist, so that it is reported as such. A truncated pyramidal TIFF is a slide
    (:func:`~cryonuseg_hf.model.slides.reader.is_slide`), and the slide reader says that it is damaged.
    """
    slides: list[Path] = []
    others: list[Path] = []
    for path in _expand(items):
        target = slides if is_slide(path) else others
        if path not in target:
            target.append(path)
    return slides, others


def _expand(items: Iterable[str | os.PathLike], base: Path | None = None) -> Iterator[Path]:
    for item in items:
        path = Path(item) if base is None or Path(item).is_absolute() else base / item
        if path.is_dir():
            yield from _folder_inputs(path)
        elif path.suffix.lower() == LIST_SUFFIX and path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            yield from _expand([ln for ln in lines if ln and not ln.startswith("#")], path.parent)
        elif any(c in str(item) for c in GLOB_CHARACTERS) and not path.exists():
            matches = sorted(glob.glob(str(path), recursive=True))
            yield from _expand(matches) if matches else [path]
        else:
            yield path


def _folder_inputs(folder: Path) -> list[Path]:
    """A folder's slides and images, sorted, without the outputs a prediction wrote there."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    slides = [p for p in files if is_slide(p)]
    ours = {out for s in slides for out in slide_output_paths(folder, s.stem).values()}
    slides = [p for p in slides if p not in ours]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p not in ours and p not in slides]
    if images:  # find_images knows the outputs of image predictions
        images = [p for p in find_images([folder]) if p in images]
    if not slides and not images:
        logger.warning("%s: folder holds no slide and no %s image", folder, "/".join(IMAGE_SUFFIXES))
    return sorted(slides + images)


def finished_summary(
    slide: str | os.PathLike, out_dir: str | os.PathLike, labels: bool = False
) -> dict | None:
    """The summary of an earlier prediction of ``slide`` into ``out_dir`` when all its outputs are there, else
    None. Outputs are written all at once, so a set that is there is complete."""
    paths = slide_output_paths(out_dir, Path(slide).stem)
    if not labels:
        paths.pop("labels")
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if Path(str(summary.get("slide", ""))).name == Path(slide).name else None


# -------------------------------------------------------------------------------------------------- the workers


def local_cluster_size(device: str = "auto", workers: int | None = None, threads: int | None = None):
    """Workers of a local cluster and the model's threads in each: one worker per GPU (unless ``device`` is
    ``cpu``), else one per ``threads`` cores (one per core by default); the threads default to the cores shared
    out among the workers. Returns ``(workers, threads)``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = 0
    if device != "cpu":
        import torch

        gpus = torch.cuda.device_count()
    if workers is None:
        workers = gpus or max(1, cores // (threads or 1))
    return workers, threads or max(1, cores // workers)


_ONE_SLIDE_AT_A_TIME = threading.Lock()
"""A worker with several threads still predicts one slide at a time: its memory stays that of one slide."""
_PREDICTORS: dict[ModelChoice, Any] = {}


def worker_predictor(choice: ModelChoice) -> tuple[Any, float | None]:
    """The model of this worker process, loaded by the first slide that needs it, and the seconds that took
    (None: the worker had it already). On a machine with several GPUs, worker ``k`` of a local cluster uses GPU
    ``k`` (an existing cluster's workers are given theirs by ``CUDA_VISIBLE_DEVICES``)."""
    if choice in _PREDICTORS:
        return _PREDICTORS[choice], None
    started = time.perf_counter()
    if choice.device != "cpu":
        import torch

        name = _worker_name()
        if torch.cuda.device_count() > 1 and name.isdigit():
            torch.cuda.set_device(int(name) % torch.cuda.device_count())
    _PREDICTORS[choice] = load_predictor(
        choice.model,
        choice.device,
        choice.backend,
        choice.threads,
        choice.head,
        choice.precision,
        choice.phases,
    )
    return _PREDICTORS[choice], time.perf_counter() - started


def _worker_name() -> str:
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:  # not on a worker: run in this process
        return "local"


def predict_one(slide: str, out_dir: str, choice: ModelChoice, options: dict[str, Any]) -> dict[str, Any]:
    """Predict one slide on a worker; return its row of the summary. An error becomes the row's, not an
    exception, so that one bad slide does not stop the cohort.

    Args:
        slide, out_dir: as :func:`~cryonuseg_hf.model.slides.predict.predict_slide` takes them.
        choice: the model.
        options: the other arguments of ``predict_slide`` (``mpp``, ``roi``, ``labels``, ``overwrite``, ...).
    """
    worker = _worker_name()
    with _ONE_SLIDE_AT_A_TIME:
        started, loaded = time.perf_counter(), None
        try:
            predictor, loaded = worker_predictor(choice)
            started = time.perf_counter()
            summary = predict_slide(slide, out_dir, predictor, progress=False, **options)
        except Exception as error:  # every kind a slide can fail with; the worker goes on with the next
            message = (
                str(error) if isinstance(error, (OSError, ValueError)) else f"{type(error).__name__}: {error}"
            )
            return slide_row(
                slide, "failed", seconds=time.perf_counter() - started, error=message.removeprefix(f"{slide}: "),
                worker=worker, model_load_seconds=loaded,
            )  # fmt: skip
    return slide_row(
        slide, "done", summary=summary, seconds=time.perf_counter() - started, worker=worker,
        model_load_seconds=loaded,
    )  # fmt: skip


def slide_row(
    slide: str | os.PathLike,
    status: str,
    *,
    summary: dict | None = None,
    seconds: float | None = None,
    error: str = "",
    worker: str = "",
    model_load_seconds: float | None = None,
) -> dict[str, Any]:
    """One row of the cohort summary (:data:`cryonuseg_hf.reports.cohort.COLUMNS`); blanks where unknown."""
    summary = summary or {}
    return {
        "slide": str(slide),
        "status": status,
        "tissue_mm2": summary.get("tissue_mm2", ""),
        "nuclei": summary.get("nuclei", ""),
        "seconds": "" if seconds is None else round(seconds, 2),
        "error": error,
        "worker": worker,
        "model_load_seconds": "" if model_load_seconds is None else round(model_load_seconds, 2),
        "peak_memory_mb": _peak_memory_mb() if worker else "",
    }


def _peak_memory_mb() -> float | str:
    """The largest resident memory this process has had, MB ('' where the system does not say)."""
    try:
        import resource
    except ImportError:
        return ""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


@contextlib.contextmanager
def cohort_client(cluster: str | None, workers: int, threads: int) -> Iterator[tuple[Any, str]]:
    """A Dask client of the scheduler at ``cluster``, or of a local cluster of ``workers`` processes (one task
    thread each; ``threads`` is the model's); yields ``(client, what it is, in words)``. Dask's own messages
    below warnings are kept out of the way of the progress bar."""
    import distributed  # its import sets the level of its loggers

    dask_logger = logging.getLogger(distributed.__name__)
    level = dask_logger.level
    dask_logger.setLevel(max(level, logging.WARNING))
    try:
        yield from _client(cluster, workers, threads)
    finally:
        dask_logger.setLevel(level)


def _client(cluster: str | None, workers: int, threads: int) -> Iterator[tuple[Any, str]]:
    from distributed import Client, LocalCluster

    if cluster:
        with Client(cluster, timeout="30s") as client:
            yield client, cluster
        return
    with _workers_ignore_ctrl_c():
        local = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        )  # fmt: skip
    with local, Client(local) as client:
        yield client, f"a local cluster, {threads} model thread(s) per worker"


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Processes started inside ignore Ctrl-C (an ignored signal stays ignored in a child): this process stops
    the cluster on Ctrl-C, and the workers do not each print a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------------- the run


def run_cohort(
    slides: list[Path],
    out_dir: str | os.PathLike,
    choice: ModelChoice,
    *,
    cluster: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predict every slide on a Dask cluster and write the cohort summary into ``out_dir``.

    Args:
        slides: the slides (:func:`find_slides`); outputs go to ``out_dir`` by file stem, as ``predict`` puts them.
        out_dir: output folder (created).
        choice: the model each worker loads; its ``threads`` default to the cores shared out among the workers
            of a local cluster.
        cluster: the address of a running Dask scheduler; None starts a local cluster.
        workers: workers of the local cluster (default: :func:`local_cluster_size`).
        overwrite: predict slides whose outputs are there again (else they are skipped as ``done earlier``).
        progress: a progress bar over the slides.
        options: the other arguments of :func:`~cryonuseg_hf.model.slides.predict.predict_slide`.

    Returns:
        ``(rows, run)``: one row per slide in the order given, and what the run was (workers, cluster, seconds,
        interrupted), as :func:`~cryonuseg_hf.reports.cohort.write_cohort_summary` writes them.

    Raises:
        KeyboardInterrupt: after the summary of what was done is written (the slides not done are ``not run``).
    """
    out_dir = ensure_writable_folder(out_dir)
    rows, todo = plan(slides, out_dir, overwrite, bool(options.get("labels")))
    started = time.perf_counter()
    size, threads = local_cluster_size(choice.device, workers, choice.threads)
    choice = replace(choice, threads=choice.threads or threads)
    run = {"workers": 0, "cluster": cluster or "local", "seconds": 0.0, "interrupted": False}
    try:
        if todo:
            with cohort_client(cluster, size, choice.threads) as (client, where):
                run["workers"] = len(client.scheduler_info()["workers"])
                logger.info("%d slides to predict on %d workers (%s)", len(todo), run["workers"], where)
                _gather(client, slides, todo, rows, out_dir, choice, options, progress)
    except KeyboardInterrupt:  # the summary says what was done; the same command again does the rest
        run["interrupted"] = True
    labels = bool(options.get("labels"))
    for i in set(range(len(slides))) - set(rows):  # interrupted: some slides may have finished as it stopped
        earlier = finished_summary(slides[i], out_dir, labels)
        rows[i] = (
            slide_row(slides[i], "not run")
            if earlier is None
            else slide_row(slides[i], "done", summary=earlier, seconds=earlier.get("seconds"))
        )
    run["seconds"] = round(time.perf_counter() - started, 2)
    ordered = [rows[i] for i in range(len(slides))]
    write_cohort_summary(ordered, run, out_dir)
    if run["interrupted"]:
        raise KeyboardInterrupt
    return ordered, run


def plan(
    slides: list[Path], out_dir: Path, overwrite: bool, labels: bool
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """The rows known before any work (slides done earlier; names that would collide) and the slides to do."""
    rows: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    seen: dict[str, Path] = {}
    for i, slide in enumerate(slides):
        earlier = None if overwrite else finished_summary(slide, out_dir, labels)
        if slide.stem in seen:
            rows[i] = slide_row(
                slide, "failed", error=f"same name as {seen[slide.stem]}; its outputs would collide"
            )
        elif earlier is not None:
            rows[i] = slide_row(slide, "done earlier", summary=earlier, seconds=earlier.get("seconds"))
        else:
            todo.append(i)
        seen.setdefault(slide.stem, slide)
    return rows, todo


def _gather(client, slides, todo, rows, out_dir, choice, options, progress) -> None:
    """Submit the slides in ``todo`` and put each row in ``rows`` as it comes; Ctrl-C cancels the others."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    futures = {
        client.submit(
            predict_one, str(slides[i]), str(out_dir), choice, options, key=f"slide-{i}-{slides[i].stem}",
            pure=False,
        ): i
        for i in todo
    }  # fmt: skip
    bar = tqdm(
        total=len(slides), initial=len(slides) - len(todo), unit="slide", desc="cohort", disable=not progress
    )
    try:
        for future in as_completed(futures):
            i = futures[future]
            try:
                rows[i] = future.result()
            except (
                Exception
            ) as error:  # the worker died each time it was tried (KilledWorker), or the cluster went
                rows[i] = slide_row(slides[i], "failed", error=f"{type(error).__name__}: {error}")
            _report(rows[i])
            bar.update(1)
            finished = [r for r in rows.values() if r["status"] in ("done", "done earlier")]
            bar.set_postfix(
                nuclei=sum(int(r["nuclei"]) for r in finished), failed=count(rows.values())["failed"]
            )
    except KeyboardInterrupt:
        client.cancel(list(futures))
        raise
    finally:
        bar.close()


def _report(row: dict[str, Any]) -> None:
    if row["status"] == "done":
        logger.info(
            "%s: %s nuclei in %.2f mm² of tissue, %.0f s (worker %s)",
            row["slide"], row["nuclei"], float(row["tissue_mm2"]), float(row["seconds"]), row["worker"],
        )  # fmt: skip
    else:
        logger.warning("%s: %s: %s", row["slide"], row["status"], row["error"])
