"""Carry the pretraining data to a GPU machine inside its 64 MiB transfer limit, and unpack it there.

The external collection's PNG images take 66 MB, more than a call to the GPU machine may carry beside this
repository. ``pack`` writes a copy in the same folder layout with every image re-encoded as JPEG (quality 95,
4:4:4 chroma; labels and ignore masks stay lossless PNG), about 18 MB. MoNuSeg's images were cut from TCGA
slides that are JPEG-compressed already. ``unpack`` decodes the copy back to PNG folders that
:func:`cryonuseg_hf.data.external.read_folder` reads, so the GPU run is the stock ``cryonuseg-hf pretrain`` command
on the decoded images. The largest pixel difference the re-encoding makes is printed and recorded in
``manifest.json``::

    python experiments/gpu_transfer.py pack --out .gpu/external        # here (.gpu/ is git-ignored)
    python3 experiments/gpu_transfer.py unpack .gpu/external /tmp/external   # on the GPU machine
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUALITY = 95


def pack(folders: list[Path], out: Path, quality: int = QUALITY) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"quality": quality, "subsampling": "4:4:4", "folders": {}}
    for folder in folders:
        target = out / folder.name
        (target / "images").mkdir(parents=True, exist_ok=True)
        for sub in ("labels", "ignore"):
            if (folder / sub).is_dir():
                shutil.copytree(folder / sub, target / sub, dirs_exist_ok=True)
        worst, mean_abs, n = 0, 0.0, 0
        for path in sorted((folder / "images").glob("*.png")):
            with Image.open(path) as image:
                rgb = image.convert("RGB")
            buffer = io.BytesIO()
            rgb.save(buffer, "JPEG", quality=quality, subsampling=0)
            (target / "images" / f"{path.stem}.jpg").write_bytes(buffer.getvalue())
            decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.int16)
            diff = np.abs(decoded - np.asarray(rgb, dtype=np.int16))
            worst, mean_abs, n = max(worst, int(diff.max())), mean_abs + float(diff.mean()), n + 1
        manifest["folders"][folder.name] = {
            "source": str(folder),
            "images": n,
            "max_abs_difference": worst,
            "mean_abs_difference": round(mean_abs / max(n, 1), 3),
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def unpack(packed: Path, out: Path) -> list[Path]:
    folders = []
    for target in sorted(p for p in packed.iterdir() if p.is_dir()):
        dest = out / target.name
        (dest / "images").mkdir(parents=True, exist_ok=True)
        for sub in ("labels", "ignore"):
            if (target / sub).is_dir():
                shutil.copytree(target / sub, dest / sub, dirs_exist_ok=True)
        for path in sorted((target / "images").glob("*.jpg")):
            with Image.open(path) as image:
                image.convert("RGB").save(dest / "images" / f"{path.stem}.png", compress_level=1)
        folders.append(dest)
    return folders


def main() -> None:
    from cryonuseg_hf.data.external import PRETRAINING_FOLDERS, default_external

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument(
        "--data", type=Path, action="append", help="pretraining folders (default: the shipped two)"
    )
    p.add_argument("--out", type=Path, default=Path(".gpu/external"))
    p.add_argument("--quality", type=int, default=QUALITY)
    u = sub.add_parser("unpack")
    u.add_argument("packed", type=Path)
    u.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        folders = args.data or [default_external() / name for name in PRETRAINING_FOLDERS]
        print(json.dumps(pack(folders, args.out, args.quality), indent=2))
    else:
        print("\n".join(str(p) for p in unpack(args.packed, args.out)))


if __name__ == "__main__":
    main()
