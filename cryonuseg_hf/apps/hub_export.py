"""Hub-ready repositories in one command: the model, the metric and the Space, each a complete folder.

``cryonuseg-hf hub-export --out DIR`` writes three folders that load as the Hub loads them:

- ``DIR/model/``: the shipped checkpoint (``config.json``, ``model.safetensors``, ``preprocessor_config.json``), so
  ``from_pretrained`` and the stock ``pipeline("image-segmentation")`` run it; ``README.md``, the model card of
  :mod:`cryonuseg_hf.reports.model_card` (generated from ``results/``) followed by a list of the repository's files; the
  widget's example tiles under ``examples/`` (the card's widget points at them, in this repository);
  ``onnx/segformer_probabilities.onnx``, the graph of :mod:`cryonuseg_hf.model.onnx_backend`, with ``onnx/check.json``,
  its comparison with torch on real tiles; ``LICENSE`` and ``CITATION.bib``.
- ``DIR/nuclei_instance_metric/``: the ``evaluate`` module folder, copied as it is (it is self-contained:
  ``evaluate.load`` works on it where ``cryonuseg_hf`` is not installed); its card is the Space card of the metric.
- ``DIR/space/``: the Space template of ``cryonuseg_hf/apps/space/`` (``app.py``, ``requirements.txt``, ``README.md`` with
  the Space YAML) plus a copy of the package, checkpoint included, which the app imports.

``DIR/hub_export.json`` records the repository id each folder is meant for, so ``cryonuseg-hf push DIR`` pushes all
three, and ``cryonuseg-hf push DIR/<folder> --repo-id ID`` one of them. A metric is a Space on the Hub, and
``evaluate.load("<owner>/<name>")`` runs ``<name>.py``, so the metric's repository must be named like its script.
Pushing (:mod:`cryonuseg_hf.apps.hub`) needs the network and a token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.files import staged_files
from cryonuseg_hf.core.paths import EXAMPLES_PATH, METRIC_PATH, MODEL_PATH, PACKAGE_DIR, SPACE_TEMPLATE
from cryonuseg_hf.model.postprocess import config_values

logger = logging.getLogger(__name__)

MODEL_FOLDER = "model"
METRIC_FOLDER = METRIC_PATH.name
SPACE_FOLDER = "space"
MANIFEST = "hub_export.json"
SPACE_FILES = ("app.py", "requirements.txt", "README.md")
CHECKPOINT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
ONNX_FILE = "onnx/segformer_probabilities.onnx"
ONNX_CHECK = "onnx/check.json"
DEFAULT_OWNER = "cryonuseg"
REPO_NAMES = {
    MODEL_FOLDER: "segformer-cryonuseg",
    METRIC_FOLDER: METRIC_FOLDER,
    SPACE_FOLDER: "cryonuseg-nuclei",
}
"""Repository name per exported folder; the metric's must equal its script's name (see the module docstring)."""
REPO_TYPES = {"dataset": "dataset", "model": "model", "metric": "space", "space": "space"}
"""Hub repository type per kind of folder: ``evaluate`` modules live in Spaces."""
_NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")

SEGFORMER_CITATION = """@inproceedings{xie2021segformer,
  title     = {{SegFormer}: Simple and Efficient Design for Semantic Segmentation with Transformers},
  author    = {Xie, Enze and Wang, Wenhai and Yu, Zhiding and Anandkumar, Anima and Alvarez, Jose M. and Luo, Ping},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2021}
}"""
PRETRAINING_CITATIONS = """@article{kumar2017dataset,
  title   = {A Dataset and a Technique for Generalized Nuclear Segmentation for Computational Pathology},
  author  = {Kumar, Neeraj and Verma, Ruchika and Sharma, Sanuj and Bhargava, Surabhi and Vahadane, Abhishek and Sethi, Amit},
  journal = {IEEE Transactions on Medical Imaging},
  volume  = {36},
  number  = {7},
  pages   = {1550--1560},
  year    = {2017}
}
@article{kumar2020multi,
  title   = {A Multi-Organ Nucleus Segmentation Challenge},
  author  = {Kumar, Neeraj and Verma, Ruchika and Anand, Deepak and others},
  journal = {IEEE Transactions on Medical Imaging},
  volume  = {39},
  number  = {5},
  pages   = {1380--1391},
  year    = {2020}
}
@article{mahbod2024nuinsseg,
  title   = {{NuInsSeg}: A fully annotated dataset for nuclei instance segmentation in {H\\&E}-stained histological images},
  author  = {Mahbod, Amirreza and others},
  journal = {Scientific Data},
  volume  = {11},
  pages   = {295},
  year    = {2024}
}"""
"""The start point's data as the model card names it (MoNuSeg 2018 training set, NuInsSeg human spleen)."""


# ------------------------------------------------------------------------------------------------------ model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_card_matches_checkpoint(checkpoint: Path, results: Path) -> None:
    """Refuse a card that describes another model: the checkpoint's recipe and post-processing must be those of
    ``results/cv/final.json`` (the run that made the shipped model) when that file exists.

    Raises:
        ValueError: they differ; the message says which setting.
    """
    final_path = results / "cv" / "final.json"
    if not final_path.is_file():
        return
    final = json.loads(final_path.read_text())
    config = config_values(checkpoint)
    for ours, theirs in (("cryonuseg_train_config", "config"), ("cryonuseg_postprocess", "postprocess")):
        mine, recorded = config.get(ours), final.get(theirs)
        if recorded is not None and mine != recorded:
            differing = sorted(
                k for k in set(mine or {}) | set(recorded) if (mine or {}).get(k) != recorded.get(k)
            )
            raise ValueError(
                f"{checkpoint}: its {ours} differs from {final_path} in {differing}: the card would describe "
                "another model; pass the checkpoint that run wrote (--checkpoint) or the results of this one (--results)"
            )


def widget_sources(card_path: Path) -> list[str]:
    """The ``src`` of every widget example of a model card."""
    from huggingface_hub import ModelCard

    return [example["src"] for example in ModelCard.load(card_path).data.widget or []]


def resolve_prefix(repo_id: str) -> str:
    """Where the Hub serves the files of model repository ``repo_id`` (the widget's example URLs start so)."""
    return f"https://huggingface.co/{repo_id}/resolve/main/"


def files_section(onnx_check: dict[str, Any]) -> str:
    """The part of the model card that lists this repository's files."""
    return f"""
## Files in this repository

| file | what it is |
|---|---|
| `config.json`, `model.safetensors`, `preprocessor_config.json` | the checkpoint: `from_pretrained` and `pipeline("image-segmentation")` load it unchanged |
| `examples/*.png` | the widget's example tiles (CryoNuSeg, CC BY-NC-SA 4.0) |
| `{ONNX_FILE}` | the same model for onnxruntime, with the normalisation, the input scale and the softmax in the graph: `images` (N, 3, H, W) float32 RGB 0..255 -> `probabilities` (N, 3, H, W) and `logits`; H and W any size |
| `{ONNX_CHECK}` | its check against torch on real tiles: largest logit difference {onnx_check["max_abs_logit_diff"]:.2g} (tolerance {onnx_check["tolerance"]:g}), {onnx_check["argmax_disagreement"]:.2%} of the pixels change class |
| `LICENSE`, `CITATION.bib` | CC BY-NC-SA 4.0; what to cite |

Written by `cryonuseg-hf hub-export`; the model card above by `cryonuseg-hf model-card`.
"""


def license_text(card_license: str) -> str:
    """The ``LICENSE`` file of the model repository."""
    return f"""The weights in this repository (model.safetensors, {ONNX_FILE}) and the example tiles (examples/*.png)
are licensed under the Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International license
(SPDX: CC-BY-NC-SA-4.0; model card: license: {card_license}).

Legal code: https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode
Summary:    https://creativecommons.org/licenses/by-nc-sa/4.0/

You may share and adapt them for non-commercial purposes, giving appropriate credit (cite the works in
CITATION.bib) and distributing your contributions under the same license.

The weights derive from CryoNuSeg (Mahbod et al., 2021; CC BY-NC-SA 4.0) and, where the model card says the
model was pretrained, from other public nuclei datasets whose licenses the card's "What each checkpoint saw"
lists. The example tiles are CryoNuSeg tiles (from TCGA whole-slide images).
"""


def citation_text(pretrained: bool) -> str:
    """The ``CITATION.bib`` of the model repository: CryoNuSeg, SegFormer and, if used, the pretraining data."""
    from cryonuseg_hf.data.builder import CITATION

    return "\n".join([CITATION, SEGFORMER_CITATION, *([PRETRAINING_CITATIONS] if pretrained else [])]) + "\n"


def export_onnx_checked(checkpoint: Path, out: Path, threads: int | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out/ONNX_FILE`` with :func:`cryonuseg_hf.model.onnx_backend.export_onnx` (which refuses
    an export that disagrees with torch) and write the check beside it; returns the check."""
    import torch

    from cryonuseg_hf.model.onnx_backend import LOGIT_TOLERANCE, OPSET, checkpoint_hash, export_onnx

    if threads is not None:
        torch.set_num_threads(threads)
    path = out / ONNX_FILE
    report = export_onnx(checkpoint, path)
    check = {
        **report,
        "tolerance": LOGIT_TOLERANCE,
        "passed": report["max_abs_logit_diff"] <= LOGIT_TOLERANCE,
        "what": "the ONNX graph vs the torch module it was exported from, on crops of the example tiles",
        "inputs": {"images": "(N, 3, H, W) float32, RGB 0..255"},
        "outputs": {"probabilities": "(N, 3, H, W) softmax at the input size", "logits": "(N, 3, h, w)"},
        "opset": OPSET,
        "torch": torch.__version__,
        "checkpoint_sha256": checkpoint_hash(checkpoint),
        "onnx_sha256": _sha256(path),
    }
    (out / ONNX_CHECK).write_text(json.dumps(check, indent=1) + "\n")
    return check


def export_model(
    out: str | os.PathLike,
    repo_id: str,
    checkpoint: str | os.PathLike = MODEL_PATH,
    results: str | os.PathLike = "results",
    threads: int | None = None,
) -> Path:
    """Write the model repository into ``out`` (created; must not exist).

    Args:
        out: the folder to create.
        repo_id: the Hub repository the model is meant for; the card's widget examples point into it.
        checkpoint: a ``save_pretrained`` folder (default: the shipped model).
        results: the results folder the card is generated from (holds ``cv/metrics.json``).
        threads: CPU threads for the ONNX export and its check.

    Raises:
        FileNotFoundError: a checkpoint file, a results file or a widget tile is missing.
        ValueError: the results describe another checkpoint (:func:`check_card_matches_checkpoint`).
    """
    from huggingface_hub import ModelCard

    from cryonuseg_hf.reports.model_card import WIDGET_TILES, pretraining_record, write_model_card

    out, checkpoint, results = Path(out), Path(checkpoint), Path(results)
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{checkpoint}: missing {missing}; pass a save_pretrained folder with --checkpoint"
        )
    check_card_matches_checkpoint(checkpoint, results)
    out.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(checkpoint / name, out / name)
    (out / "examples").mkdir()
    for tile in WIDGET_TILES:
        source = EXAMPLES_PATH / f"{tile}.png"
        if not source.is_file():
            raise FileNotFoundError(f"{source}: the widget example tile is missing from the package")
        shutil.copy2(source, out / "examples" / source.name)
    write_model_card(results, out / "README.md", repo_id=repo_id)
    onnx_check = export_onnx_checked(checkpoint, out, threads)
    card_path = out / "README.md"
    card_path.write_text(card_path.read_text().rstrip("\n") + "\n" + files_section(onnx_check))
    for src in widget_sources(out / "README.md"):
        relative = src.removeprefix(resolve_prefix(repo_id))
        if relative == src or not (out / relative).is_file():
            raise FileNotFoundError(
                f"{out}: the card's widget example {src} is not a file of this repository"
            )
    config = config_values(checkpoint).get("cryonuseg_train_config", {})
    pretrained = bool(pretraining_record(config, results.resolve().parent))
    (out / "LICENSE").write_text(license_text(str(ModelCard.load(card_path).data.license)))
    (out / "CITATION.bib").write_text(citation_text(pretrained))
    return out


# ------------------------------------------------------------------------------------------------ metric, Space


def export_metric(out: str | os.PathLike, source: str | os.PathLike = METRIC_PATH) -> Path:
    """Copy the ``evaluate`` module folder to ``out`` (its name must stay the script's name for ``evaluate.load``)."""
    out, source = Path(out), Path(source)
    if out.name != source.name:
        raise ValueError(f"{out}: an evaluate module folder must be named like its script, {source.name}")
    shutil.copytree(source, out, ignore=_NOT_COPIED)
    return out


def export_space(out: str | os.PathLike, template: str | os.PathLike = SPACE_TEMPLATE) -> Path:
    """Write the Space: the template's files, and the package (checkpoint and examples included) beside them.

    Raises:
        FileNotFoundError: the template lacks one of :data:`SPACE_FILES`.
    """
    out, template = Path(out), Path(template)
    missing = [name for name in SPACE_FILES if not (template / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{template}: the Space template lacks {missing} (app.py at the Space's root, requirements.txt, "
            "README.md with the Space YAML)"
        )
    shutil.copytree(template, out, ignore=_NOT_COPIED)
    package_ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*", template.name)
    shutil.copytree(PACKAGE_DIR, out / PACKAGE_DIR.name, ignore=package_ignore)
    return out


# ------------------------------------------------------------------------------------------------------- all


def replaceable(out: Path, overwrite: bool) -> list[Path]:
    """The paths of a previous export in ``out`` that a new one replaces (checked before any work).

    Raises:
        FileExistsError: they exist and ``overwrite`` is off, or they exist without the manifest (so they are
            not an export's, and are left alone).
    """
    taken = [out / name for name in (*REPO_NAMES, MANIFEST) if (out / name).exists()]
    if taken and not overwrite:
        raise FileExistsError(
            f"{out}: already holds {[p.name for p in taken]}; pass --overwrite to replace them"
        )
    if taken and not (out / MANIFEST).is_file():
        raise FileExistsError(
            f"{out}: holds {[p.name for p in taken]} but no {MANIFEST}, so hub-export did not write them; "
            "choose another --out"
        )
    return taken


def hub_export(
    out: str | os.PathLike,
    owner: str = DEFAULT_OWNER,
    checkpoint: str | os.PathLike = MODEL_PATH,
    results: str | os.PathLike = "results",
    overwrite: bool = False,
    threads: int | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Write the model, metric and Space repositories into ``out`` and the manifest ``out/hub_export.json``.

    Args:
        out: the folder to write into (created).
        owner: Hub user or organisation the repositories are meant for (their names are :data:`REPO_NAMES`).
        checkpoint, results, threads: see :func:`export_model`.
        overwrite: replace a previous export in ``out``.
        command: the command line, recorded in the manifest.

    Returns:
        the manifest: ``repos`` (folder -> ``repo_id``, ``repo_type``, ``kind``), ``onnx_check``, ``command``.
    """
    if not owner or "/" in owner:
        raise ValueError(f"--owner {owner!r}: give a Hub user or organisation name, without '/'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    replaceable(out, overwrite)
    repo_ids = {folder: f"{owner}/{name}" for folder, name in REPO_NAMES.items()}
    kinds = {MODEL_FOLDER: "model", METRIC_FOLDER: "metric", SPACE_FOLDER: "space"}
    # all four or none: a failed export leaves the previous one (or nothing) in place
    with staged_files({name: out / name for name in (*REPO_NAMES, MANIFEST)}) as staged:
        export_model(staged[MODEL_FOLDER], repo_ids[MODEL_FOLDER], checkpoint, results, threads)
        export_metric(staged[METRIC_FOLDER])
        export_space(staged[SPACE_FOLDER])
        manifest = {
            "repos": {
                folder: {"repo_id": repo_ids[folder], "repo_type": REPO_TYPES[kind], "kind": kind}
                for folder, kind in kinds.items()
            },
            "onnx_check": json.loads((staged[MODEL_FOLDER] / ONNX_CHECK).read_text()),
            "command": command,
        }
        staged[MANIFEST].write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
