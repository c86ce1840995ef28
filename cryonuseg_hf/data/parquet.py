"""One config's rows as a Parquet file with the declared features in its schema, as the Hub expects it.

A config is one folder of a dataset repository, ``<config>/train-00000-of-00001.parquet``; ``datasets`` reads
the features back from the schema, so no loading script is needed.
"""

from __future__ import annotations

from pathlib import Path

SPLIT = "train"
PARQUET_NAME = "train-00000-of-00001.parquet"
ROWS_PER_ROW_GROUP = 10
"""Small row groups let streaming and the Hub viewer start without reading a whole config."""


def write_config(rows: list[dict], path: Path) -> dict:
    """Write one config's rows as Parquet with embedded features; return its split sizes for the card."""
    import datasets
    from datasets import utils as hf_utils

    from cryonuseg_hf.data.rows import features

    dataset = datasets.Dataset.from_list(rows, features=features())
    path.parent.mkdir(parents=True, exist_ok=True)
    bars_were_on = not hf_utils.are_progress_bars_disabled()
    hf_utils.disable_progress_bars()  # one bar per 10 rows is noise; the CLI reports per config
    try:
        dataset.to_parquet(str(path), batch_size=ROWS_PER_ROW_GROUP)
    finally:
        if bars_were_on:
            hf_utils.enable_progress_bars()
    return {
        "num_bytes": int(dataset.data.nbytes),
        "num_examples": len(dataset),
        "download_size": path.stat().st_size,
    }
