"""The streamed outputs of a slide: QuPath GeoJSON, a CSV of nuclei and a label pyramid, written block by block.

Memory holds one block's nuclei: features and rows are appended to the open files as blocks come, and labels go
to a chunked store on disk from which the pyramid is written at the end.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.model.export import MEASUREMENTS
from cryonuseg_hf.model.slides.blocks import BlockNuclei
from cryonuseg_hf.model.slides.pyramid import write_pyramid
from cryonuseg_hf.model.slides.reader import Slide

SLIDE_OUTPUT_KINDS = ("geojson", "csv", "overview", "summary", "labels")
SLIDE_COLUMNS = (*MEASUREMENTS, "area_um2")
"""CSV columns: those of :data:`cryonuseg_hf.model.export.MEASUREMENTS` in level-0 pixels, plus the area in µm²."""


def slide_output_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Where :func:`~cryonuseg_hf.model.slides.predict.predict_slide` puts each file for a slide named ``stem``."""
    out_dir = Path(out_dir)
    return {
        "geojson": out_dir / f"{stem}.geojson",
        "csv": out_dir / f"{stem}_nuclei.csv",
        "overview": out_dir / f"{stem}_overview.png",
        "summary": out_dir / f"{stem}_summary.json",
        "labels": out_dir / f"{stem}_labels.tif",
    }


def write_nuclei(blocks: Iterable[BlockNuclei], paths: Mapping[str, Path], slide: Slide) -> None:
    """Write the nuclei of ``blocks`` as they come: GeoJSON and CSV, and the label pyramid when asked.

    Args:
        blocks: from :func:`~cryonuseg_hf.model.slides.blocks.slide_nuclei`.
        paths: ``geojson`` and ``csv`` files, and ``labels`` for a pyramidal label TIFF (uint32, the model's
            frame; its chunked store lies beside it while blocks come and is removed at the end).
        slide: the slide the blocks come from.
    """
    store = paths["labels"].with_suffix(".zarr") if "labels" in paths else None
    canvas = _label_store(store, slide.shape) if store else None
    try:
        with open(paths["geojson"], "w") as geojson, open(paths["csv"], "w", newline="") as table:
            writer = csv.DictWriter(table, fieldnames=SLIDE_COLUMNS)
            writer.writeheader()
            geojson.write('{"type":"FeatureCollection","features":[')
            first = True
            for block in blocks:
                writer.writerows(block.records)
                for feature in block.features:
                    geojson.write(("" if first else ",") + json.dumps(feature, separators=(",", ":")))
                    first = False
                if canvas is not None:
                    _paste_labels(canvas, block)
            geojson.write("]}")
        if canvas is not None:
            write_pyramid(paths["labels"], canvas, slide.model_mpp)
    finally:
        if store is not None:
            shutil.rmtree(store, ignore_errors=True)


def _label_store(path: Path, shape: tuple[int, int]) -> Any:
    """An empty uint32 zarr array of ``shape`` on disk, in chunks of 1024 x 1024."""
    import zarr

    return zarr.open_array(
        store=str(path), mode="w", shape=shape, chunks=(1024, 1024), dtype="uint32", fill_value=0
    )


def _paste_labels(canvas: Any, block: BlockNuclei) -> None:
    """Owned nuclei into the on-disk label store; pixels another block already took stay its."""
    rows, cols = block.window
    region = np.asarray(canvas[rows, cols])
    free = (region == 0) & (block.labels > 0)
    region[free] = block.labels[free]
    canvas[rows, cols] = region
