"""Where the package's own files are. Data a user brings is named by environment variables or options:
``$CRYONUSEG_DATA`` (the raw release), ``$CRYONUSEG_EXTERNAL`` (pretraining data)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
METRIC_PATH = PACKAGE_DIR / "evaluation" / "nuclei_instance_metric"
"""The ``evaluate`` module folder: ``evaluate.load(str(METRIC_PATH))``."""
MODEL_PATH = PACKAGE_DIR / "checkpoint"
"""The shipped SegFormer checkpoint (``save_pretrained`` folder), trained on all 30 tiles."""
EXAMPLES_PATH = PACKAGE_DIR / "examples"
"""A few CryoNuSeg tiles with their ROI sets, shipped for the demo and the docs (CC BY-NC-SA 4.0)."""
SPACE_TEMPLATE = PACKAGE_DIR / "apps" / "space"
"""The Space's own files (``app.py``, ``requirements.txt``, ``README.md``)."""
