"""The metric's Space: upload predicted and reference label images, get Dice, AJI, AJI+ and PQ per tile and overall.

Run ``python app.py`` in this folder (the Hub runs it the same way). ``evaluate``'s own
``launch_gradio_widget`` builds a table of numbers and strings, which cannot hold label images, so this app takes
files instead: label images (PNG or TIFF, any integer type, 0 = background), matched by file name. It needs only
this folder, ``requirements.txt`` and Gradio (which the Space's ``sdk`` provides).
"""

from __future__ import annotations

import json
from pathlib import Path

import evaluate
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SUMMARY_KEYS = ("dice", "aji", "aji_plus", "pq", "dq", "sq", "precision", "recall")


def load_metric() -> evaluate.EvaluationModule:
    """The module of this folder, by the path of its script (the folder's name on a Space is not the module's)."""
    return evaluate.load(str(HERE / "nuclei_instance_metric.py"))


MAX_PIXELS = 64_000_000
"""The largest upload the Space decodes (8000x8000); score larger images with ``score`` of ``nuclei_metrics.py``."""


def read_labels(path: str | Path) -> np.ndarray:
    """A label image file as a 2-D array (16-bit PNG, 8/16/32-bit or whole-number float TIFF); its size is read
    from the header and checked before any pixel is decoded.

    >>> read_labels(HERE / "README.md")
    Traceback (most recent call last):
    ValueError: README.md: not a readable image (UnidentifiedImageError)
    """
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(
                    f"{Path(path).name}: a {image.width}x{image.height} image; the Space scores images of at most "
                    f"{MAX_PIXELS:,} pixels (score larger ones with score() of nuclei_metrics.py)"
                )
            array = np.asarray(image)
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{Path(path).name}: not a readable image ({type(error).__name__})") from None
    if array.ndim != 2:
        raise ValueError(
            f"{Path(path).name}: expected a 2-D label image (one channel of nucleus ids), got shape {array.shape}; "
            "save the instance labels, not an overlay or an RGB rendering"
        )
    return array


def pair_by_name(predictions: list[str | Path], references: list[str | Path]) -> list[tuple[str, Path, Path]]:
    """Match prediction and reference files by name without extension; every file must find its partner.

    >>> pair_by_name(["out/a.tif", "out/b.png"], ["ref/b.tif", "ref/a.png"])[0][0]
    'a'
    """
    by_name = {Path(p).stem: Path(p) for p in predictions}
    refs = {Path(r).stem: Path(r) for r in references}
    if len(by_name) != len(predictions) or len(refs) != len(references):
        raise ValueError("two uploaded files share a name (without extension); give each tile one file")
    missing, extra = sorted(set(refs) - set(by_name)), sorted(set(by_name) - set(refs))
    if missing or extra:
        raise ValueError(
            f"file names must match: references without a prediction: {missing or 'none'}; predictions without a "
            f"reference: {extra or 'none'}"
        )
    return [(name, by_name[name], refs[name]) for name in sorted(refs)]


def score_files(
    metric: evaluate.EvaluationModule, predictions: list[str | Path], references: list[str | Path]
) -> tuple[list[list], dict]:
    """Score uploaded files: (rows of a per-tile table with a mean row last, the module's whole result)."""
    pairs = pair_by_name(predictions, references)
    names = [name for name, _, _ in pairs]
    result = metric.compute(
        predictions=[read_labels(p) for _, p, _ in pairs],
        references=[read_labels(r) for _, _, r in pairs],
        tile_ids=names,
    )
    rows = [[row["tile_id"], row["n_true"], row["n_pred"], *(round(row[k], 4) for k in SUMMARY_KEYS)] for row in result["per_tile"]]  # fmt: skip
    rows.append([f"mean of {len(rows)}", result["n_true"], result["n_pred"], *(round(result[k], 4) for k in SUMMARY_KEYS)])  # fmt: skip
    return rows, result


def build_demo(metric: evaluate.EvaluationModule | None = None):
    """The Gradio Blocks of the Space (not launched)."""
    import gradio as gr

    metric = metric if metric is not None else load_metric()
    card = (HERE / "README.md").read_text(encoding="utf-8").split("---", 2)[-1]

    def run(predictions, references):
        if not predictions or not references:
            raise gr.Error("upload at least one prediction and its reference, with the same file name")
        try:
            rows, result = score_files(metric, list(predictions), list(references))
        except ValueError as error:
            raise gr.Error(str(error)) from None
        return rows, json.dumps(result, indent=1, default=float)

    with gr.Blocks(title="Nuclei Instance Metric") as demo:
        gr.Markdown(
            "# Nuclei Instance Metric\nUpload label images (0 = background, one id per nucleus; PNG or TIFF), "
            "predictions and references with matching file names."
        )
        with gr.Row():
            predictions = gr.File(label="predicted label images", file_count="multiple", type="filepath")
            references = gr.File(label="reference label images", file_count="multiple", type="filepath")
        button = gr.Button("Score", variant="primary")
        table = gr.Dataframe(
            headers=["tile", "true nuclei", "predicted nuclei", *SUMMARY_KEYS], label="scores"
        )
        full = gr.Code(label="everything the module returns (JSON)", language="json")
        button.click(run, inputs=[predictions, references], outputs=[table, full])
        gr.Markdown(card)
    return demo


if __name__ == "__main__":
    build_demo().launch()
