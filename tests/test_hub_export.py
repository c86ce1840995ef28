"""``cryonuseg-hf hub-export``: each folder loads as the Hub loads it, its card validates, and ``push`` fails
clearly offline and sends each folder to the right kind of repository."""

from __future__ import annotations

import filecmp
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryonuseg_hf import EXAMPLES_PATH, METRIC_PATH, MODEL_PATH
from cryonuseg_hf.apps.hub import folder_kind, push_export, push_folder
from cryonuseg_hf.apps.hub_export import (
    MANIFEST,
    METRIC_FOLDER,
    MODEL_FOLDER,
    ONNX_CHECK,
    ONNX_FILE,
    SPACE_FOLDER,
    SPACE_TEMPLATE,
    check_card_matches_checkpoint,
    replaceable,
)
from cryonuseg_hf.cli import main

REPO = Path(__file__).resolve().parents[1]
OWNER = "someone"
SPACE_COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One export through the command line (the ONNX export and its check take ~15 s on a busy 2-core CPU)."""
    out = tmp_path_factory.mktemp("hub") / "export"
    code = main(
        [
            "hub-export",
            "--out",
            str(out),
            "--owner",
            OWNER,
            "--results",
            str(REPO / "results"),
            "--threads",
            "1",
        ]
    )
    assert code == 0
    return out


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------------------ model


def test_model_loads_with_from_pretrained_and_the_stock_pipeline(exported):
    import torch
    from transformers import AutoImageProcessor, SegformerForSemanticSegmentation, pipeline

    from cryonuseg_hf.model.predict import instances_from_pipeline

    folder = exported / MODEL_FOLDER
    model = SegformerForSemanticSegmentation.from_pretrained(folder)
    shipped = SegformerForSemanticSegmentation.from_pretrained(MODEL_PATH)
    for (name, ours), (_, theirs) in zip(
        model.state_dict().items(), shipped.state_dict().items(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    assert (
        AutoImageProcessor.from_pretrained(folder).size == AutoImageProcessor.from_pretrained(MODEL_PATH).size
    )
    segmenter = pipeline("image-segmentation", model=str(folder))
    segments = segmenter(str(folder / "examples" / "Human_Larynx_01.png"))
    assert {s["label"] for s in segments} == {"background", "nucleus_interior", "nucleus_boundary"}
    labels = instances_from_pipeline(segments, segmenter.model.config)
    assert labels.shape == (512, 512) and len(np.unique(labels)) - 1 > 50


def test_model_card_validates_and_its_widget_examples_are_in_the_folder(exported):
    from huggingface_hub import ModelCard, ModelCardData

    folder = exported / MODEL_FOLDER
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert isinstance(data, ModelCardData)
    assert (data.pipeline_tag, data.library_name, data.license) == (
        "image-segmentation",
        "transformers",
        "cc-by-nc-sa-4.0",
    )
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()
    metrics = json.loads((REPO / "results" / "cv" / "metrics.json").read_text())
    mean = {r.metric_type: r.metric_value for r in data.eval_results if r.dataset_split == "all_folds"}
    assert mean["aji"] == round(metrics["scores"][metrics["config"]["markup"]]["aji"], 4)
    prefix = f"https://huggingface.co/{OWNER}/segformer-cryonuseg/resolve/main/"
    assert data.widget
    for example in data.widget:
        assert example["src"].startswith(prefix)
        path = folder / example["src"].removeprefix(prefix)
        assert filecmp.cmp(path, EXAMPLES_PATH / path.name, shallow=False)
    listed = card.text.split("## Files in this repository")[1]
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        ONNX_FILE,
        ONNX_CHECK,
        "LICENSE",
    ):
        assert f"`{name}`" in listed and (folder / name).is_file(), name


def test_onnx_export_is_checked_and_agrees_with_torch_on_a_whole_tile(exported):
    import onnxruntime as ort
    import torch

    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.onnx_backend import LOGIT_TOLERANCE
    from cryonuseg_hf.model.segformer import load_torch_module

    folder = exported / MODEL_FOLDER
    check = json.loads((folder / ONNX_CHECK).read_text())
    assert check["passed"] and check["max_abs_logit_diff"] <= check["tolerance"] == LOGIT_TOLERANCE
    tile = read_image(EXAMPLES_PATH / "Human_Skin_01.png")  # whole: the export check used crops
    batch = np.ascontiguousarray(tile.transpose(2, 0, 1)[None], dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    onnx_probabilities = session.run(["probabilities"], {"images": batch})[0]
    module, _ = load_torch_module(folder)
    with torch.inference_mode():
        torch_probabilities = module(torch.from_numpy(batch))[0].numpy()
    assert onnx_probabilities.shape == (1, 3, 512, 512)
    assert np.abs(onnx_probabilities - torch_probabilities).max() < 1e-3


def test_license_and_citation(exported):
    folder = exported / MODEL_FOLDER
    license_text = (folder / "LICENSE").read_text()
    assert "https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode" in license_text
    citation = (folder / "CITATION.bib").read_text()
    assert "mahbod2021cryonuseg" in citation and "xie2021segformer" in citation
    assert citation.count("{") == citation.count("}")


# ------------------------------------------------------------------------------------------------- metric


def test_metric_folder_is_the_module_folder_and_its_card_a_space_card(exported):
    from huggingface_hub import SpaceCard

    folder = exported / METRIC_FOLDER
    assert _files(folder) == {f for f in _files(METRIC_PATH) if "__pycache__" not in f}
    for name in _files(folder):
        assert filecmp.cmp(folder / name, METRIC_PATH / name, shallow=False), name
    data = SpaceCard.load(folder / "README.md").data
    assert data.sdk == "gradio" and (folder / data.app_file).is_file()
    assert data.colorFrom in SPACE_COLOURS and data.colorTo in SPACE_COLOURS


def test_metric_loads_with_evaluate_where_cryonuseg_hf_cannot_be_imported(exported, tmp_path):
    # -I -S: no PYTHONPATH, no working directory and no site-packages .pth files on sys.path, so the editable
    # install's finder for cryonuseg_hf never runs; site-packages is appended by hand (see test_metric_module.py)
    child = (
        "import sys; sys.path.extend(sys.argv[1].split(':'))\n"
        "import importlib.util; assert importlib.util.find_spec('cryonuseg_hf') is None\n"
        "import evaluate, numpy as np\n"
        "metric = evaluate.load(sys.argv[2])\n"
        "r = metric.compute(predictions=[np.array([[7, 7, 0, 0, 0]])], references=[np.array([[1, 1, 0, 2, 2]])])\n"
        "print(r['aji'], r['pq'])\n"
    )
    paths = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_METRICS_CACHE=str(tmp_path / "metrics"))
    process = subprocess.run(
        [sys.executable, "-I", "-S", "-c", child, ":".join(paths), str(exported / METRIC_FOLDER)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,  # wall time: on a shared, busy CPU a niced run waits
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.split() == ["0.5", "0.6666666666666666"]


# -------------------------------------------------------------------------------------------------- Space


def test_space_holds_the_template_and_the_package(exported):
    from huggingface_hub import SpaceCard

    folder = exported / SPACE_FOLDER
    for name in ("app.py", "requirements.txt", "README.md"):
        assert filecmp.cmp(folder / name, SPACE_TEMPLATE / name, shallow=False), name
    data = SpaceCard.load(folder / "README.md").data
    assert data.sdk == "gradio" and (folder / data.app_file).is_file()
    assert data.colorFrom in SPACE_COLOURS and data.colorTo in SPACE_COLOURS
    package = folder / "cryonuseg_hf"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert filecmp.cmp(package / "checkpoint" / name, MODEL_PATH / name, shallow=False), name
    assert (package / "examples" / "Human_Larynx_01.png").is_file()
    assert not (package / "space").exists() and not list(package.rglob("__pycache__"))


def test_space_app_imports_from_its_folder(exported):
    folder = exported / SPACE_FOLDER
    child = (
        "import app, cryonuseg_hf, gradio\n"
        "assert isinstance(app.demo, gradio.Blocks)\n"
        "print(cryonuseg_hf.__file__)\n"
        "print(cryonuseg_hf.MODEL_PATH)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.run(
        [sys.executable, "-c", child], cwd=folder, env=env, capture_output=True, text=True, timeout=1200
    )
    assert process.returncode == 0, process.stderr[-3000:]
    package_file, model_path = process.stdout.split()[-2:]
    assert Path(package_file).resolve().is_relative_to(folder.resolve())
    assert Path(model_path).resolve().is_relative_to(folder.resolve())


# --------------------------------------------------------------------------------------- manifest and push


def test_manifest_names_each_folder_and_its_kind(exported):
    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["command"].startswith("cryonuseg-hf hub-export --out")
    expected = {
        MODEL_FOLDER: ("model", "model", f"{OWNER}/segformer-cryonuseg"),
        METRIC_FOLDER: ("metric", "space", f"{OWNER}/nuclei_instance_metric"),
        SPACE_FOLDER: ("space", "space", f"{OWNER}/cryonuseg-nuclei"),
    }
    for folder, (kind, repo_type, repo_id) in expected.items():
        repo = manifest["repos"][folder]
        assert (repo["kind"], repo["repo_type"], repo["repo_id"]) == (kind, repo_type, repo_id)
        assert folder_kind(exported / folder) == kind
    with pytest.raises(ValueError, match="not a dataset build, model"):
        folder_kind(EXAMPLES_PATH)


def test_push_offline_fails_at_once_with_the_way_out(exported, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(exported)]) == 2
    assert "HF_HUB_OFFLINE is set; unset it on a machine with network" in capsys.readouterr().err
    for folder, name in ((SPACE_FOLDER, "cryonuseg-nuclei"), (METRIC_FOLDER, METRIC_FOLDER)):
        with pytest.raises(
            ConnectionError, match=f"cannot push .*{folder} to {OWNER}/{name}: HF_HUB_OFFLINE"
        ):
            push_folder(exported / folder, f"{OWNER}/{name}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ConnectionError, match="the Hub is unreachable .*hf upload --repo-type model"):
        push_folder(exported / MODEL_FOLDER, f"{OWNER}/segformer-cryonuseg", endpoint="http://127.0.0.1:9")


def test_push_refuses_repository_ids_that_break_the_folder(exported):
    with pytest.raises(ValueError, match="widget points at .* not into other/segformer-cryonuseg"):
        push_folder(exported / MODEL_FOLDER, "other/segformer-cryonuseg")
    with pytest.raises(ValueError, match="must be named nuclei_instance_metric, not my-metric"):
        push_folder(exported / METRIC_FOLDER, f"{OWNER}/my-metric")


def test_push_sends_each_folder_to_its_kind_of_repository(exported, monkeypatch):
    import huggingface_hub

    import cryonuseg_hf.apps.hub

    calls = []

    class FakeApi:
        def __init__(self, endpoint=None, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message):
            calls.append(("upload", repo_id, {"folder": Path(folder_path).name, "repo_type": repo_type}))
            return type("Commit", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(cryonuseg_hf.apps.hub, "check_connection", lambda url, timeout: None)
    urls = push_export(exported, private=True)
    assert set(urls) == {MODEL_FOLDER, METRIC_FOLDER, SPACE_FOLDER}
    creates = {repo_id: kwargs for kind, repo_id, kwargs in calls if kind == "create"}
    assert creates[f"{OWNER}/segformer-cryonuseg"] == {
        "repo_type": "model",
        "private": True,
        "exist_ok": True,
    }
    for name in ("nuclei_instance_metric", "cryonuseg-nuclei"):
        assert creates[f"{OWNER}/{name}"]["repo_type"] == "space"
        assert creates[f"{OWNER}/{name}"]["space_sdk"] == "gradio"
    uploads = {repo_id: kwargs["folder"] for kind, repo_id, kwargs in calls if kind == "upload"}
    assert uploads == {
        f"{OWNER}/segformer-cryonuseg": MODEL_FOLDER,
        f"{OWNER}/nuclei_instance_metric": METRIC_FOLDER,
        f"{OWNER}/cryonuseg-nuclei": SPACE_FOLDER,
    }


# ---------------------------------------------------------------------------------------------- refusals


def test_export_refuses_to_replace_what_it_did_not_write(tmp_path, exported):
    assert replaceable(tmp_path, overwrite=False) == []
    (tmp_path / MODEL_FOLDER).mkdir()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        replaceable(tmp_path, overwrite=False)
    with pytest.raises(FileExistsError, match="hub-export did not write them"):
        replaceable(tmp_path, overwrite=True)
    (tmp_path / MANIFEST).write_text("{}")
    assert set(replaceable(tmp_path, overwrite=True)) == {tmp_path / MODEL_FOLDER, tmp_path / MANIFEST}
    assert main(["hub-export", "--out", str(exported)]) == 2  # refused before any work
    assert not [p.name for p in exported.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_card_must_describe_the_exported_checkpoint(tmp_path):
    final = json.loads((REPO / "results" / "cv" / "final.json").read_text())
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "final.json").write_text(json.dumps(final))
    check_card_matches_checkpoint(MODEL_PATH, tmp_path)  # the shipped model is the one final.json describes
    final["postprocess"] = {**final["postprocess"], "min_size": final["postprocess"]["min_size"] + 1}
    (tmp_path / "cv" / "final.json").write_text(json.dumps(final))
    with pytest.raises(ValueError, match=r"cryonuseg_postprocess differs .* \['min_size'\]"):
        check_card_matches_checkpoint(MODEL_PATH, tmp_path)
