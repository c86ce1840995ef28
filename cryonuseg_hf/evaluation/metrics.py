"""Dice, AJI, AJI+ and Panoptic Quality for nuclei instance segmentation, on plain numpy label images.

The package's name for the metric functions. Their code lives in ``nuclei_instance_metric/nuclei_metrics.py``,
inside the ``evaluate`` module's folder, so that the folder is complete on its own when it is pushed to the Hub
(where ``cryonuseg_hf`` is not installed): one source for the package, the ``evaluate`` module and the Hub. The
definitions and the choices where HoVer-Net's code has quirks are in that file's docstring and in the metric card
(``nuclei_instance_metric/README.md``).
"""

from __future__ import annotations

from cryonuseg_hf.evaluation.nuclei_instance_metric.nuclei_metrics import (
    COUNTS,
    MATCH_IOU,
    METRICS,
    as_label_image,
    first_pixels,
    metrics_from_counts,
    score,
    score_tile,
)

__all__ = [
    "COUNTS",
    "MATCH_IOU",
    "METRICS",
    "as_label_image",
    "first_pixels",
    "metrics_from_counts",
    "score",
    "score_tile",
]
