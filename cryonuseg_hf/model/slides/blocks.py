"""A slide's nuclei, streamed block by block, each nucleus exactly once, in level-0 coordinates.

The slide is cut into blocks with :func:`cryonuseg_hf.model.tiling.tile_grid` (blocks of ``block_size`` whose
windows add ``margin`` pixels of context); each block whose core holds tissue is read and labelled by
:func:`cryonuseg_hf.model.tiling.predict_tiled` (tiles without tissue pixels skip the model), and keeps the nuclei
whose centroid lies in its core (:func:`cryonuseg_hf.model.tiling.owned_nuclei`): the same ownership rule one
level up, so nuclei are neither cut nor duplicated at block edges, and memory holds one block, not the slide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cryonuseg_hf.data.outlines import XY_OFFSET, geojson_features, instance_polygons
from cryonuseg_hf.model.export import nucleus_measurements, roi_names
from cryonuseg_hf.model.slides.reader import Slide, read_model_region
from cryonuseg_hf.model.slides.roi import Roi, roi_contains
from cryonuseg_hf.model.slides.tissue_map import TissueMap
from cryonuseg_hf.model.tiling import Tile, owned_nuclei, predict_tiled, tile_grid
from cryonuseg_hf.model.tissue import has_tissue

BLOCK_SIZE = 2048
"""Side of a block in model pixels: memory holds one block window (~50 MB) and its labels."""
BlockLabeller = Callable[[np.ndarray, Callable[[np.ndarray], bool], dict], np.ndarray]
"""(block window, RGB in model pixels; ``blank(window)``, true for a window without tissue, which need not be run;
a dict to add the counts ``windows`` and ``windows_skipped`` to) -> (h, w) integer labels of the block window."""


@dataclass
class SlideStats:
    """What :func:`slide_nuclei` did, filled in as it goes."""

    blocks: int = 0
    blocks_with_tissue: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    nuclei: int = 0
    duplicates_dropped: int = 0
    shared_pixels: int = 0
    touching_cut_edge: int = 0


@dataclass(frozen=True)
class BlockNuclei:
    """The nuclei one block owns, ready to write.

    Attributes:
        records: one dict per nucleus with the columns of
            :data:`cryonuseg_hf.model.slides.outputs.SLIDE_COLUMNS` (level-0 pixels, global ``label``).
        features: the QuPath GeoJSON features, in the same order.
        window: (rows, cols) slices of the block's window in model pixels.
        labels: the window's labels of the owned nuclei, global ids (0 elsewhere).
    """

    records: list[dict]
    features: list[dict]
    window: tuple[slice, slice]
    labels: np.ndarray = field(repr=False)


def slide_nuclei(
    slide: Slide,
    predict_tile: Callable[[np.ndarray], np.ndarray],
    tissue: TissueMap,
    *,
    tile_size: int = 512,
    margin: int = 64,
    align: int = 1,
    block_size: int = BLOCK_SIZE,
    roi: Roi | None = None,
    stats: SlideStats | None = None,
    progress: bool = False,
    label_block: BlockLabeller | None = None,
    block_threads: int = 1,
) -> Iterator[BlockNuclei]:
    """Stream the nuclei of a slide, block by block, each nucleus exactly once.

    Args:
        slide: from :func:`~cryonuseg_hf.model.slides.reader.open_slide`.
        predict_tile: RGB window (model pixels) -> (h, w) integer instance labels.
        tissue: from :func:`~cryonuseg_hf.model.slides.tissue_map.tissue_map`; blocks whose core holds none are not read.
        tile_size, margin, align: as in :func:`cryonuseg_hf.model.tiling.predict_tiled`, for the tiles of a block.
        block_size: side of a block in model pixels (a multiple of ``align`` keeps blocks on the grid).
        roi: (x, y, width, height) in level-0 pixels: only the blocks over it (with ``margin`` of context) are
            read, and only nuclei whose centroid lies inside are kept.
        stats: filled in as blocks are done.
        progress: a progress bar (tqdm, on stderr) that advances by the tissue under each block done (so its
            time left weighs blocks by their tissue) and shows the blocks done and the nuclei found so far.
        label_block: labels a whole block window instead of ``predict_tile`` and its tiles (a blended labeller,
            :func:`cryonuseg_hf.model.predict.blended_labeller`); see :data:`BlockLabeller`.
        block_threads: blocks read and labelled at once, in threads, in order (that many blocks in memory):
            on a GPU one block's reading and post-processing overlap another's model work.

    Yields:
        :class:`BlockNuclei` for every block with tissue.
    """
    from tqdm.auto import tqdm

    stats = stats if stats is not None else SlideStats()
    blocks = _block_grid(slide, roi, block_size, margin, align)
    per_tissue = (tissue.per_level0[0] / slide.per_level0[0], tissue.per_level0[1] / slide.per_level0[1])
    weights = [_core_tissue_pixels(b.core, tissue.mask, per_tissue) for b in blocks]
    todo = [(b, weight) for b, weight in zip(blocks, weights, strict=True) if weight > 0]
    stats.blocks, stats.blocks_with_tissue = len(blocks), len(todo)
    model_mpp = slide.model_mpp

    def blank(window: np.ndarray) -> bool:
        return not has_tissue(window, model_mpp)

    def read_and_label(block: Tile) -> tuple[np.ndarray, np.ndarray, dict]:
        """The block's pixels, labels and counts (``windows``, ``windows_skipped``, the tiling's)."""
        image = read_model_region(slide, *block.window)
        counts: dict = {"windows": 0, "windows_skipped": 0}
        if label_block is not None:
            return image, label_block(image, blank, counts), counts

        def predict_or_skip(window: np.ndarray) -> np.ndarray:
            if blank(window):
                counts["windows_skipped"] += 1
                return np.zeros(window.shape[:2], np.int32)
            counts["windows"] += 1
            return predict_tile(window)

        labels = predict_tiled(
            image, predict_or_skip, tile_size=tile_size, margin=margin, align=align, stats=counts
        )
        return image, labels, counts

    total = sum(weight for _, weight in todo)
    bar = tqdm(
        total=total,
        desc=f"{slide.path.name}: 0/{len(todo)} blocks",
        bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed} < {remaining} left]",
        disable=not progress,
    )
    labelled = _in_order(read_and_label, [block for block, _ in todo], block_threads)
    for done, ((block, weight), (image, labels, tiled)) in enumerate(
        zip(todo, labelled, strict=True), start=1
    ):
        rows, cols = block.window
        stats.tiles_run += tiled["windows"]
        stats.tiles_skipped += tiled["windows_skipped"]
        for key in ("duplicates_dropped", "shared_pixels", "touching_cut_edge"):
            setattr(stats, key, getattr(stats, key) + tiled.get(key, 0))
        owned = owned_nuclei(labels, (rows.start, cols.start), block.core)
        records, features, global_labels = _block_records(
            slide, image, labels, owned, block.window, roi, stats
        )
        mm2 = tissue.area_mm2 * (bar.n + weight) / total  # mask pixels on a seam count in both blocks
        bar.set_description_str(
            f"{slide.path.name}: {done}/{len(todo)} blocks, {stats.nuclei} nuclei, "
            f"{mm2:.3g}/{tissue.area_mm2:.3g} mm² of tissue",
            refresh=False,
        )
        bar.update(weight)
        if records:
            yield BlockNuclei(records, features, block.window, global_labels)
    bar.close()


def _in_order(function: Callable, items: list, workers: int) -> Iterator:
    """``function(item)`` for each item, in order, with up to ``workers`` of them running at once in threads."""
    if workers <= 1:
        yield from map(function, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _block_grid(slide: Slide, roi: Roi | None, block_size: int, margin: int, align: int) -> list[Tile]:
    """The blocks of the slide, or of the part of it that ``roi`` and ``margin`` pixels around it cover.

    That part starts on a multiple of ``align``, so its windows sample the slide on the grid of the whole slide.
    """
    if roi is None:
        return tile_grid(slide.shape, tile_size=block_size, margin=margin, align=align)
    (fx, fy), (x, y, w, h) = slide.per_level0, roi
    r0 = max(math.floor(y * fy) - margin, 0) // align * align
    c0 = max(math.floor(x * fx) - margin, 0) // align * align
    r1 = min(math.ceil((y + h) * fy) + margin, slide.shape[0])
    c1 = min(math.ceil((x + w) * fx) + margin, slide.shape[1])
    if r1 <= r0 or c1 <= c0:
        return []

    def moved(span: slice, by: int) -> slice:
        return slice(span.start + by, span.stop + by)

    return [
        Tile(
            (moved(t.window[0], r0), moved(t.window[1], c0)),
            (moved(t.core[0], r0), moved(t.core[1], c0)),
        )
        for t in tile_grid((r1 - r0, c1 - c0), tile_size=block_size, margin=margin, align=align)
    ]


def _core_tissue_pixels(core: tuple[slice, slice], mask: np.ndarray, per_model: tuple[float, float]) -> int:
    """Tissue mask pixels under a block's core (model pixels; ``per_model``: mask pixels per model pixel)."""
    rows, cols = core
    return int(
        mask[
            math.floor(rows.start * per_model[1]) : math.ceil(rows.stop * per_model[1]),
            math.floor(cols.start * per_model[0]) : math.ceil(cols.stop * per_model[0]),
        ].sum()
    )


def _to_level0(value: np.ndarray | float, origin: int, per_level0: float) -> np.ndarray | float:
    """A coordinate of a window (export convention) -> the same point in level-0 coordinates.

    The model pixel ``j`` covers level-0 ``[j / f, (j + 1) / f)``; in the export convention a point ``p`` lies
    at ``p - XY_OFFSET + 0.5`` of the continuous frame, in both frames.
    """
    return (value + origin - XY_OFFSET + 0.5) / per_level0 + XY_OFFSET - 0.5


def _block_records(slide, image, labels, owned, window, roi, stats):
    """The CSV records, GeoJSON features and global labels of the nuclei a block owns (inside ``roi``)."""
    if owned.size == 0:
        return [], [], None
    mine = np.where(np.isin(labels, owned), labels, 0)
    measurements = nucleus_measurements(mine, image)
    polygons = instance_polygons(mine)
    (r0, c0), (fx, fy) = (window[0].start, window[1].start), slide.per_level0
    length, area = 1.0 / math.sqrt(fx * fy), 1.0 / (fx * fy)
    records, rings, relabel = [], {}, np.zeros(int(labels.max()) + 1, np.int64)
    for record in measurements:
        x, y = _to_level0(record["centroid_x"], c0, fx), _to_level0(record["centroid_y"], r0, fy)
        if roi is not None and not roi_contains(roi, x - XY_OFFSET + 0.5, y - XY_OFFSET + 0.5):
            continue
        stats.nuclei += 1
        out = dict(record, label=stats.nuclei, centroid_x=round(x, 3), centroid_y=round(y, 3))
        relabel[record["label"]] = stats.nuclei
        out["bbox_x"] = round(_to_level0(record["bbox_x"], c0, fx), 3)
        out["bbox_y"] = round(_to_level0(record["bbox_y"], r0, fy), 3)
        if (fx, fy) != (1.0, 1.0):
            out["bbox_width"] = round(record["bbox_width"] / fx, 3)
            out["bbox_height"] = round(record["bbox_height"] / fy, 3)
            out["area_px"] = round(record["area_px"] * area, 3)
            for key in ("perimeter_px", "equivalent_diameter_px", "major_axis_px", "minor_axis_px"):
                out[key] = round(record[key] * length, 3)
        out["area_um2"] = round(out["area_px"] * slide.mpp[0] * slide.mpp[1], 3)
        if record["label"] in polygons:
            ring = polygons[record["label"]]
            rings[stats.nuclei] = np.stack(
                [_to_level0(ring[:, 0], c0, fx), _to_level0(ring[:, 1], r0, fy)], axis=1
            )
        records.append(out)
    for record, name in zip(records, roi_names(records), strict=True):
        record["roi_name"] = name
    return records, geojson_features(rings, records), relabel[mine].astype(np.uint32)
