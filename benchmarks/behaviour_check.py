"""Fingerprints of what the package makes, to show that a restructuring changed no behaviour.

Run: ``.venv/bin/python benchmarks/behaviour_check.py --label after [--source RELEASE]``; writes
``results/behaviour_check.json`` (one entry per label; earlier labels are kept) and ``results/behaviour_check.md``.
Each fingerprint comes from the command line, the interface that outlives any move of code:

- ``build``: SHA-256 of every Parquet file that ``cryonuseg-hf build`` writes (all three configs);
- ``score``: SHA-256 of the scores in ``score.json`` that ``cryonuseg-hf score`` writes for the CV's held-out
  predictions (``results/cv/predictions``), with the report's wording and machine left out;
- ``predict``: SHA-256 of the instance labels that ``cryonuseg-hf predict --backend torch`` writes for six
  CryoNuSeg tiles (two organs of each species mix) with the shipped checkpoint.

To check a restructuring: run it with ``--label before`` on the old commit (``git worktree add``), then with
``--label after`` on the new one; the Markdown says whether each fingerprint is identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILES = (
    "Human_AdrenalGland_01",
    "Human_Larynx_02",
    "Human_LymphNodes_03",
    "Human_Mediastinum_01",
    "Human_Pancreas_02",
    "Human_Skin_03",
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "cryonuseg_hf.cli", *args], check=True, env=env, cwd=ROOT)


def build_fingerprint(source: Path, work: Path) -> dict[str, str]:
    out = work / "build"
    _run("build", "--source", str(source), "--out", str(out))
    return {str(p.relative_to(out)): _sha(p.read_bytes()) for p in sorted(out.rglob("*.parquet"))}


def _scores_only(value):
    """The numbers of a score report, without its words (which a report may reword), its command or its machine."""
    if isinstance(value, dict):
        return {
            k: _scores_only(v)
            for k, v in sorted(value.items())
            if k not in ("machine", "note", "sentence", "command")
        }
    if isinstance(value, list):
        return [_scores_only(v) for v in value]
    return value


def score_fingerprint(source: Path, work: Path) -> str:
    out = work / "score"
    _run(
        "score",
        str(ROOT / "results/cv/predictions"),
        "--source",
        str(source),
        "--out",
        str(out),
        "--cv",
        "none",
    )
    scores = json.loads((out / "score.json").read_text())
    return _sha(json.dumps(_scores_only(scores), sort_keys=True).encode())


def predict_fingerprint(source: Path, work: Path) -> dict[str, str]:
    from PIL import Image

    images = [next((source / "tissue images").rglob(f"{tile}.tif")) for tile in TILES]
    out = work / "predict"
    _run("predict", *map(str, images), "-o", str(out), "--backend", "torch", "--threads", "2")
    found = {}
    for tile in TILES:
        labels = np.asarray(Image.open(next(out.glob(f"{tile}*labels*.tif"))))
        found[tile] = _sha(labels.astype(np.int64).tobytes())
    return found


def main() -> None:
    from cryonuseg_hf.data.release import default_source

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", required=True, help="e.g. before or after")
    parser.add_argument("--source", type=Path, default=None, help="raw release (default: $CRYONUSEG_DATA)")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    source = args.source or default_source()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        entry = {
            "commit": commit.stdout.strip(),
            "build": build_fingerprint(source, work),
            "score": score_fingerprint(source, work),
            "predict": predict_fingerprint(source, work),
        }
    path = args.out / "behaviour_check.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record[args.label] = entry
    path.write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Behaviour check",
        "",
        "`python benchmarks/behaviour_check.py --label LABEL`, run per label.",
        "",
    ]
    labels = list(record)
    lines += ["| fingerprint | " + " | ".join(f"{k} ({record[k]['commit']})" for k in labels) + " |"]
    lines += ["|---|" + "---|" * len(labels)]
    first = record[labels[0]]
    for key in ("build", "score", "predict"):
        cells = ["identical" if record[k][key] == first[key] else "**differs**" for k in labels]
        cells[0] = "reference"
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    (args.out / "behaviour_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
