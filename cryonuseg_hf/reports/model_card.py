"""``model_card.md``, generated from the results files: nothing in it is typed by hand.

Reads ``results/cv/metrics.json`` (the 10-fold run of ``cryonuseg-hf train --cv``), ``results/cv/final.json`` (the
shipped all-data model) and writes a Hugging Face model card with ``huggingface_hub.ModelCard``: YAML metadata
(``pipeline_tag``, ``library_name``, license, datasets, widget, ``model-index`` with AJI, PQ and Dice per fold
and their mean) and a body that says how the numbers were made, what they mean and how to get instances.

Regenerate with ``cryonuseg-hf model-card`` after any training run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.folds import ORGANS
from cryonuseg_hf.core.markdown import table
from cryonuseg_hf.evaluation.agreement import observer_comparisons
from cryonuseg_hf.training.config import RECIPES, ground_truth, shipped_recipe_of

LICENSE = "cc-by-nc-sa-4.0"
DATASET_ID = "cryonuseg"
WIDGET_TILES = ("Human_Larynx_01", "Human_Skin_01")
"""Shipped in ``cryonuseg_hf/examples``; upload them beside the model as ``examples/<tile>.png``."""
CARD_METRICS = {"aji": "AJI", "pq": "PQ", "dice": "Dice"}
DATASET_CREDITS = {
    "monuseg_train": "MoNuSeg 2018 training set (Kumar et al., IEEE TMI 2017 and 2020; TCGA, 7 organs, FFPE; "
    "CC BY-NC-SA 4.0)",
    "nuinsseg_human_spleen": "the human spleen tiles of NuInsSeg (Mahbod et al., Scientific Data 11:295, 2024; "
    "FFPE; CC BY 4.0; its ambiguous areas are left out of the loss)",
    "nuinsseg_more_organs": "NuInsSeg's tiles of 21 more human and mouse organs (Mahbod et al., Scientific Data "
    "11:295, 2024; FFPE; CC BY 4.0)",
}
"""How the card credits each pretraining folder (by its name)."""


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `cryonuseg-hf train --cv --final` first")
    return json.loads(path.read_text())


def _read_optional(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def pretraining_record(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """The ``pretrain.json`` of the start point a recipe was initialised from (``{}`` when from scratch)."""
    init = config.get("init")
    if not init:
        return {}
    path = Path(init) if Path(init).is_absolute() else root / init
    return _read_optional(path / "pretrain.json")


def pretraining_stages(config: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """Every pretraining stage behind a recipe, earliest first: a start point may itself start from another."""
    stages: list[dict[str, Any]] = []
    record = pretraining_record(config, root)
    while record and len(stages) < 10:
        stages.insert(0, record)
        record = pretraining_record(record.get("config", {}), root)
    return stages


def eval_results(metrics: dict[str, Any]) -> list:
    """``EvalResult`` rows: AJI, PQ and Dice against Annotator 1 round 2, for the mean and for every fold."""
    from huggingface_hub import EvalResult

    markup = metrics["config"]["markup"]
    ours = metrics["scores"][markup]
    common = dict(
        task_type="image-segmentation",
        task_name="Nuclei instance segmentation",
        dataset_type=DATASET_ID,
        dataset_config=markup,
    )
    rows = []
    for key, name in CARD_METRICS.items():
        rows.append(
            EvalResult(
                **common,
                dataset_name=f"CryoNuSeg, leave-one-organ-out CV, mean over {metrics['n_tiles']} held-out tiles",
                dataset_split="all_folds",
                metric_type=key,
                metric_name=f"{name} (mean over tiles)",
                metric_value=round(float(ours[key]), 4),
            )
        )
    for fold, row in sorted(ours.get("per_fold", {}).items(), key=lambda item: int(item[0])):
        for key, name in CARD_METRICS.items():
            rows.append(
                EvalResult(
                    **common,
                    dataset_name=f"CryoNuSeg fold {fold} ({ORGANS[int(fold)]} held out)",
                    dataset_split=f"fold_{fold}",
                    metric_type=key,
                    metric_name=name,
                    metric_value=round(float(row[key]), 4),
                )
            )
    return rows


def card_data(metrics: dict[str, Any], final: dict[str, Any], repo_id: str):
    from huggingface_hub import ModelCardData

    variant = metrics["config"]["variant"]
    return ModelCardData(
        model_name=f"SegFormer-{variant} for CryoNuSeg nuclei",
        pipeline_tag="image-segmentation",
        library_name="transformers",
        license=LICENSE,
        datasets=[DATASET_ID],
        metrics=["aji", "pq", "dice"],
        tags=["histopathology", "nuclei", "instance-segmentation", "segformer", "frozen-section", "H&E"],
        widget=[
            {
                "src": f"https://huggingface.co/{repo_id}/resolve/main/examples/{tile}.png",
                "example_title": f"{tile} (CryoNuSeg, 512x512 at 40x)",
            }
            for tile in WIDGET_TILES
        ],
        eval_results=eval_results(metrics),
    )


def _short(command: str) -> str:
    """A recorded command without its ``--scale-note`` text (shown on its own in the card)."""
    return command.split(" --scale-note")[0]


PEER_SETTINGS = {"native": "InstanSeg, native 40x", "fixed_0.75": "InstanSeg, tile resized to 0.75"}
"""Settings of ``results/peers.json`` (``benchmarks/bench_peers.py``) shown beside the model."""


def _peer_rows(peers: dict[str, Any], markups: list[str]) -> list[list[str]]:
    f = "{:.3f}".format
    rows = []
    for setting, label in PEER_SETTINGS.items():
        for markup in markups:
            s = peers.get("scores", {}).get(setting, {}).get(markup)
            if s:
                rows.append([f"{label}, zero-shot, vs {markup}", f(s["aji"]), f(s["pq"]), f(s["dice"])])
    return rows


def _training_data(pretrain: dict[str, Any], config: dict[str, Any]) -> str:
    """Which data each checkpoint saw: the start point's, then CryoNuSeg's (and ``--mix-data``'s, if mixed in)."""
    folders = [Path(d).name for d in config.get("mix_data") or []]
    mixed = f" + {', '.join(folders)} ({config['mix_share']:.0%} of the crops)" if folders else ""
    rows = []
    if pretrain:
        sources = ", ".join(
            f"{Path(s['folder']).name} ({s['images']} images, {s['nuclei']:,} nuclei, {s['windows']} windows of 512 px)"
            for s in pretrain["sources"]
        )
        rows.append(["start point (pretraining)", sources, "see below"])
    rows.append(
        [
            "fold k model (CV)",
            f"the start point + the 27 CryoNuSeg tiles of the other nine organs{mixed}",
            "CC BY-NC-SA 4.0",
        ]
    )
    rows.append(["shipped model", f"the start point + all 30 CryoNuSeg tiles{mixed}", "CC BY-NC-SA 4.0"])
    return _md_table(["checkpoint", "data it saw", "license of that data"], rows)  # fmt: skip


def _pretraining_credits(stages: list[dict[str, Any]]) -> str:
    """Who made each dataset the start point saw, with its license, and the resize each stage applied."""
    folders = dict.fromkeys(Path(s["folder"]).name for stage in stages for s in stage.get("sources", []))
    if not folders:
        return "No pretraining data."
    resized = [
        f"{Path(s['folder']).name} x{s['resize']}"
        for stage in stages
        for s in stage.get("sources", [])
        if s.get("resize", 1) != 1
    ]
    text = "Pretraining data: " + "; ".join(DATASET_CREDITS.get(f, f) for f in folders) + ". "
    if resized:
        text += (
            "Folders resized before training so that their median nucleus area matches CryoNuSeg's: "
            + ", ".join(resized)
            + ". "
        )
    return text + (
        "None of their organs is a CryoNuSeg organ and none of their images is a CryoNuSeg tile, so one start "
        "point serves all ten folds without breaking the fold protocol."
    )


def _recipe_section(config: dict[str, Any]) -> str:
    """The fine-tuning recipe as its shipped file says it, or the saved config where no shipped recipe makes it."""
    name = shipped_recipe_of(config)
    if name is None:
        return f"Fine-tuning (CV and shipped model): `{json.dumps(config, sort_keys=True)}`"
    text = (RECIPES / f"{name}.yaml").read_text(encoding="utf-8").strip()
    return (
        f"Fine-tuning (CV and shipped model): the recipe `{name}` (`cryonuseg_hf/training/recipes/{name}.yaml`; "
        f"every other field keeps `TrainConfig`'s default):\n\n```yaml\n{text}\n```"
    )


def _resolution_note(config: dict[str, Any], ceiling: dict[str, Any]) -> str:
    """The limitation the output resolution sets, with the ceiling of ``benchmarks/bench_resolution_ceiling.py``."""
    scale, width = config["input_scale"], config["boundary_width"]
    note = (
        f"- SegFormer predicts at a quarter of its input; this model's input is the tile resized by {scale}, so "
        f"its logits are at {scale / 4:g} of the tile's resolution, and the boundary class is drawn {width} px wide."
    )
    best = {}
    for stride in (4, 2):
        rows = [
            r for r in ceiling.get("rows", []) if (r["output_stride"], r["boundary_width"]) == (stride, width)
        ]
        if rows:
            best[stride] = max(rows, key=lambda r: r["pq"])
    if len(best) == 2:
        note += (
            f" A perfect model at a quarter of the tile's resolution could score at most AJI {best[4]['aji']:.2f} / "
            f"PQ {best[4]['pq']:.2f} with this ring, at half resolution {best[2]['aji']:.2f} / {best[2]['pq']:.2f} "
            "(`experiments/results/resolution_ceiling.md`)."
        )
    return note


def _training_note(config: dict) -> str:
    """How the recipe weighs the pixels between touching nuclei (``--contact-weight``) and averages weights
    (``--soup``, ``--ema-decay``), where it does."""
    note = ""
    if config.get("contact_weight"):  # off, or a record made before the option existed
        note += (
            f", the cross-entropy of pixels within {config['contact_radius']} px of two or more nuclei "
            f"weighted {1 + config['contact_weight']:g}x"
        )
    if config.get("soup", 1) > 1:
        note += f", the weights of {config['soup']} such runs (seeds {config['seed']}, {config['seed'] + 1}, ...) averaged"
    if config.get("ema_decay"):
        note += (
            f", the exponential moving average of the weights (decay {config['ema_decay']:g} per step) kept"
        )
    return note


def card_body(
    metrics: dict[str, Any],
    final: dict[str, Any],
    pretrain: dict[str, Any] | None = None,
    peers: dict[str, Any] | None = None,
    ceiling: dict[str, Any] | None = None,
    stages: list[dict[str, Any]] | None = None,
) -> str:
    """The Markdown body: results beside InstanSeg and the human agreement, how they were made, usage, limits.

    ``pretrain`` is the start point's record; ``stages`` every pretraining stage behind it, earliest first
    (default: the start point alone).
    """
    pretrain, peers, ceiling = pretrain or {}, peers or {}, ceiling or {}
    stages = stages or ([pretrain] if pretrain else [])
    config = metrics["config"]
    markup = config["markup"]
    scores, human = metrics["scores"], observer_comparisons(metrics["human"])
    f = "{:.3f}".format
    overall = [
        [f"SegFormer (this model's recipe, CV) vs {m}", f(s["aji"]), f(s["pq"]), f(s["dice"])]
        for m, s in scores.items()
    ]
    overall += _peer_rows(peers, list(scores))
    overall += [
        [f"human, {name.replace('_', '-')} ({c['prediction']} vs {c['reference']})", f(c["mean"]["aji"]), f(c["mean"]["pq"]), f(c["mean"]["dice"])]
        for name, c in human.items()
    ]  # fmt: skip
    peer = peers.get("scores", {}).get("fixed_0.75", {}).get(markup, {}).get("per_organ", {})
    per_fold = []
    for fold, row in sorted(scores[markup].get("per_fold", {}).items(), key=lambda item: int(item[0])):
        organ = ORGANS[int(fold)]
        record = metrics["folds"].get(str(fold)) or metrics["folds"].get(fold) or {}
        theirs = peer.get(organ, {})
        per_fold.append(
            [str(fold), organ, f(row["aji"]), f(row["pq"]), f(row["dice"]),
             f(theirs["aji"]) if theirs else "", f(theirs["pq"]) if theirs else "",
             f(human["inter_observer"]["per_organ"][organ]["aji"]), f(human["inter_observer"]["per_organ"][organ]["pq"]),
             f(human["intra_observer"]["per_organ"][organ]["aji"]),
             str(record.get("steps", "")), str(record.get("train_seconds", ""))]
        )  # fmt: skip
    scale_note = metrics.get("scale_note") or "the full recipe"
    fold_commands = [r.get("command", "") for r in metrics["folds"].values() if r]
    generic = [re.sub(r"(--fold \d+ ?)+", "--fold K ", _short(c)).strip() for c in fold_commands]
    commands = ", ".join(f"`{c}`" for c in dict.fromkeys(generic)) or "(no fold records)"
    missing = 30 - metrics["n_tiles"]
    coverage = (
        "all 30 tiles"
        if not missing
        else f"{metrics['n_tiles']} of 30 tiles ({missing} without a held-out prediction)"
    )
    final_config = final.get("config", config)
    fold_seconds = sum(float(r.get("train_seconds", 0)) for r in metrics["folds"].values() if r)
    if pretrain:
        origin = (
            f"Pretrained here on other public 40x H&E nuclei data ({pretrain['windows']} windows of "
            f"512 px; none of it from CryoNuSeg), then fine-tuned on CryoNuSeg (10 organs x 3 tiles), ground "
            f"truth {ground_truth(config)}. No ImageNet or other outside weights."
        )
        described = [
            f"{stage['steps']} steps of {stage['config']['batch_size']} crops of {stage['config']['crop']} px at "
            f"input scale {stage['config']['input_scale']} in {stage['train_seconds'] / 60:.0f} min on "
            f"{stage.get('machine', 'an unrecorded machine')} (`{stage.get('run_by') or stage['command']}`"
            + (f"; {stage['data_note']}" if stage.get("data_note") else "")
            + ")"
            for stage in stages
        ]
        total = sum(stage["train_seconds"] for stage in stages) / 60
        pretrain_line = "Start point: " + "; then, from it, ".join(described)
        pretrain_line += f"; {total:.0f} min in all." if len(stages) > 1 else "."
    else:
        origin = f"Trained from random weights on CryoNuSeg (10 organs x 3 tiles), ground truth {ground_truth(config)}."
        pretrain_line = "No start point: random initial weights."
    cv_command = _short(fold_commands[0]) if fold_commands else "cryonuseg-hf train --cv"
    final_command = _short(final.get("command", "cryonuseg-hf train --final"))
    # a `--cv --final` run records one command for both
    reproduce = "\n".join(
        [
            *(stage.get("run_by") or stage["command"] for stage in stages),
            *(
                [f"cryonuseg-hf train --cv --final --recipe {shipped_recipe_of(config)}"]
                if shipped_recipe_of(config)
                else dict.fromkeys([cv_command, final_command])
            ),
        ]
    )
    peer_note = ""
    if peers:
        peer_note = (
            "InstanSeg rows: its `brightfield_nuclei` model (v0.1.1, Apache-2.0), the nuclei model a QuPath user "
            "picks today, run zero-shot by `benchmarks/bench_peers.py` on the same 30 tiles and scored by the "
            "same metric (it never saw CryoNuSeg; the 0.75 resize is its best of three scales, so slightly "
            "optimistic). "
        )
    return f"""
# SegFormer-{config["variant"]} for nuclei in frozen-section H&E (CryoNuSeg)

A stock `transformers` `SegformerForSemanticSegmentation` that labels every pixel of a 40x H&E tile as
`background`, `nucleus_interior` or `nucleus_boundary`; the `cryonuseg_hf` package turns those class
probabilities into one label per nucleus. {origin}

**How this checkpoint was trained: {scale_note}.** Machine: {final.get("machine", metrics["machine"])}.
{pretrain_line}
Shipped model: {"fine-tuned from it" if pretrain else "trained"} for {final.get("steps", "?")} steps of {final_config["batch_size"]} crops of
{final_config["crop"]} px, input scale {final_config["input_scale"]}{_training_note(final_config)}, {final.get("train_seconds", "?")} s, made by
`{_short(final.get("command", "?"))}`; post-processing tuned on {final_config["tune_tiles"] or "all"} of its
training tiles. The ten CV models took {fold_seconds / 60:.0f} min of fine-tuning together.

## What each checkpoint saw

{_training_data(pretrain, final_config)}

{_pretraining_credits(stages)}

## Results: leave-one-organ-out cross-validation

Ten folds, one per organ: the model of fold k never saw a tile of organ k, so every number below is on an
unseen organ. Mean over {coverage}; each tile's prediction is in `results/cv/predictions/<tile_id>.png`
(16-bit instance labels) in the source repository, made from the fold's saved checkpoint by
`predict_instances` (the function users call, same padding and test-time augmentation), with per-tile,
per-organ and per-fold tables. {peer_note}The human rows compare the annotators' own mark-ups over all 30
tiles: the best a model can be expected to agree with one annotator is about as well as the annotators agree
with each other.

{_md_table(["predictions vs reference", "AJI", "PQ", "Dice"], overall)}

Per fold, against {markup}, with InstanSeg (resized to 0.75) and the human agreement on the same organ:

{_md_table(["fold", "organ held out", "AJI", "PQ", "Dice", "InstanSeg AJI", "InstanSeg PQ", "inter-observer AJI", "inter-observer PQ", "intra-observer AJI", "steps", "train s"], per_fold)}

Trained by {commands} (K = the folds) on {metrics["machine"]}; scored by `{_short(metrics["command"])}`. Post-processing
thresholds were tuned on the training tiles of each fold only. Metrics: `cryonuseg_hf.evaluation.metrics` (HoVer-Net definitions; AJI pairs each reference
nucleus with its best prediction, PQ matches at IoU > 0.5), mean over tiles.

## How to get instances

```python
from cryonuseg_hf import predict_instances

labels = predict_instances("tile.png")  # 40x H&E, any size (tiled); (H, W) int32, 0 = background, 1..N nuclei
```

Or with `transformers` alone (class probabilities, then the package's post-processing):

```python
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, SegformerForSemanticSegmentation
from cryonuseg_hf import MODEL_PATH
from cryonuseg_hf.model.postprocess import params_from_config, probabilities_to_instances

image = np.asarray(Image.open("tile.png").convert("RGB"))

model = SegformerForSemanticSegmentation.from_pretrained(MODEL_PATH).eval()
processor = AutoImageProcessor.from_pretrained(MODEL_PATH)  # resizes to 512 * cryonuseg_input_scale
logits = model(**processor(image, return_tensors="pt")).logits
probabilities = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear").softmax(1)[0]
params, input_scale = params_from_config(model.config)
labels = probabilities_to_instances(probabilities.detach().numpy(), params)
```

Pass your Hub repository id instead of `MODEL_PATH` when the model is downloaded from the Hub.

`pipeline("image-segmentation", model=...)` and the Hub widget run the model unchanged, but they return one
mask per class, not per nucleus: instances need the post-processing above
(`cryonuseg_hf.model.predict.instances_from_pipeline` turns the pipeline's output into labels). The command line:
`cryonuseg-hf predict images/ -o out/` writes label TIFFs, GeoJSON, ImageJ ROIs and CSV.

The config carries `cryonuseg_input_scale` ({config["input_scale"]}: the factor by which a tile is resized
before the encoder) and `cryonuseg_postprocess` (the thresholds tuned on training tiles, among them
`min_confidence`: nuclei whose mean nucleus probability is lower are dropped).

## Limitations

- Frozen sections only: CryoNuSeg tiles are cryosectioned H&E, with freezing artefacts, folds and weaker
  chromatin detail than formalin-fixed, paraffin-embedded (FFPE) tissue. The start point saw FFPE tissue, the
  fine-tuning only frozen sections.
- 40x only (TCGA 40x scans, about 0.25 um/px): nuclei at other magnifications must be resized to 40x first.
- 30 tiles of 512x512 from 10 organs, 3 tiles each: the folds measure generalisation to an unseen organ from
  27 tiles, a small and noisy estimate (per-fold values rest on 3 tiles). Human agreement on these tiles is low
  (AJI 0.53 inter-observer), which caps any measured score.
{_resolution_note(config, ceiling)}
- License: the weights derive from CryoNuSeg and MoNuSeg (CC BY-NC-SA 4.0) and NuInsSeg (CC BY 4.0) and are
  released under CC BY-NC-SA 4.0: non-commercial use, attribution, share-alike. Cite Mahbod et al.,
  "CryoNuSeg", Computers in Biology and Medicine 132:104349 (2021), and the two pretraining datasets above.

## Training recipe

{_recipe_section(config)}

{chr(10).join(f"Pretraining stage {i + 1}: `{json.dumps(stage['config'], sort_keys=True)}`" + chr(10) for i, stage in enumerate(stages))}

Reproduce (each stage on the machine named above; every run resumes where it stopped when restarted):

```bash
{reproduce}
cryonuseg-hf model-card
```
"""


def write_model_card(
    results: str | Path = "results",
    out: str | Path = "model_card.md",
    repo_id: str = "cryonuseg/segformer-cryonuseg",
) -> Path:
    """Generate the card from ``results/cv/metrics.json`` and ``results/cv/final.json``; returns its path."""
    from huggingface_hub import ModelCard

    results = Path(results)
    metrics = _read(results / "cv" / "metrics.json")
    final_path = results / "cv" / "final.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else {}
    stages = pretraining_stages(final.get("config", metrics["config"]), results.resolve().parent)
    pretrain = stages[-1] if stages else {}
    peers = _read_optional(results / "peers.json")
    ceiling = _read_optional(results.resolve().parent / "experiments" / "results" / "resolution_ceiling.json")
    data = card_data(metrics, final, repo_id)
    card = ModelCard(
        f"---\n{data.to_yaml()}\n---\n{card_body(metrics, final, pretrain, peers, ceiling, stages)}"
    )
    out = Path(out)
    out.write_text(str(card))
    return out


def _md_table(header, rows) -> str:
    return "\n".join(table(header, rows))
