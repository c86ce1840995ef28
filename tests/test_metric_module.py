"""The ``evaluate`` module folder is complete on its own: it loads, scores and serves its app where ``cryonuseg_hf``
cannot be imported, with the same numbers as ``cryonuseg_hf.evaluation.metrics`` on real tiles; and there is one copy of the
metric code."""

from __future__ import annotations

import ast
import doctest
import importlib
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cryonuseg_hf
from cryonuseg_hf import METRIC_PATH
from cryonuseg_hf.core.folds import fold_of, organ_of

TILES = (
    "Human_AdrenalGland_01",
    "Human_AdrenalGland_02",
    "Human_Larynx_01",
    "Human_Larynx_02",
    "Human_Skin_03",
)

# Run in a subprocess started with -I -S: -I ignores PYTHONPATH and keeps the working directory off sys.path, -S
# skips site.py, so no .pth file of site-packages runs. The editable install of cryonuseg_hf is such a .pth file
# (it puts a finder for /work/main/cryonuseg_hf on sys.meta_path), so appending site-packages by hand afterwards
# gives every installed dependency (evaluate, datasets, numpy, scipy, gradio) but not cryonuseg_hf: the situation
# of a Hub user who has only the folder and its requirements.txt.
CHILD = r"""
import sys
sys.path.extend(sys.argv[1].split(":"))
import importlib.util
assert importlib.util.find_spec("cryonuseg_hf") is None, "cryonuseg_hf is importable"
try:
    import cryonuseg_hf
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("import cryonuseg_hf worked")

import doctest
import json
import numpy as np
import evaluate

data = np.load("tiles.npz")
tiles = json.loads(open("tiles.json").read())
metric = evaluate.load("nuclei_instance_metric")  # the folder in the working directory
result = metric.compute(
    predictions=[data["prediction_" + t] for t in tiles["ids"]],
    references=[data["reference_" + t] for t in tiles["ids"]],
    organs=tiles["organs"],
    folds=tiles["folds"],
    tile_ids=tiles["ids"],
    more_references={"round1": [data["round1_" + t] for t in tiles["ids"]]},
)
module = sys.modules[type(metric).__module__]
examples = doctest.DocTestParser().get_doctest(module._KWARGS_DESCRIPTION, {"evaluate": evaluate}, "kwargs", None, 0)
runner = doctest.DocTestRunner()
runner.run(examples)

sys.path.insert(0, "nuclei_instance_metric")
import app

app_doctest = doctest.testmod(app)
demo = app.build_demo(metric)
rows, app_result = app.score_files(metric, sorted(tiles["prediction_files"]), sorted(tiles["reference_files"]))
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "cryonuseg_hf")
json.dump(
    {
        "result": result,
        "doctest": [runner.failures, runner.tries],
        "app_doctest": [app_doctest.failed, app_doctest.attempted],
        "demo": type(demo).__name__,
        "rows": rows,
        "app_aji": app_result["aji"],
        "cryonuseg_hf_modules": loaded,
    },
    open("out.json", "w"),
    default=float,
)
"""


def _site_packages() -> list[str]:
    return [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]


@pytest.fixture(scope="module")
def tiles(release):
    from cryonuseg_hf.evaluation.agreement import read_markup

    markups = {
        name: read_markup(release, name) for name in ("annotator2", "annotator1_round2", "annotator1_round1")
    }
    return {
        tile: {
            "prediction": markups["annotator2"][tile],
            "reference": markups["annotator1_round2"][tile],
            "round1": markups["annotator1_round1"][tile],
        }
        for tile in TILES
    }


@pytest.fixture(scope="module")
def isolated_run(tiles, tmp_path_factory):
    """Copy the folder into a temporary working directory and run :data:`CHILD` there without cryonuseg_hf."""
    work = tmp_path_factory.mktemp("metric-alone")
    shutil.copytree(
        METRIC_PATH, work / "nuclei_instance_metric", ignore=shutil.ignore_patterns("__pycache__")
    )
    arrays = {f"{kind}_{tile}": labels for tile, kinds in tiles.items() for kind, labels in kinds.items()}
    np.savez(work / "tiles.npz", **arrays)
    (work / "uploads" / "pred").mkdir(parents=True)
    (work / "uploads" / "ref").mkdir()
    # the app reads files: 16-bit PNG predictions, 32-bit TIFF references (as tools write them)
    pred_files, ref_files = [], []
    for tile, kinds in tiles.items():
        pred_files.append(str(work / "uploads" / "pred" / f"{tile}.png"))
        Image.fromarray(kinds["prediction"].astype(np.uint16)).save(pred_files[-1])
        ref_files.append(str(work / "uploads" / "ref" / f"{tile}.tif"))
        Image.fromarray(kinds["reference"].astype(np.int32)).save(ref_files[-1])
    meta = {
        "ids": list(TILES),
        "organs": [organ_of(t) for t in TILES],
        "folds": [fold_of(t) for t in TILES],
        "prediction_files": pred_files,
        "reference_files": ref_files,
    }
    (work / "tiles.json").write_text(json.dumps(meta))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        HF_MODULES_CACHE=str(work / "modules"), HF_METRICS_CACHE=str(work / "metrics"), HF_HUB_OFFLINE="1"
    )
    process = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD, ":".join(_site_packages())],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,  # wall time: on a shared, busy CPU a niced run waits
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads((work / "out.json").read_text())


def test_loads_without_cryonuseg_hf(isolated_run):
    assert isolated_run["cryonuseg_hf_modules"] == []
    assert isolated_run["demo"] == "Blocks"


def test_equals_cryonuseg_hf_on_real_tiles(isolated_run, tiles):
    from cryonuseg_hf.evaluation.metrics import score

    kwargs = dict(
        organs=[organ_of(t) for t in TILES], folds=[fold_of(t) for t in TILES], tile_ids=list(TILES)
    )
    predictions = [tiles[t]["prediction"] for t in TILES]
    expected = score(predictions, [tiles[t]["reference"] for t in TILES], **kwargs)
    expected["by_reference"] = score(predictions, {"round1": [tiles[t]["round1"] for t in TILES]}, **kwargs)
    # JSON on both sides: per_fold keys become strings, floats round-trip exactly
    assert isolated_run["result"] == json.loads(json.dumps(expected, default=float))
    assert 0.3 < expected["aji"] < 0.8  # real inter-observer agreement, not a degenerate pair
    assert isolated_run["app_aji"] == expected["aji"]
    assert [row[0] for row in isolated_run["rows"]] == [*sorted(TILES), f"mean of {len(TILES)}"]


def test_docstring_examples_pass_where_the_folder_is_alone(isolated_run):
    failures, tries = isolated_run["doctest"]
    assert tries > 0 and failures == 0
    failed, attempted = isolated_run["app_doctest"]
    assert attempted > 0 and failed == 0


def test_one_copy_of_the_metric_code():
    metrics = importlib.import_module("cryonuseg_hf.evaluation.metrics")
    functions = importlib.import_module("cryonuseg_hf.evaluation.nuclei_instance_metric.nuclei_metrics")
    for name in metrics.__all__:
        assert getattr(metrics, name) is getattr(functions, name), name
    tree = ast.parse(Path(metrics.__file__).read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)]
    result = doctest.testmod(functions, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, including imports inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            names.add(node.module.split(".")[0])
    return names


def test_requirements_cover_every_import():
    requirements = {
        line.split(">")[0].split("=")[0].split("<")[0].strip().lower()
        for line in (METRIC_PATH / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    distribution = {"PIL": "pillow"}
    provided_by_the_space = {"gradio"}  # the card's `sdk: gradio` installs it on the Hub
    files = sorted(METRIC_PATH.glob("*.py"))
    assert {f.name for f in files} == {"nuclei_instance_metric.py", "nuclei_metrics.py", "app.py"}
    for path in files:
        for name in _imports(path) - set(sys.stdlib_module_names) - provided_by_the_space:
            assert name != "cryonuseg_hf", f"{path.name} imports cryonuseg_hf"
            assert distribution.get(name, name).lower() in requirements, (
                f"{path.name}: {name} not in requirements.txt"
            )


def test_metric_path_stays():
    assert cryonuseg_hf.METRIC_PATH.name == "nuclei_instance_metric"
    assert (cryonuseg_hf.METRIC_PATH / "nuclei_instance_metric.py").is_file()
