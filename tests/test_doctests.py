"""The ``>>>`` examples in the docstrings are part of the documentation: they must stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    f"cryonuseg_hf.{name}"
    for name in (
        "core.machine",
        "core.markdown",
        "core.folds",
        "data.mask_agreement",
        "data.masks",
        "data.metadata",
        "data.targets",
        "evaluation.agreement",
        "evaluation.nuclei_instance_metric.nuclei_metrics",
        "model.export",
        "model.images",
        "model.postprocess",
        "model.predict",
        "model.segformer",
        "model.tiling",
    )
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
