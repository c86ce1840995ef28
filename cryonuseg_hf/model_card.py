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

from cryonuseg_hf.folds import ORGANS

LICENSE = "cc-by-nc-sa-4.0"
DATASET_ID = "cryonuseg"
WIDGET_TILES = ("Human_Larynx_01", "Human_Skin_01")
"""Shipped in ``cryonuseg_hf/examples``; upload them beside the model as ``examples/<tile>.png``."""
CARD_METRICS = {"aji": "AJI", "pq": "PQ", "dice": "Dice"}


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `cryonuseg-hf train --cv --final` first")
    return json.loads(path.read_text())


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


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _short(command: str) -> str:
    """A recorded command without its ``--scale-note`` text (shown on its own in the card)."""
    return command.split(" --scale-note")[0]


def card_body(metrics: dict[str, Any], final: dict[str, Any]) -> str:
    """The Markdown body: results beside human agreement, how they were made, usage, limitations."""
    config = metrics["config"]
    markup = config["markup"]
    scores, human = metrics["scores"], metrics["human_agreement"]
    f = "{:.3f}".format
    overall = [[f"SegFormer vs {m}", f(s["aji"]), f(s["pq"]), f(s["dice"])] for m, s in scores.items()]
    overall += [
        [f"human, {name.replace('_', '-')} ({c['prediction']} vs {c['reference']})", f(c["mean"]["aji"]), f(c["mean"]["pq"]), f(c["mean"]["dice"])]
        for name, c in human.items()
    ]  # fmt: skip
    per_fold = []
    for fold, row in sorted(scores[markup].get("per_fold", {}).items(), key=lambda item: int(item[0])):
        organ = ORGANS[int(fold)]
        record = metrics["folds"].get(str(fold)) or metrics["folds"].get(fold) or {}
        per_fold.append(
            [str(fold), organ, f(row["aji"]), f(row["pq"]), f(row["dice"]),
             f(human["intra_observer"]["per_organ"][organ]["aji"]), f(human["inter_observer"]["per_organ"][organ]["aji"]),
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
    return f"""
# SegFormer-{config["variant"]} for nuclei in frozen-section H&E (CryoNuSeg)

A stock `transformers` `SegformerForSemanticSegmentation` that labels every pixel of a 40x H&E tile as
`background`, `nucleus_interior` or `nucleus_boundary`; the `cryonuseg_hf` package turns those class
probabilities into one label per nucleus. Trained from scratch (no pretrained encoder) on the 30 tiles of
CryoNuSeg (10 organs x 3), ground truth Annotator 1 round 2.

**How this checkpoint was trained: {scale_note}.** Machine: {final.get("machine", metrics["machine"])}.
Final model: {final.get("steps", "?")} steps of {final_config["batch_size"]} crops of {final_config["crop"]} px,
input scale {final_config["input_scale"]}, {final.get("train_seconds", "?")} s of training, made by
`{_short(final.get("command", "?"))}`; post-processing tuned on {final_config["tune_tiles"] or "all"} of its
training tiles.

## Results: leave-one-organ-out cross-validation

Ten folds, one per organ: the model of fold k never saw a tile of organ k, so every number below is on an
unseen organ. Mean over {coverage}; each tile's prediction is in `results/cv/predictions/<tile_id>.png`
(16-bit instance labels) in the source repository, with per-tile, per-organ and per-fold tables. The human rows
compare the annotators' own mark-ups over all 30 tiles: the best a model can be expected to agree with one
annotator is about as well as the annotators agree with each other.

{_table(["predictions vs reference", "AJI", "PQ", "Dice"], overall)}

Per fold, against {markup}, with the human agreement on the same organ:

{_table(["fold", "organ held out", "AJI", "PQ", "Dice", "AJI intra-observer", "AJI inter-observer", "steps", "train s"], per_fold)}

Trained by {commands} (K = the folds) on {metrics["machine"]}; scored by `{_short(metrics["command"])}`. Post-processing
thresholds were tuned on the training tiles of each fold only. Metrics: `cryonuseg_hf.metrics` (HoVer-Net definitions; AJI pairs each reference
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
from cryonuseg_hf.postprocess import params_from_config, probabilities_to_instances

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
(`cryonuseg_hf.predict.instances_from_pipeline` turns the pipeline's output into labels). The command line:
`cryonuseg-hf predict images/ -o out/` writes label TIFFs, GeoJSON, ImageJ ROIs and CSV.

The config carries `cryonuseg_input_scale` ({config["input_scale"]}: the factor by which a tile is upsampled
before the encoder, since SegFormer predicts at a quarter of its input size) and `cryonuseg_postprocess` (tuned
thresholds).

## Limitations

- Frozen sections only: CryoNuSeg tiles are cryosectioned H&E, with freezing artefacts, folds and weaker
  chromatin detail than formalin-fixed, paraffin-embedded (FFPE) tissue. Expect worse results on FFPE.
- 40x only (TCGA 40x scans, about 0.25 um/px): nuclei at other magnifications must be resized to 40x first.
- 30 tiles of 512x512 from 10 organs, 3 tiles each: the folds measure generalisation to an unseen organ from
  27 tiles, a small and noisy estimate (per-fold values rest on 3 tiles). Human agreement on these tiles is low
  (AJI 0.53 inter-observer), which caps any measured score.
- Trained from scratch: no pretrained encoder was available offline; fine-tune from pretrained weights with
  `cryonuseg-hf train --init <hub id or folder>`.
- The weights derive from CryoNuSeg and inherit its license, CC BY-NC-SA 4.0: non-commercial use, attribution,
  share-alike. Cite Mahbod et al., "CryoNuSeg", Computers in Biology and Medicine 132:104349 (2021).

## Training recipe

`{json.dumps(config, sort_keys=True)}`

Reproduce the whole cross-validation and the final model on one GPU (data resident on the GPU, bf16 autocast):

```bash
cryonuseg-hf train --pack .gpu/cryonuseg_tiles.npz
cryonuseg-hf train --data .gpu/cryonuseg_tiles.npz --cv --final --device cuda --variant b0 \\
    --input-scale 2 --batch-size 16 --crop 256 --steps 2000 --max-seconds 45 --workers 8
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
    data = card_data(metrics, final, repo_id)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{card_body(metrics, final)}")
    out = Path(out)
    out.write_text(str(card))
    return out
