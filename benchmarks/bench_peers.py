"""Peer model benchmark: InstanSeg ``brightfield_nuclei`` zero-shot on the 30 CryoNuSeg tiles, scored by our metric.

InstanSeg's H&E nuclei model (v0.1.1, TorchScript, Apache-2.0; Goldsborough et al. 2024, arXiv:2408.15954) is the
peer our SegFormer must beat. This script

1. checks that it reproduces the model's bioimage.io test pair (``test-input.npy`` is raw 0..255 RGB, so the rdf's
   ``scale_range`` preprocessing is applied first) and records the agreement;
2. runs it on every CryoNuSeg tile in three settings:

   - ``documented_scale``: each tile resized by ``microns_per_pixel / 0.5`` (the model expects 0.5 µm/px; the
     tiles are about 0.25 µm/px, so about half size), per tile from the slide sheet (Human_Testes_01 has no value
     there and gets the median of the other 29 tiles);
   - ``native``: the 512x512 tile as is (about 0.25 µm/px, twice the documented scale);
   - ``fixed_0.75``: every tile resized by 0.75, for comparison with an earlier note (AJI 0.522, PQ 0.517 vs
     annotator1_round2);

   a resized tile is shrunk with an anti-aliased bilinear resize, each channel of the model input is normalised
   to its own 0.1..99.9 percentiles (eps 1e-6, as rdf.yaml says), and the predicted labels are resized back to
   512x512 with nearest neighbour (no anti-aliasing);
3. scores each setting with ``cryonuseg_hf.evaluation.metrics.score`` against all three mark-ups (``label masks modify``);
4. times it on the CPU with 2 threads (``--threads``): seconds per tile, model only and end to end (image in, 512x512 labels out).
   The settings take turns tile by tile, so a load change on a shared machine hits all three alike.

Writes ``results/peers.json`` (everything, per tile included) and ``results/peers.md`` (summary tables, beside the
intra- and inter-observer agreement on the same tiles, from ``cryonuseg_hf.evaluation.agreement``). Run from the
repository root::

    .venv/bin/python benchmarks/bench_peers.py

The model folder (holding ``instanseg.pt``, ``rdf.yaml``, the README and the test pair) is ``--model``, else
``$CRYONUSEG_PEERS/instanseg_brightfield_nuclei``, else ``../shared/models/instanseg_brightfield_nuclei`` beside
the repository. The data is the raw release at ``$CRYONUSEG_DATA`` or ``../shared/datasets/cryonuseg``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEERS_ENV = "CRYONUSEG_PEERS"
MODEL_NAME = "instanseg_brightfield_nuclei"
MODEL_MICRONS_PER_PIXEL = 0.5
PERCENTILES = (0.1, 99.9)
EPS = 1e-6
THREADS = 2
TILE_SIDE = 512
REFERENCE = "annotator1_round2"
FIXED_FACTOR = 0.75
EARLIER_NOTE = {"factor": FIXED_FACTOR, "reference": REFERENCE, "aji": 0.522, "pq": 0.517}
SETTINGS: dict[str, str] = {
    "documented_scale": "resized by microns_per_pixel / 0.5 (to the model's documented 0.5 µm/px)",
    "native": "the 512x512 tile as is (about 0.25 µm/px)",
    "fixed_0.75": "resized by 0.75 (as in an earlier note)",
}
METRIC_COLUMNS = (("aji", "AJI"), ("aji_plus", "AJI+"), ("pq", "PQ"), ("dice", "Dice"))
HUMAN_ROWS = (("intra_observer", "intra-observer"), ("inter_observer", "inter-observer"))
"""Human agreement shown beside the model: A1r1 resp. A2 scored against A1r2."""


def default_model_dir() -> Path:
    """``$CRYONUSEG_PEERS/instanseg_brightfield_nuclei``, else the copy under ``../shared/models``."""
    peers = Path(os.environ[PEERS_ENV]) if PEERS_ENV in os.environ else REPO.parent / "shared" / "models"
    return peers / MODEL_NAME


# --- the model -------------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_data(readme: Path) -> list[dict[str, str]]:
    """The training data sets listed in the model's README (``- name`` then ``- License:`` and ``- URL:``)."""
    sets: list[dict[str, str]] = []
    in_list = False
    for line in readme.read_text(encoding="utf-8").splitlines():
        if "trained on the following datasets" in line:
            in_list = True
            continue
        if not in_list:
            continue
        field = re.match(r"^\s+- (License|URL): (.*)$", line)
        name = re.match(r"^- (\S+)\s*$", line)
        if field and sets:
            sets[-1][field[1].lower()] = field[2].strip()
        elif name:
            sets.append({"name": name[1]})
        elif line.strip() and sets:
            break
    return sets


def provenance(model_dir: Path) -> dict[str, Any]:
    """Name, version, license, weights hash (checked against rdf.yaml), training data and citation."""
    import yaml

    rdf = yaml.safe_load((model_dir / "rdf.yaml").read_text(encoding="utf-8"))
    weights = model_dir / rdf["weights"]["torchscript"]["source"]
    digest = sha256_of(weights)
    return {
        "name": rdf["name"],
        "version": rdf["version"],
        "license": rdf["license"],
        "git_repo": rdf.get("git_repo"),
        "citation": [c.get("doi") for c in rdf.get("cite", [])],
        "folder": str(model_dir),
        "weights": weights.name,
        "weights_sha256": digest,
        "weights_sha256_matches_rdf": digest == rdf["weights"]["torchscript"]["sha256"],
        "input_microns_per_pixel": rdf["inputs"][0]["axes"][2]["scale"],
        "preprocessing": rdf["inputs"][0]["preprocessing"],
        "training_data": training_data(model_dir / rdf["documentation"]),
    }


def load_model(model_dir: Path):
    import torch

    return torch.jit.load(str(model_dir / "instanseg.pt"), map_location="cpu").eval()


def scale_range(image: np.ndarray) -> np.ndarray:
    """rdf.yaml's ``scale_range``: each channel of an (H, W, C) image to its 0.1..99.9 percentiles, as float32."""
    image = image.astype(np.float32)
    low, high = np.percentile(image, PERCENTILES, axis=(0, 1), keepdims=True)
    return ((image - low) / (high - low + EPS)).astype(np.float32)


def run_model(model, image: np.ndarray) -> np.ndarray:
    """Normalised (H, W, 3) float32 image in, (H, W) int32 instance labels out."""
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None]))
    with torch.inference_mode():
        labels = model(batch)
    return labels[0, 0].numpy().astype(np.int32)


def check_test_pair(model, model_dir: Path) -> dict[str, Any]:
    """Run the bioimage.io test input (normalised first when it is raw) and compare with the test output."""
    from cryonuseg_hf.evaluation.metrics import score_tile

    raw = np.load(model_dir / "test-input.npy")
    expected = np.load(model_dir / "test-output_instance_segmentation.npy")[0, 0]
    image = raw[0].transpose(1, 2, 0)
    is_raw = float(image.max()) > 1.5
    start = time.perf_counter()
    got = run_model(model, scale_range(image) if is_raw else image.astype(np.float32))
    seconds = time.perf_counter() - start
    same = score_tile(expected.astype(np.int64), got)
    return {
        "input_shape": list(raw.shape),
        "input_range": [float(raw.min()), float(raw.max())],
        "input_was_raw": is_raw,
        "normalised_with": "scale_range 0.1..99.9 per channel" if is_raw else "none (already normalised)",
        "identical": bool(np.array_equal(got, expected)),
        "pixel_agreement": float((got == expected).mean()),
        "instances_expected": int(np.count_nonzero(np.unique(expected))),
        "instances_got": int(np.count_nonzero(np.unique(got))),
        "aji_vs_expected": same["aji"],
        "pq_vs_expected": same["pq"],
        "seconds_first_call": seconds,
    }


# --- the data and the settings ---------------------------------------------------------------------------------


def tile_scales(tile_ids: list[str]) -> dict[str, dict[str, Any]]:
    """µm/px per tile from the slide sheet; a tile without one gets the median of the others (noted)."""
    from cryonuseg_hf.data.metadata import read_slide_metadata
    from cryonuseg_hf.data.release import default_source, open_release

    meta = read_slide_metadata(open_release(default_source()).metadata_xlsx)
    known = [meta[t]["microns_per_pixel"] for t in tile_ids if meta[t]["microns_per_pixel"] is not None]
    median = float(statistics.median(known))
    scales = {}
    for tile in tile_ids:
        mpp = meta[tile]["microns_per_pixel"]
        if mpp is None:
            scales[tile] = {"microns_per_pixel": median, "source": f"median of the other {len(known)} tiles"}
        else:
            scales[tile] = {"microns_per_pixel": float(mpp), "source": "slide sheet"}
    return scales


def factor_of(setting: str, microns_per_pixel: float) -> float:
    if setting == "documented_scale":
        return microns_per_pixel / MODEL_MICRONS_PER_PIXEL
    if setting == "native":
        return 1.0
    if setting == "fixed_0.75":
        return FIXED_FACTOR
    raise ValueError(f"unknown setting {setting!r}")


def segment(model, image: np.ndarray, factor: float) -> tuple[np.ndarray, dict[str, Any]]:
    """One uint8 RGB tile in, 512x512 labels out, the input resized by ``factor`` around the model."""
    from skimage.transform import resize

    start = time.perf_counter()
    side = round(image.shape[0] * factor), round(image.shape[1] * factor)
    if side != image.shape[:2]:
        resized = resize(image.astype(np.float32), side, order=1, anti_aliasing=True, preserve_range=True)
    else:
        resized = image
    normalised = scale_range(resized)
    model_start = time.perf_counter()
    labels = run_model(model, normalised)
    model_seconds = time.perf_counter() - model_start
    if labels.shape != image.shape[:2]:
        labels = resize(labels, image.shape[:2], order=0, anti_aliasing=False, preserve_range=True)
        labels = labels.astype(np.int32)
    total_seconds = time.perf_counter() - start
    info = {
        "model_input": [side[0], side[1]],
        "instances": int(np.count_nonzero(np.unique(labels))),
        "model_seconds": model_seconds,
        "end_to_end_seconds": total_seconds,
    }
    return labels, info


def predict_all(
    model, tiles: dict[str, Any], scales: dict[str, dict], save: Path | None = None
) -> tuple[dict, dict]:
    """Every tile in every setting, the settings taking turns per tile (after one untimed warm-up each); with
    ``save``, each prediction is also written as ``save/<setting>/<tile_id>.png`` (16-bit labels, untimed)."""
    first = tiles["images"][0]
    warmup = {}
    for setting in SETTINGS:
        _, info = segment(model, first, factor_of(setting, scales[tiles["tile_ids"][0]]["microns_per_pixel"]))
        warmup[setting] = info["end_to_end_seconds"]
    predictions: dict[str, list[np.ndarray]] = {s: [] for s in SETTINGS}
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for k, tile in enumerate(tiles["tile_ids"]):
        for setting in SETTINGS:
            factor = factor_of(setting, scales[tile]["microns_per_pixel"])
            labels, info = segment(model, tiles["images"][k], factor)
            predictions[setting].append(labels)
            if save is not None:
                save_labels(save / setting / f"{tile}.png", labels)
            runs[setting].append({"tile_id": tile, "factor": factor, **info})
        print(f"{k + 1:2d}/{len(tiles['tile_ids'])} {tile} load {os.getloadavg()[0]:.2f}", flush=True)
    return predictions, {"warmup_seconds": warmup, "runs": runs}


def save_labels(path: Path, labels: np.ndarray) -> None:
    """Instance labels as a 16-bit PNG, the form of results/cv/predictions (``cryonuseg-hf score`` reads it)."""
    from PIL import Image

    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: {labels.max()} nuclei do not fit a 16-bit PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint16)).save(path)


def timing_summary(runs: list[dict]) -> dict[str, float]:
    out = {}
    for key in ("model_seconds", "end_to_end_seconds"):
        values = [r[key] for r in runs]
        out[f"{key}_mean"] = float(np.mean(values))
        out[f"{key}_median"] = float(np.median(values))
        out[f"{key}_total"] = float(np.sum(values))
    return out


# --- scoring and writing ---------------------------------------------------------------------------------------


def score_setting(predictions: list[np.ndarray], tiles: dict[str, Any]) -> dict[str, Any]:
    """Scores against every mark-up; ``per_fold`` is left out because fold k is organ k (same as ``per_organ``)."""
    from cryonuseg_hf.core.folds import fold_of, organ_of
    from cryonuseg_hf.evaluation.metrics import score

    ids = list(tiles["tile_ids"])
    references = {markup: list(masks) for markup, masks in tiles["masks"].items()}
    scored = score(
        predictions,
        references,
        organs=[organ_of(t) for t in ids],
        folds=[fold_of(t) for t in ids],
        tile_ids=ids,
    )
    for result in scored.values():
        result.pop("per_fold", None)
    return scored


def human_agreement(tiles: dict[str, Any]) -> dict[str, Any]:
    """The intra- and inter-observer comparisons on the loaded tiles (``HUMAN_ROWS``)."""
    from cryonuseg_hf.evaluation.agreement import COMPARISONS, markup_pairs, observer_comparisons

    masks = {m: dict(zip(tiles["tile_ids"], stack, strict=True)) for m, stack in tiles["masks"].items()}
    references = sorted({reference for reference, _ in COMPARISONS.values()})
    return observer_comparisons(markup_pairs(masks, references, list(tiles["tile_ids"])))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def means_table(report: dict[str, Any], human: dict[str, Any] | None) -> list[str]:
    rows = []
    for markup in report["markups"]:
        for setting in SETTINGS:
            result = report["scores"][setting][markup]
            counts = f"{result['n_pred']} / {result['n_true']}"
            rows.append([markup, setting] + [f"{result[m]:.4f}" for m, _ in METRIC_COLUMNS] + [counts])
        if markup == REFERENCE and human is not None:
            for key, label in HUMAN_ROWS:
                rows.append(
                    [markup, f"human {label}"]
                    + [f"{human[key]['mean'][m]:.4f}" for m, _ in METRIC_COLUMNS]
                    + [""]
                )
    header = ["reference", "setting"] + [name for _, name in METRIC_COLUMNS] + ["nuclei pred / ref"]
    return _table(header, rows)


def organ_table(report: dict[str, Any], human: dict[str, Any] | None) -> list[str]:
    from cryonuseg_hf.core.folds import ORGANS

    columns = [(s, report["scores"][s][REFERENCE]["per_organ"]) for s in SETTINGS]
    if human is not None:
        columns += [(label, human[key]["per_organ"]) for key, label in HUMAN_ROWS]
    header = ["organ"] + [f"{metric} {name}" for metric in ("AJI", "PQ") for name, _ in columns]
    rows = []
    for organ in ORGANS:
        row = [organ]
        for metric in ("aji", "pq"):
            row += [f"{per_organ[organ][metric]:.4f}" for _, per_organ in columns]
        rows.append(row)
    return _table(header, rows)


def timing_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for setting in SETTINGS:
        t = report["timing"]["per_setting"][setting]
        rows.append(
            [
                setting,
                f"{t['model_seconds_mean']:.2f}",
                f"{t['end_to_end_seconds_mean']:.2f}",
                f"{t['end_to_end_seconds_median']:.2f}",
            ]
        )
    return _table(["setting", "model s/tile (mean)", "end to end s/tile (mean)", "end to end (median)"], rows)


def markdown(report: dict[str, Any], human: dict[str, Any] | None) -> str:
    from cryonuseg_hf.core.machine import load_words

    peer, check, timing = report["model"], report["test_pair"], report["timing"]
    lines = [
        "# Peer model: InstanSeg brightfield_nuclei, zero-shot on CryoNuSeg",
        "",
        f"Produced by `{report['command']}` (`benchmarks/bench_peers.py`) on {report['machine']}, "
        f"torch {report['versions']['torch']}, {report['threads']} threads. InstanSeg `{peer['name']}` "
        f"v{peer['version']} ({peer['license']}; trained on "
        f"{', '.join(d['name'] for d in peer['training_data'])}), TorchScript from `{peer['folder']}`, run on all "
        f"30 tiles and scored with `cryonuseg_hf.evaluation.metrics.score` against each mark-up's `label masks modify` "
        "masks; every value is the mean over the 30 tiles of the per-tile value. No tuning, no test-time "
        "augmentation; the model is a yardstick and was not trained on CryoNuSeg.",
        "",
        f"Test pair: on the bioimage.io test input (raw 0..255, so normalised with `scale_range` first) the "
        f"output is {'identical to' if check['identical'] else 'not identical to'} the test output "
        f"({check['pixel_agreement']:.4%} of pixels equal, {check['instances_got']} vs "
        f"{check['instances_expected']} instances).",
        "",
        "Settings (inputs resized with an anti-aliased bilinear resize, each channel normalised to its 0.1..99.9 "
        "percentiles, labels resized back to 512x512 with nearest neighbour):",
        "",
        *[f"- `{name}`: {text};" for name, text in SETTINGS.items()],
        "",
        f"µm/px per tile from the slide sheet (range {report['microns_per_pixel']['min']:.4f}.."
        f"{report['microns_per_pixel']['max']:.4f}); {report['microns_per_pixel']['note']}.",
        "",
        "## Means over the 30 tiles",
        "",
        *means_table(report, human),
        "",
        f"The earlier note's resized-to-0.75 score vs {REFERENCE}: AJI {EARLIER_NOTE['aji']}, PQ "
        f"{EARLIER_NOTE['pq']}; here `fixed_0.75`: AJI {report['scores']['fixed_0.75'][REFERENCE]['aji']:.4f}, "
        f"PQ {report['scores']['fixed_0.75'][REFERENCE]['pq']:.4f}.",
        "",
        f"## Per organ vs {REFERENCE} (mean over the organ's 3 tiles)",
        "",
        *organ_table(report, human),
        "",
        "## Time per tile",
        "",
        f"CPU, {report['threads']} threads, on "
        f"{load_words(timing['load_before'][0], timing['load_after'][0])}; the settings took turns "
        "tile by tile. End to end = uint8 tile in, 512x512 labels out (resize, normalise, model, resize back).",
        "",
        *timing_table(report),
        "",
        "Per-tile scores, counts and times: `peers.json`.",
        "",
    ]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    import skimage
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-image": skimage.__version__,
    }


def build_report(args, model_dir: Path, tiles: dict[str, Any], scales: dict[str, dict], model) -> dict:
    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.data.release import MARKUPS

    command = ".venv/bin/python benchmarks/bench_peers.py" + "".join(f" {a}" for a in (args.argv or []))
    mpps = [s["microns_per_pixel"] for s in scales.values()]
    filled = [t for t, s in scales.items() if s["source"] != "slide sheet"]
    note = "; ".join(f"{t} has none in the sheet and gets {scales[t]['source']}" for t in filled)
    report: dict[str, Any] = {
        "command": command,
        "machine": machine_description(),
        "threads": args.threads,
        "versions": versions(),
        "model": provenance(model_dir),
        "test_pair": check_test_pair(model, model_dir),
        "settings": {name: {"description": text} for name, text in SETTINGS.items()},
        "microns_per_pixel": {
            "min": min(mpps),
            "max": max(mpps),
            "note": note or "every tile has a value",
            "per_tile": scales,
        },
        "markups": list(MARKUPS),
        "earlier_note": EARLIER_NOTE,
    }
    load_before = list(os.getloadavg())
    predictions, timing = predict_all(model, tiles, scales, save=args.save_predictions)
    report["timing"] = {
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
        "warmup_seconds": timing["warmup_seconds"],
        "per_setting": {s: timing_summary(timing["runs"][s]) for s in SETTINGS},
        "per_tile": timing["runs"],
    }
    report["scores"] = {s: score_setting(predictions[s], tiles) for s in SETTINGS}
    for setting in SETTINGS:
        report["settings"][setting]["means"] = {
            markup: {m: report["scores"][setting][markup][m] for m, _ in METRIC_COLUMNS}
            for markup in report["markups"]
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=REPO / "results", help="folder for peers.json and peers.md"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"InstanSeg model folder (default: ${PEERS_ENV}/{MODEL_NAME}, else ../shared/models/{MODEL_NAME})",
    )
    parser.add_argument("--threads", type=int, default=THREADS, help="CPU threads for torch")
    parser.add_argument(
        "--save-predictions",
        type=Path,
        default=None,
        help="also write every prediction as <DIR>/<setting>/<tile_id>.png (e.g. results/peer_predictions, "
        "git-ignored), for `cryonuseg-hf score` and benchmarks/score_peers.py",
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv

    import torch

    from cryonuseg_hf.training.data import load_tiles

    torch.set_num_threads(args.threads)
    model_dir = (args.model or default_model_dir()).resolve()
    model = load_model(model_dir)
    tiles = load_tiles(None)
    scales = tile_scales(list(tiles["tile_ids"]))
    report = build_report(args, model_dir, tiles, scales, model)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "peers.md").write_text(markdown(report, human_agreement(tiles)))
    for setting in SETTINGS:
        means = report["settings"][setting]["means"][REFERENCE]
        print(setting, {k: round(v, 4) for k, v in means.items()})
    print(f"wrote {args.out / 'peers.json'} and {args.out / 'peers.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
