"""The cross-validation's results files: ``metrics.json``, ``metrics.md`` and ``per_tile.csv`` of a CV folder,
from the held-out predictions there, scored against every mark-up, with the human agreement beside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.folds import fold_of
from cryonuseg_hf.training.config import ground_truth
from cryonuseg_hf.training.cv import read_predictions, score_predictions


def human_rows(results_dir: Path) -> dict[str, Any]:
    """The human-agreement comparisons from ``results/human_agreement.json`` (``cryonuseg-hf agreement``)."""
    path = results_dir / "human_agreement.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `cryonuseg-hf agreement` first")
    agreement = json.loads(path.read_text())
    return {name: agreement[name] for name in ("intra_observer", "inter_observer")}


def write_cv_results(
    out_dir: Path, tiles: dict[str, Any], run: dict[str, Any], human: dict[str, Any]
) -> dict:
    """Score every held-out prediction in ``out_dir`` and write ``metrics.json``, ``metrics.md``, ``per_tile.csv``."""
    import csv

    predictions = read_predictions(out_dir)
    if not predictions:
        raise FileNotFoundError(f"{out_dir / 'predictions'}: no held-out predictions to score")
    scores = score_predictions(predictions, tiles)
    folds = sorted({fold_of(t) for t in predictions})
    fold_records = {}
    for k in folds:
        path = out_dir / "folds" / f"fold_{k}.json"
        fold_records[k] = json.loads(path.read_text()) if path.is_file() else {}
    results = {
        **run,
        "n_tiles": len(predictions),
        "folds": fold_records,
        "scores": scores,
        "human_agreement": human,
    }
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    with open(out_dir / "per_tile.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["tile_id", "organ", "fold", "reference", "dice", "aji", "aji_plus", "pq", "dq", "sq"]
        )
        for markup, result in scores.items():
            for row in result["per_tile"]:
                writer.writerow(
                    [row["tile_id"], row["organ"], row["fold"], markup]
                    + [f"{row[m]:.4f}" for m in ("dice", "aji", "aji_plus", "pq", "dq", "sq")]
                )
        for name, comparison in human.items():
            for tile, row in comparison["per_tile"].items():
                writer.writerow(
                    [tile, row["organ"], fold_of(tile), f"human_{name}"]
                    + [f"{row[m]:.4f}" for m in ("dice", "aji", "aji_plus", "pq", "dq", "sq")]
                )
    (out_dir / "metrics.md").write_text(cv_markdown(results))
    return results  # fmt: skip


def cv_markdown(results: dict[str, Any]) -> str:
    """The CV results as Markdown tables: model vs each mark-up, with the human agreement beside."""
    metrics = ("dice", "aji", "aji_plus", "pq")
    scores, human, config = results["scores"], results["human_agreement"], results["config"]
    reference = config["markup"]
    lines = [
        "# SegFormer cross-validation on CryoNuSeg (leave one organ out)",
        "",
        f"Produced by `{results['command']}` on {results['machine']}.",
        f"{results['n_tiles']} of 30 tiles have a held-out prediction (`predictions/<tile_id>.png`, 16-bit instance "
        "labels, each made by the model of the fold that held the tile out). Means are over those tiles.",
        "",
        *([f"**Scale of this run: {results['scale_note']}**", ""] if results.get("scale_note") else []),
        f"Config: SegFormer-{config['variant']}, input scale {config['input_scale']}, {config['steps']} steps of "
        f"{config['batch_size']} crops of {config['crop']} px, lr {config['lr']}, seed {config['seed']}, "
        f"init {config['init'] or 'none (from scratch)'}, TTA {'8 flips/rotations' if config['tta'] else 'off'}, "
        f"ground truth {ground_truth(config)}; post-processing tuned on {config['tune_tiles'] or 'all'} training tiles per fold.",
        "",
        "## Mean over the held-out tiles",
        "",
        "| predictions vs reference | " + " | ".join(m.upper().replace("_PLUS", "+") for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for markup, result in scores.items():
        lines.append(f"| SegFormer vs {markup} | " + " | ".join(f"{result[m]:.4f}" for m in metrics) + " |")
    for name, comparison in human.items():
        label = f"human {name.replace('_', '-')} ({comparison['prediction']} vs {comparison['reference']}, 30 tiles)"
        lines.append(f"| {label} | " + " | ".join(f"{comparison['mean'][m]:.4f}" for m in metrics) + " |")
    others = [m for m in scores if m != reference]
    short = {"annotator1_round1": "A1r1", "annotator1_round2": "A1r2", "annotator2": "A2"}
    head = [f"{m} {short.get(reference, reference)}" for m in ("AJI", "PQ", "Dice")]
    head += [f"{m} {short.get(o, o)}" for o in others for m in ("AJI", "PQ")]
    head += ["AJI intra", "PQ intra", "AJI inter", "PQ inter"]

    def cells(group: str, key: str) -> list[str]:
        def pick(result: dict) -> dict:
            if group == "per_tile":
                return next(r for r in result["per_tile"] if r["tile_id"] == key)
            return result[group][key]

        row = pick(scores[reference])
        values = [row["aji"], row["pq"], row["dice"]]
        values += [pick(scores[o])[m] for o in others for m in ("aji", "pq")]
        for name in ("intra_observer", "inter_observer"):
            values += [human[name][group][key][m] for m in ("aji", "pq")]
        return [f"{v:.4f}" for v in values]

    trained_on = "one of the three trained on" if config.get("all_markups") else "the training ground truth"
    lines += [
        "",
        "## Per organ (= per fold), with the human agreement on the same tiles",
        "",
        f"Columns: the predictions against each mark-up (A1r2 = {reference}, {trained_on}); "
        "intra = Annotator 1 round 1 vs round 2, inter = Annotator 2 vs Annotator 1 round 2.",
        "",
        "| fold | organ | " + " | ".join(head) + " | steps | train s | tune + predict s |",
        "|---|---|" + "---|" * (len(head) + 3),
    ]
    for organ in scores[reference].get("per_organ", {}):
        k = fold_of(f"Human_{organ}_01")
        record = results["folds"].get(k) or results["folds"].get(str(k)) or {}
        timing = [str(record.get(f, "")) for f in ("steps", "train_seconds", "tune_predict_seconds")]
        lines.append(f"| {k} | {organ} | " + " | ".join(cells("per_organ", organ) + timing) + " |")
    lines += ["", "## Per tile", "", "| tile | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for row in scores[reference]["per_tile"]:
        lines.append(f"| {row['tile_id']} | " + " | ".join(cells("per_tile", row["tile_id"])) + " |")
    lines += [
        "",
        f"Seeds: numpy `default_rng([{config['seed']}, fold + 1])` for crops, torch `{config['seed']} * 1000 + fold + 1` "
        "for augmentation, torch `manual_seed` "
        f"{config['seed']} for the weights. Every value: `metrics.json`; per tile and mark-up: `per_tile.csv`.",
        "",
    ]
    return "\n".join(lines)  # fmt: skip
