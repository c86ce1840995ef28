"""Predicting a whole slide: open it, find its tissue, stream its nuclei into the outputs, summarise the run.

:func:`predict_slide` writes QuPath GeoJSON (detections with measurements), a CSV of nuclei, an overview PNG
(thumbnail, tissue outline, nuclei density), a JSON summary, and a label pyramid when asked, as one set with
:func:`cryonuseg_hf.core.files.staged_files`: an interrupted run (Ctrl-C) leaves no half-written output.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.files import ensure_writable_folder, staged_files
from cryonuseg_hf.model.images import MAX_PIXELS
from cryonuseg_hf.model.postprocess import probabilities_to_instances
from cryonuseg_hf.model.predict import (
    BLEND_OVERLAP,
    Predictor,
    block_labeller,
    grid_step,
    load_predictor,
)
from cryonuseg_hf.model.slides.blocks import BLOCK_SIZE, BlockNuclei, SlideStats, slide_nuclei
from cryonuseg_hf.model.slides.outputs import slide_output_paths, write_nuclei
from cryonuseg_hf.model.slides.overview import count_centroids, write_overview
from cryonuseg_hf.model.slides.reader import Slide, open_slide
from cryonuseg_hf.model.slides.roi import Roi, clip_roi, roi_shape
from cryonuseg_hf.model.slides.tissue_map import TissueMap, tissue_map
from cryonuseg_hf.model.tiling import check_blend, tile_grid

logger = logging.getLogger(__name__)


def predict_slide(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: Any = None,
    *,
    mpp: float | None = None,
    roi: Roi | None = None,
    labels: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    tta: bool = False,
    tile_size: int = 512,
    margin: int = 64,
    block_size: int = BLOCK_SIZE,
    align: int | None = None,
    max_pixels: int = MAX_PIXELS,
    allow_non_tissue: bool = False,
    progress: bool = False,
    blend: bool = False,
    overlap: int = BLEND_OVERLAP,
    batch_size: int = 1,
    block_threads: int = 1,
) -> dict:
    """Predict every nucleus of a whole slide and write its outputs (see :func:`~cryonuseg_hf.model.slides.outputs.slide_output_paths`).

    Args:
        path: the slide (see :func:`~cryonuseg_hf.model.slides.reader.open_slide`).
        out_dir: output folder (created).
        model: a checkpoint folder, a :class:`cryonuseg_hf.model.predict.Predictor`, None for the shipped one, or a
            function RGB window -> instance labels (a stand-in model).
        mpp: µm per level-0 pixel, overriding the slide's metadata.
        roi: (x, y, width, height) in level-0 pixels: predict only there (clipped to the slide, with a
            warning; a region wholly outside it is an error).
        labels: also write a pyramidal label TIFF (uint32, the model's frame; built from a chunked store on
            disk, so memory stays bounded).
        overwrite: replace existing outputs.
        device, backend, threads, tta: as in :func:`cryonuseg_hf.model.predict.predict_instances`.
        tile_size, margin: the model's tiles and their context, in model pixels.
        block_size: side of a block held in memory, model pixels.
        align: window starts are multiples of this (default: the model's grid step; 1 for a function).
        max_pixels: largest slide of one level (no pyramid) accepted, as in
            :func:`~cryonuseg_hf.model.slides.reader.open_slide`.
        allow_non_tissue: predict a slide whose tissue does not look like H&E brightfield
            (:func:`cryonuseg_hf.model.tissue.overview_problem`, e.g. a fluorescence scan), with a logged warning,
            instead of refusing it.
        progress: a progress bar with the blocks done, the nuclei found so far and the time left.
        blend, overlap, batch_size: blend each block's windows, as in
            :func:`cryonuseg_hf.model.predict.predict_instances` (a Predictor or checkpoint only); nuclei are
            owned across blocks as without it.
        block_threads: blocks read and labelled at once, in threads (see
            :func:`~cryonuseg_hf.model.slides.blocks.slide_nuclei`).

    Returns:
        the summary also written to ``<stem>_summary.json``.

    Raises:
        FileNotFoundError, ValueError: see :func:`~cryonuseg_hf.model.slides.reader.open_slide`; ValueError
            also when the slide is not H&E (unless ``allow_non_tissue``), ``roi`` lies outside it, or the blocks,
            tiles or windows make each pixel run more than ``MAX_PASSES`` times
            (:func:`cryonuseg_hf.model.tiling.check_window_work`), all before the tissue is searched; FileExistsError:
            outputs exist.
    """
    path = Path(path)
    out_dir = ensure_writable_folder(out_dir)
    paths = slide_output_paths(out_dir, path.stem)
    if not labels:
        paths.pop("labels")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{path}: outputs exist already ({', '.join(existing)}); pass --overwrite")
    slide = open_slide(path, mpp=mpp, max_pixels=max_pixels)
    roi = clip_roi(roi, slide.dimensions, path) if roi is not None else None
    predict_tile, backend_name, align = _tile_predictor(model, device, backend, threads, tta, align)
    _check_work(slide, roi, tile_size, margin, align, block_size, overlap if blend else None)
    label_block = None
    if blend:
        predictor = model if isinstance(model, Predictor) else load_predictor(model, device, backend, threads)
        label_block = block_labeller(predictor, tile_size, overlap, batch_size, tta)
    started = (time.perf_counter(), time.process_time())  # the model is loaded: time the slide's own work
    tissue = tissue_map(slide, roi=roi)
    if tissue.problem and not allow_non_tissue:
        raise ValueError(
            f"{path}: not an H&E slide: {tissue.problem}; nothing predicted (pass --allow-non-tissue to "
            "predict it anyway)"
        )
    if tissue.problem:
        logger.warning("%s: not an H&E slide (%s); predicted anyway", path, tissue.problem)
    times = {"tissue_search_seconds": time.perf_counter() - started[0]}
    times["tissue_search_cpu_seconds"] = time.process_time() - started[1]
    stats = SlideStats()
    density = np.zeros(tissue.mask.shape, np.int32)
    with staged_files(paths) as twins:
        blocks = slide_nuclei(
            slide,
            predict_tile,
            tissue,
            tile_size=tile_size,
            margin=margin,
            align=align,
            block_size=block_size,
            roi=roi,
            stats=stats,
            progress=progress,
            label_block=label_block,
            block_threads=block_threads,
        )
        write_nuclei(_counted(blocks, density, tissue.per_level0), twins, slide)
        times["seconds"] = time.perf_counter() - started[0]
        times["cpu_seconds"] = time.process_time() - started[1]  # all threads of this process
        summary = _summary(
            slide, tissue, stats, roi, backend_name, times, {k: str(p) for k, p in paths.items()}
        )
        write_overview(twins["overview"], tissue, density, summary)
        twins["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_work(
    slide: Slide,
    roi: Roi | None,
    tile_size: int,
    margin: int,
    align: int,
    block_size: int,
    overlap: int | None,
) -> None:
    """Refuse blocks, tiles or blended windows that would make the work explode, before the tissue is searched.

    The rule is :func:`cryonuseg_hf.model.tiling.check_window_work`, for the blocks over the slide (or its ROI) and for
    the windows of one block (``overlap``: blended windows; None: tiles that own their nuclei).
    """
    region = slide.shape if roi is None else roi_shape(roi, slide.per_level0)
    block = (min(block_size, region[0]), min(block_size, region[1]))
    try:
        tile_grid(region, tile_size=block_size, margin=margin, align=align, name="--block-size")
        if overlap is None:
            tile_grid(block, tile_size=tile_size, margin=margin, align=align)
        else:
            check_blend(block, tile_size, overlap, align)
    except ValueError as error:
        raise ValueError(
            f"{slide.path} (read in blocks of {block[1]}x{block[0]} model pixels): {error}"
        ) from None


def _tile_predictor(
    model: Any, device: str, backend: str, threads: int | None, tta: bool, align: int | None
) -> tuple[Callable[[np.ndarray], np.ndarray], str, int]:
    """``model`` as a function RGB window -> instance labels, the name of its backend, and the windows' grid."""
    if callable(model) and not isinstance(model, Predictor):
        return model, "function", align or 1
    predictor = model if isinstance(model, Predictor) else load_predictor(model, device, backend, threads)

    def predict_tile(window: np.ndarray) -> np.ndarray:
        return probabilities_to_instances(predictor.probabilities(window, tta=tta), predictor.params)

    name = f"{predictor.backend} on {predictor.device}"
    return predict_tile, name, align or grid_step(predictor.input_scale)


def _counted(
    blocks: Iterable[BlockNuclei], density: np.ndarray, per_level0: tuple[float, float]
) -> Iterator[BlockNuclei]:
    """``blocks`` unchanged, each block's nuclei counted into ``density`` on the way."""
    for block in blocks:
        count_centroids(density, block.records, per_level0)
        yield block


def _summary(
    slide: Slide,
    tissue: TissueMap,
    stats: SlideStats,
    roi: Roi | None,
    backend: str,
    times: dict[str, float],
    outputs: dict[str, str],
) -> dict:
    """What was read, found and done, for ``<stem>_summary.json`` and the overview's caption."""
    tissue_mpx = tissue.area_mm2 / (slide.model_mpp * 1e-3) ** 2 / 1e6
    return {
        "slide": str(slide.path),
        "level0_size": list(slide.dimensions),
        "level0_mpp": [round(m, 5) for m in slide.mpp],
        "level_read": slide.level,
        "scale": round(slide.scale, 5),
        "model_mpp": round(slide.model_mpp, 5),
        "roi": list(roi) if roi else None,
        "tissue_mm2": round(tissue.area_mm2, 4),
        "tissue_megapixels": round(tissue_mpx, 3),
        "tissue_problem": tissue.problem,
        "backend": backend,
        "nuclei": stats.nuclei,
        "nuclei_per_mm2": round(stats.nuclei / tissue.area_mm2, 1) if tissue.area_mm2 else None,
        "blocks": stats.blocks,
        "blocks_with_tissue": stats.blocks_with_tissue,
        "tiles_run": stats.tiles_run,
        "tiles_skipped_blank": stats.tiles_skipped,
        "duplicates_dropped": stats.duplicates_dropped,
        "shared_pixels": stats.shared_pixels,
        "touching_cut_edge": stats.touching_cut_edge,
        **{key: round(value, 2) for key, value in times.items()},
        "seconds_per_tissue_mm2": round(times["seconds"] / tissue.area_mm2, 1) if tissue.area_mm2 else None,
        "tissue_megapixels_per_second": round(tissue_mpx / times["seconds"], 4) if times["seconds"] else None,
        "outputs": outputs,
    }
