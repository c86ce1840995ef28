"""Parameters and forward-pass work of the SegFormer variants on one 512x512 tile, written to ``results/``.

Run: ``.venv/bin/python benchmarks/bench_flops.py [--variants b0 b1] [--input-scale 1.5]``. Writes
``results/model_flops.json`` and ``.md``. The work is counted, not timed (``torch.utils.flop_counter``, one
forward pass of a fresh model at the tile's model input, 512 x input scale), so any machine gives the same numbers;
it is what a variant costs at prediction, where the time budget is per tile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TILE = 512


def count(variant: str, input_scale: float) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cryonuseg_hf.model.segformer import build_model

    model = build_model(variant, input_scale=input_scale).eval()
    side = round(TILE * input_scale)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.zeros(1, 3, side, side))
    return {
        "variant": variant,
        "model_input_side": side,
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "gflop_per_tile": round(counter.get_total_flops() / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "b1"])
    parser.add_argument("--input-scale", type=float, default=1.5, help="the shipped model's is 1.5")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args()

    from cryonuseg_hf.core.markdown import table

    rows = [count(variant, args.input_scale) for variant in args.variants]
    command = "python benchmarks/bench_flops.py --variants " + " ".join(args.variants)
    command += f" --input-scale {args.input_scale:g}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_flops.json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Work of a SegFormer forward pass on one 512x512 tile",
        "",
        f"Produced by `{command}` (counted with `torch.utils.flop_counter`, not timed: any machine gives the same "
        "numbers). GFLOP counts a multiply-add as two operations.",
        "",
        *table(
            ["variant", "model input", "parameters (M)", "GFLOP per tile"],
            [
                [
                    r["variant"],
                    f"{r['model_input_side']}²",
                    str(r["parameters_millions"]),
                    str(r["gflop_per_tile"]),
                ]
                for r in rows
            ],
        ),
    ]
    (args.out / "model_flops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
