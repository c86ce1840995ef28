"""One table of every training experiment under ``experiments/results/``: recipe, CPU time, accuracy per fold.

Run: ``.venv/bin/python experiments/summary.py``. Reads each ``experiments/results/*/metrics.json``
(written by ``cryonuseg-hf train --fold K ... --out experiments/results/<name>``) and the start point's
``pretrain.json`` it names, and writes ``experiments/results/README.md``. The experiments share a fixed subset
of folds where they can (folds 1 Larynx and 4 Pancreas; the later ones fold 0 AdrenalGland too), so their rows
compare; the full CV (``results/cv``) is a row too, and the InstanSeg columns come from ``results/peers.json``
(``benchmarks/bench_peers.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryonuseg_hf.core.folds import ORGANS

REPO = Path(__file__).resolve().parents[1]
FOLDS = (0, 1, 4)
PAIR = (1, 4)
PEER = "fixed_0.75"
OTHER_MARKUPS = ("annotator1_round1", "annotator2")
"""Mark-ups besides the headline one (annotator1_round2) with a column of the mean over ``FOLDS``."""


def pretrain_minutes(init: str | None) -> str:
    if not init:
        return "none"
    record = Path(init) if Path(init).is_absolute() else REPO / init
    if not record.is_dir():  # start points that nothing ships moved beside the experiments
        moved = (
            REPO / "experiments" / "start_points" / Path(init).name,
            REPO / init.replace("results/experiments", "experiments/results"),
        )
        record = next((m for m in moved if m.is_dir()), record)
    record = record / "pretrain.json"
    if not record.is_file():
        return f"`{init}`"
    pretrain = json.loads(record.read_text())
    config = pretrain["config"]
    machine = pretrain.get("machine", "")
    where = f" on a GPU ({machine.split('GPU ', 1)[1]})" if "GPU " in machine else ""
    stage = f"{pretrain['train_seconds'] / 60:.0f} min{where} ({pretrain['steps']} steps of {config['batch_size']}x{config['crop']}² at scale {config['input_scale']}, `{init}`)"
    earlier = config.get("init")
    return f"{pretrain_minutes(earlier)}, then {stage}" if earlier else stage


def row(name: str, metrics: dict) -> list[str]:
    config, reference = metrics["config"], metrics["config"]["markup"]
    per_fold = metrics["scores"][reference].get("per_fold", {})
    cells = [
        f"`{name}`",
        pretrain_minutes(config.get("init")),
        f"{config['variant']}, scale {config['input_scale']}, stride {config.get('first_stride', 4)}, "
        f"width {config['boundary_width']}"
        + (
            f", contact weight {config['contact_weight']:g} within {config['contact_radius']} px"
            if config.get("contact_weight")
            else ""
        )
        + (", trained on all three mark-ups" if config.get("all_markups") else "")
        + (
            f", centre class (fraction {config['centre_fraction']:g}, seeds the watershed)"
            if config.get("centre_fraction")
            else ""
        )
        + (
            f", class weights {' '.join(f'{w:g}' for w in config['class_weights'])}"
            if list(config.get("class_weights", (1, 1, 2))) != [1, 1, 2]
            else ""
        ),
        f"{config['steps']} x {config['batch_size']}x{config['crop']}², lr {config['lr']}"
        + (f", weights averaged (EMA {config['ema_decay']:g})" if config.get("ema_decay") else "")
        + (f", weights of {config['soup']} seeds averaged" if config.get("soup", 1) > 1 else "")
        + (
            f", {config['mix_share']:.0%} of crops from {', '.join(Path(d).name for d in config['mix_data'])}"
            if config.get("mix_data")
            else ""
        ),
    ]
    seconds = [float(r.get("train_seconds", 0)) for r in metrics["folds"].values() if r]
    cells.append(f"{sum(seconds) / max(len(seconds), 1):.0f}")
    filtered = any("min_confidence" in r.get("postprocess", {}) for r in metrics["folds"].values() if r)
    cells.append("grid, then min_size x min_confidence" if filtered else "grid")
    others = [
        fold_cells({int(k): v for k, v in metrics["scores"][m].get("per_fold", {}).items()})[-1]
        for m in OTHER_MARKUPS
    ]
    return cells + fold_cells({int(k): v for k, v in per_fold.items()}) + others


def fold_cells(per_fold: dict[int, dict]) -> list[str]:
    """AJI / PQ of each of ``FOLDS``, then their means over ``PAIR`` and over ``FOLDS`` ("" where one is missing)."""

    def mean(folds: tuple[int, ...]) -> str:
        scores = [per_fold.get(k) for k in folds]
        if not all(scores):
            return ""
        return " / ".join(f"{sum(s[m] for s in scores) / len(scores):.3f}" for m in ("aji", "pq"))

    return [mean((k,)) for k in FOLDS] + [mean(PAIR), mean(FOLDS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=Path, default=REPO / "experiments" / "results")
    args = parser.parse_args()

    runs = sorted(p.parent for p in args.experiments.glob("*/metrics.json"))
    rows = [row(run.name, json.loads((run / "metrics.json").read_text())) for run in runs]
    cv = REPO / "results" / "cv" / "metrics.json"
    if cv.is_file():
        rows.append(
            row("../../results/cv", json.loads(cv.read_text()))
        )  # the full CV; all 10 folds in its metrics.md
    peers_path = REPO / "results" / "peers.json"
    if peers_path.is_file():
        peer = json.loads(peers_path.read_text())["scores"][PEER]

        def peer_folds(markup: str) -> dict[int, dict]:
            per_organ = peer[markup]["per_organ"]
            return {k: per_organ[organ] for k, organ in enumerate(ORGANS) if organ in per_organ}

        others = [fold_cells(peer_folds(m))[-1] for m in OTHER_MARKUPS]
        recipe_cells = [""] * 5  # pretraining, model, fine-tuning, train s, post-processing
        name = "InstanSeg zero-shot, resized 0.75 (peer)"
        rows.append([name, *recipe_cells, *fold_cells(peer_folds("annotator1_round2")), *others])
    header = [
        "experiment", "pretraining", "model", "fine-tuning", "train s per fold", "post-processing tuned",
        *(f"fold {k} {ORGANS[k]} AJI / PQ" for k in FOLDS), "mean of folds 1 and 4", "mean of folds 0, 1, 4",
        *(f"mean of folds 0, 1, 4 vs {m}" for m in OTHER_MARKUPS),
    ]  # fmt: skip
    lines = [
        "# Training experiments on the CPU",
        "",
        "Produced by `python experiments/summary.py` from the `metrics.json` of each folder here; each "
        "folder's `metrics.md` names the command that made it, the machine and the load it ran under. Scores: "
        "AJI / PQ against annotator1_round2 (the last two columns: against the other two mark-ups), mean over the "
        "fold's 3 held-out tiles (TTA on, post-processing tuned on training tiles). Only 3 tiles per fold: "
        "differences of a few hundredths are within noise.",
        "",
        "Related measurements: CPU seconds per step of each option (`../../results/train_step_cpu.md`: bf16 autocast 1.6x "
        "faster, first stride 2 3.5x slower) and the ceiling each output resolution allows "
        "(`resolution_ceiling.md`). Start points pretrained on a GPU, and the ones not kept: "
        "`gpu_pretraining/README.md`. Post-processing and prediction variants (tuning on TTA probabilities, smoothing, "
        "wider mask thresholds, a larger input scale at prediction) on fixed fold models, and the size bias of the "
        "CV's nuclei: `postprocess/postprocess.md`. A third pretraining stage on the CPU, not kept: "
        "`../start_points/pretrained_cpu3/README.md`; a start point adapted to output stride 2 on the CPU, not kept: "
        "`../start_points/pretrained_stride2_cpu/README.md`; SegFormer-b1 pretrained on the CPU, not kept: "
        "`../start_points/pretrained_b1_cpu/README.md`. Why reference nuclei go unmatched (missed, merged, split, poor fit) for the "
        "CV, InstanSeg and the second annotator: `../../results/error_types.md`. Post-processing tuned on the grid only, or "
        "then also on the minimum size and the confidence filter together (`min_confidence`, from commit 82082ed): "
        "its effect on the fold models of the CV of commit 618eb0c (one mark-up) is in "
        "`postprocess_confidence/postprocess.md`; compare rows "
        "tuned the same way. Tuning on all 27 training tiles of a fold instead of 9, on the same fold models: "
        '`postprocess_tune_all/postprocess.md`. Rows that say "trained on all three mark-ups" (`--all-markups`) '
        "also tuned their post-processing on the mean over the three; the same fold models tuned on one mark-up or "
        "on three: `postprocess_all_markups/postprocess.md`. On the fold models of the current CV, not adopted: two "
        "more searches after the grid, splitting markers at distance-transform maxima "
        "(`postprocess_split/postprocess.md`) and the minimum marker size (`postprocess_marker_size/postprocess.md`), "
        "and tuning for PQ alone instead of the mean of AJI and PQ (`postprocess_pq/postprocess.md`). "
        "How far fold models agree with themselves under shifts of 1-3 px, without and with TTA: "
        "`shift_stability.md`, `shift_stability_tta.md`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]
    (args.experiments / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
