"""Shared fixtures. Tests never touch the network and write only under tmp_path.

Tests that read the raw CryoNuSeg release, the external pretraining data or the slide samples, the browser test of
the app, and the tests that start a real Dask cluster or several training processes, are marked ``slow`` here (by
the fixtures they use or their module): ``pytest -m "not slow"`` runs the rest in about a minute while developing;
CI and the README's test command run everything.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# The data the tests read: $CRYONUSEG_DATA and $CRYONUSEG_EXTERNAL, else the copies beside this checkout (as CI
# has them); the package itself has no default location.
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
os.environ.setdefault("CRYONUSEG_DATA", str(_SHARED / "cryonuseg"))
os.environ.setdefault("CRYONUSEG_EXTERNAL", str(_SHARED / "external"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# datasets, evaluate and transformers read their cache folders at import time: point them at a temporary
# folder before any test imports them, so tests never write into the user's home.
_HF_HOME = tempfile.mkdtemp(prefix="cryonuseg-hf-test-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")
os.environ["HF_MODULES_CACHE"] = os.path.join(_HF_HOME, "modules")
os.environ["HF_METRICS_CACHE"] = os.path.join(_HF_HOME, "metrics")
os.environ["CRYONUSEG_HF_CACHE"] = os.path.join(_HF_HOME, "cryonuseg_hf")  # ONNX exports


SLOW_FIXTURES = {"release_path", "external", "wsi_samples", "browser"}
"""Fixtures that read a real dataset: every test that uses one, directly or through another fixture, is slow."""


SLOW_MODULES = {"test_cohort.py", "test_distributed_training.py"}
"""Modules whose tests start a real Dask cluster or several training processes."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def release_path() -> Path:
    """The real CryoNuSeg release (``$CRYONUSEG_DATA`` or ``../shared/datasets/cryonuseg``).

    Missing data skips the test on a developer's machine, and fails it in CI, where the data must be there.
    """
    from cryonuseg_hf.data.release import default_source

    path = default_source()
    if not path.exists():
        message = f"CryoNuSeg release not found at {path}; set $CRYONUSEG_DATA"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def release(release_path):
    from cryonuseg_hf.data.release import open_release

    return open_release(release_path)


@pytest.fixture(scope="session")
def built_dataset(release_path, tmp_path_factory) -> Path:
    """A Hub-ready dataset folder built once from the real release (all three configs).

    The folder is named ``cryonuseg``, so ``load_dataset("cryonuseg")`` works from its parent folder.
    """
    from cryonuseg_hf.data.build import build
    from cryonuseg_hf.reports.dataset_card import dataset_card

    out = tmp_path_factory.mktemp("built") / "cryonuseg"
    build(release_path, out, card=dataset_card)
    return out
