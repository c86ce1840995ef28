"""cryonuseg_hf: the CryoNuSeg frozen-section nuclei dataset, its metric and a SegFormer model, the Hugging Face way.

The package is flat and its modules follow the data flow:

- ``release``: read and check a raw CryoNuSeg release (Kaggle layout, folder or zip);
- ``rois`` and ``masks``: ImageJ ROIs -> polygons -> instance masks and every mask variant;
- ``folds``: the leave-one-organ-out fold protocol, defined once;
- ``builder`` and ``card``: the ``datasets`` builder, Parquet and the dataset card;
- ``metrics``: Dice, AJI, AJI+, PQ on label images (``METRIC_PATH`` is the ``evaluate`` module);
- ``agreement``: the human agreement between the three mark-ups;
- ``targets``, ``model``, ``external``, ``train``: SegFormer pretraining on other nuclei data, then training with
  the fold protocol;
- ``postprocess``: class probabilities -> nuclei instances;
- ``predict`` and ``export``: instances from any H&E image, written as TIFF, GeoJSON, ImageJ ROIs and CSV.

Importing the package imports neither torch nor transformers; modules that need them import them inside.
"""

from pathlib import Path

from cryonuseg_hf.folds import N_FOLDS, ORGANS, TILE_IDS, fold_of, organ_of, tiles_of_fold, train_tiles

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
METRIC_PATH = PACKAGE_DIR / "nuclei_instance_metric"
"""The ``evaluate`` module folder: ``evaluate.load(str(METRIC_PATH))``."""
MODEL_PATH = PACKAGE_DIR / "checkpoint"
"""The shipped SegFormer checkpoint (``save_pretrained`` folder), trained on all 30 tiles."""
EXAMPLES_PATH = PACKAGE_DIR / "examples"
"""A few CryoNuSeg tiles with their ROI sets, shipped for the demo and the docs (CC BY-NC-SA 4.0)."""

__all__ = [
    "EXAMPLES_PATH",
    "METRIC_PATH",
    "MODEL_PATH",
    "N_FOLDS",
    "ORGANS",
    "TILE_IDS",
    "fold_of",
    "organ_of",
    "predict_instances",
    "tiles_of_fold",
    "train_tiles",
]


def __getattr__(name: str):
    # predict_instances needs torch; import it only when asked for, so `import cryonuseg_hf` stays light.
    if name == "predict_instances":
        from cryonuseg_hf.predict import predict_instances

        return predict_instances
    raise AttributeError(f"module 'cryonuseg_hf' has no attribute {name!r}")
