"""Speed of reading ROI sets and regenerating masks on the real release (one core of this machine).

Run: ``.venv/bin/python benchmarks/bench_masks.py [--source RELEASE] [--out results]``; writes
``results/mask_speed.md``. Timed, best of ``--repeats`` runs each:

- ``rois.read_roi_set`` on all 90 ROI sets (~24k ROIs);
- per (tile, mark-up) pair: ``masks.instance_masks``, ``mask_variants.nuclei_borders`` for widths 1..10 from the
  nuclei (rasterisation included) and from a label image, and ``mask_variants.mask_variants`` (everything);
- the totals over the 90 pairs, i.e. what a dataset build that regenerates borders (or everything) costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    from cryonuseg_hf.core.machine import machine_description
    from cryonuseg_hf.data.mask_variants import mask_variants, nuclei_borders
    from cryonuseg_hf.data.masks import instance_masks
    from cryonuseg_hf.data.release import default_source, open_release
    from cryonuseg_hf.data.rois import read_roi_set

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    release = open_release(args.source or default_source())
    sets = [(m, t, p) for m, files in release.markups.items() for t, p in files.rois.items()]
    read_all = _best(lambda: [read_roi_set(p) for _, _, p in sets], args.repeats)
    nuclei = {(m, t): read_roi_set(p) for m, t, p in sets}
    n_rois = sum(len(n) for n in nuclei.values())

    per_pair = {"instance_masks": [], "nuclei_borders (from nuclei)": [], "nuclei_borders (from labels)": []}
    everything = []
    for items in nuclei.values():
        labels = instance_masks(items)[1]
        per_pair["instance_masks"].append(_best(lambda items=items: instance_masks(items), args.repeats))
        per_pair["nuclei_borders (from nuclei)"].append(
            _best(lambda items=items: nuclei_borders(items), args.repeats)
        )
        per_pair["nuclei_borders (from labels)"].append(
            _best(lambda labels=labels: nuclei_borders(labels), args.repeats)
        )
        everything.append(_best(lambda items=items: mask_variants(items), 1))
    per_pair["mask_variants (all 18 variants)"] = everything

    lines = [
        "# Mask regeneration speed",
        "",
        f"Produced by `.venv/bin/python benchmarks/bench_masks.py` on {machine_description()}, one process, "
        f"best of {args.repeats} runs (mask_variants: one run), while other jobs shared the machine.",
        "",
        f"- `read_roi_set` on all {len(sets)} ROI sets ({n_rois} ROIs): **{read_all:.2f} s** "
        f"({1e6 * read_all / n_rois:.0f} µs per ROI).",
        "",
        "| per (tile, mark-up) pair | mean | median | max | total over the 90 pairs |",
        "|---|---|---|---|---|",
    ]
    for name, times in per_pair.items():
        t = np.array(times) * 1000
        lines.append(
            f"| {name} | {t.mean():.1f} ms | {np.median(t):.1f} ms | {t.max():.1f} ms | {t.sum() / 1000:.2f} s |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mask_speed.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
