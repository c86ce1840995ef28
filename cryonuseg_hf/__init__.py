"""cryonuseg_hf: the CryoNuSeg frozen-section nuclei dataset, its metric and a SegFormer model, the Hugging Face way.

Subpackages follow the data flow, and each imports only from those listed before it (``tests/test_architecture.py``
enforces it):

- ``core``: the fold protocol, paths, tile geometry, machine descriptions, Markdown tables;
- ``data``: the raw release (folder or zip), ImageJ ROIs -> polygons -> every mask variant, slide metadata,
  training class maps, other 40x nuclei data for pretraining, and the ``datasets`` build with its checks;
- ``evaluation``: Dice, AJI, AJI+, PQ (``METRIC_PATH`` is the self-contained ``evaluate`` module), the human
  agreement, scoring predictions from other tools;
- ``model``: the SegFormer checkpoint, post-processing, the one inference path (``predict_instances``), tiling,
  ONNX, whole slides and the export formats;
- ``training``: pretraining, fold training, the cross-validation and the shipped model;
- ``reports``: every Markdown file and card, from the data structures the layers above return;
- ``apps``: the demo, the Space app, the Hub export and push;
- ``cli``: the ``cryonuseg-hf`` command.

Importing the package imports neither torch nor transformers; modules that need them import them inside.
"""

from cryonuseg_hf.core.folds import N_FOLDS, ORGANS, TILE_IDS, fold_of, organ_of, tiles_of_fold, train_tiles
from cryonuseg_hf.core.paths import EXAMPLES_PATH, METRIC_PATH, MODEL_PATH, PACKAGE_DIR

__version__ = "0.1.0"

__all__ = [
    "EXAMPLES_PATH",
    "METRIC_PATH",
    "MODEL_PATH",
    "N_FOLDS",
    "ORGANS",
    "PACKAGE_DIR",
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
        from cryonuseg_hf.model.predict import predict_instances

        return predict_instances
    raise AttributeError(f"module 'cryonuseg_hf' has no attribute {name!r}")
