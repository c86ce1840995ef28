"""The ``>>>`` examples in the docstrings are part of the documentation: they must stay true.

Every module of the package whose source holds an example is tested, so a module that moves or splits keeps its
examples checked without a list to update. The ``evaluate`` module's folder is left to ``test_metric_module.py``,
which runs its examples as the Hub would: from the folder alone, through ``evaluate.load``.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cryonuseg_hf"
MODULES = sorted(
    "cryonuseg_hf." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    for path in PACKAGE.rglob("*.py")
    if ">>> " in path.read_text(encoding="utf-8") and "nuclei_instance_metric" not in path.parts
)


def test_the_examples_are_found():
    assert "cryonuseg_hf.core.files" in MODULES and "cryonuseg_hf.model.tiling" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
