"""Scores of nuclei instances: the metric, the human agreement, scoring predictions."""
