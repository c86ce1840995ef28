"""The Gradio app (the Hugging Face Space): drop in an H&E image, get its nuclei and the files to open them with.

``cryonuseg-hf app`` (or ``app.py`` at a Space's root, see ``cryonuseg_hf/apps/space/``) serves it. One request is one
call of the package's own functions, so the app has no inference path of its own:

1. :func:`cryonuseg_hf.model.images.read_image`: the uploaded file -> (H, W, 3) uint8 RGB;
2. :func:`input_warnings`: what about the image is not what the model expects (too small, black, blank, grey);
3. :func:`cryonuseg_hf.predict_instances` with the shipped checkpoint (tiled when larger than 512 px);
4. :func:`cryonuseg_hf.model.export.write_outputs`: overlay PNG, label TIFF, QuPath GeoJSON, ImageJ RoiSet, CSV;
5. :func:`result_warnings`: nuclei far smaller or larger than at 40x, or none at all.

:func:`analyse` does 1-5 without Gradio; :func:`build_app` wraps it in a ``gr.Blocks`` page and :func:`serve`
serves that page. Gradio is an optional dependency (``pip install 'cryonuseg_hf[app]'``), imported inside the
functions that need it.

The thresholds of the warnings were measured on the 30 CryoNuSeg tiles, none of which trips a warning
(``tests/test_app.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryonuseg_hf.core.paths import EXAMPLES_PATH
from cryonuseg_hf.core.tiles import TILE_SIZE
from cryonuseg_hf.model.predict import MARGIN
from cryonuseg_hf.model.tissue import tissue_problem

APP_MAX_PIXELS = 4096 * 4096
"""Largest upload the app predicts: 169 windows of 512 px, at about 0.5 s each on two CPU cores (--max-pixels)."""
MIN_SIDE = 2 * MARGIN
"""Below this side (px) an image holds few whole nuclei, each with less context than a tile's margin gives it."""
NUCLEUS_MEDIAN_AREA_RANGE = (105.5, 331.0)
"""Smallest and largest per-tile median nucleus area (px) in Annotator 1 round 2 of the 30 tiles at 40x."""
AREA_TOLERANCE = 2.0
"""Warn when the median predicted area is more than this factor outside that range (half or twice the
magnification gives a quarter or four times the area)."""
MIN_NUCLEI_FOR_AREA_CHECK = 10
_KEEP_REQUEST_SECONDS = 3600  # request folders older than this are removed when a new request comes in


# ---------------------------------------------------------------------------------------------------- warnings


def input_warnings(image: np.ndarray) -> list[str]:
    """What about an image is not what the model was trained on (512x512 H&E frozen-section tiles at 40x).

    Too small is judged here; black, blank, grey and unstained by :func:`cryonuseg_hf.model.tissue.tissue_problem`,
    the rule with which ``cryonuseg-hf predict`` refuses such images (the app predicts them, and warns).

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        one sentence per problem, empty for an image like the CryoNuSeg tiles.

    >>> input_warnings(np.zeros((512, 512, 3), np.uint8))[0][:46]
    'Not an H&E tissue image the model can read: al'
    >>> input_warnings(np.full((64, 64, 3), 255, np.uint8))[0][:29]
    'The image is only 64x64 pixel'
    """
    height, width = image.shape[:2]
    warnings = []
    if min(height, width) < MIN_SIDE:
        warnings.append(
            f"The image is only {width}x{height} pixels: below {MIN_SIDE} px a side it holds few whole nuclei "
            f"and little context around them (the model was trained on {TILE_SIZE}x{TILE_SIZE} tiles at 40x)."
        )
    problem = tissue_problem(image)
    if problem:
        warnings.append(f"Not an H&E tissue image the model can read: {problem}. Its nuclei are unreliable.")
    return warnings


def result_warnings(areas: Sequence[int] | np.ndarray) -> list[str]:
    """What about the nuclei found suggests the image is not at 40x, or holds no nuclei.

    Args:
        areas: pixel area of each nucleus found.

    >>> result_warnings([])
    ['No nuclei were found.']
    >>> result_warnings([200] * 20)
    []
    """
    areas = np.asarray(areas)
    if areas.size == 0:
        return ["No nuclei were found."]
    if areas.size < MIN_NUCLEI_FOR_AREA_CHECK:
        return []
    median = float(np.median(areas))
    low, high = NUCLEUS_MEDIAN_AREA_RANGE
    if median < low / AREA_TOLERANCE or median > high * AREA_TOLERANCE:
        size = "smaller" if median < low / AREA_TOLERANCE else "larger"
        return [
            f"The nuclei are much {size} than at 40x (median area {median:.0f} px; {low:g} to {high:g} px in "
            "the CryoNuSeg tiles): is the image at 40x, about 0.25 µm per pixel? Resize it to 40x first."
        ]
    return []


# ---------------------------------------------------------------------------------------------------- one request


@dataclass(frozen=True)
class Analysis:
    """What the app shows for one image.

    Attributes:
        shape: (height, width) of the image.
        labels: (H, W) int32 instance labels from :func:`cryonuseg_hf.predict_instances`.
        n_nuclei: number of nuclei.
        n_tiles: windows the image was predicted in (1 for a tile of at most 512x512).
        warnings: :func:`input_warnings` then :func:`result_warnings`.
        files: output kind (``labels``, ``overlay``, ``geojson``, ``rois``, ``csv``) -> path.
        seconds: time from reading the image to the last file written.
    """

    shape: tuple[int, int]
    labels: np.ndarray
    n_nuclei: int
    n_tiles: int
    warnings: list[str]
    files: dict[str, Path]
    seconds: float


def output_stem(path: str | os.PathLike) -> str:
    """A safe base name for the outputs of an uploaded file (its name without suffix).

    >>> output_stem("/tmp/gradio/ab12/Human Skin 01.tif")
    'Human_Skin_01'
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._")
    return stem or "image"


def analyse(
    image_path: str | os.PathLike,
    predictor: Any,
    out_dir: str | os.PathLike,
    max_pixels: int = APP_MAX_PIXELS,
    progress: bool = False,
) -> Analysis:
    """Read, check, predict and export one image, exactly as ``cryonuseg-hf predict`` does.

    Args:
        image_path: a PNG, JPEG or TIFF file.
        predictor: from :func:`cryonuseg_hf.model.predict.load_predictor`.
        out_dir: existing folder for the outputs.
        max_pixels: refuse larger images (checked from the file header).
        progress: a tqdm bar over tiles (the app shows it through ``gr.Progress(track_tqdm=True)``).

    Raises:
        ValueError, OSError: the file is not a readable image of at most ``max_pixels`` (the message names it).
    """
    from cryonuseg_hf.model.export import write_outputs
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.predict import grid_step, predict_instances
    from cryonuseg_hf.model.tiling import tile_grid

    start = time.perf_counter()
    image = read_image(image_path, max_pixels=max_pixels)
    warnings = input_warnings(image)
    labels = predict_instances(image, predictor, progress=progress)
    files = write_outputs(image, labels, out_dir, output_stem(image_path), overwrite=True)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    n_tiles = len(tile_grid(labels.shape, TILE_SIZE, MARGIN, grid_step(predictor.input_scale)))
    return Analysis(
        shape=labels.shape,
        labels=labels,
        n_nuclei=int(areas.size),
        n_tiles=n_tiles,
        warnings=warnings + result_warnings(areas),
        files=files,
        seconds=time.perf_counter() - start,
    )


def summary_markdown(analysis: Analysis, how: str) -> str:
    """One paragraph saying what was found, how (the model and backend, e.g. ``checkpoint, onnx on cpu``),
    and how long it took."""
    height, width = analysis.shape
    tiles = (
        f"in {analysis.n_tiles} overlapping tiles of {TILE_SIZE} px (each nucleus kept by exactly one tile)"
        if analysis.n_tiles > 1
        else "in one pass"
    )
    return (
        f"**{analysis.n_nuclei} nuclei** in the {width}x{height} px image, predicted {tiles} by the SegFormer "
        f"({how}) in {analysis.seconds:.1f} s."
    )


def warnings_markdown(warnings: Sequence[str]) -> str:
    """The warnings as a Markdown list, or a line saying there are none."""
    if not warnings:
        return "No warnings: the image looks like the H&E tiles the model was trained on."
    return "\n".join(f"- ⚠️ {warning}" for warning in warnings)


def _request_folder(root: Path, keep_seconds: float = _KEEP_REQUEST_SECONDS) -> Path:
    """A new folder for one request's outputs under ``root``, after removing those older than ``keep_seconds``."""
    now = time.time()
    for old in root.iterdir():
        if old.is_dir() and now - old.stat().st_mtime > keep_seconds:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="request-", dir=root))


# ---------------------------------------------------------------------------------------------------- the page


DESCRIPTION = """\
# CryoNuSeg nuclei segmentation

Upload an H&E image at 40x (about 0.25 µm per pixel) or pick an example, then press **Find nuclei**. A SegFormer-b0
trained on [CryoNuSeg](https://doi.org/10.1016/j.compbiomed.2021.104349) (30 frozen-section tiles, 10 organs)
outlines each nucleus. Images larger than 512 px are predicted in overlapping tiles. Downloads: the instance
labels (TIFF), QuPath detections (GeoJSON: File > Import objects), Fiji's ROI Manager (RoiSet zip) and a table
of the nuclei (CSV). The examples are CryoNuSeg tiles the shipped model was trained on. Data and weights:
CC BY-NC-SA 4.0.
"""


def example_images(folder: Path = EXAMPLES_PATH) -> list[Path]:
    """The shipped example tiles (``Human_*.png``), sorted."""
    images = sorted(folder.glob("Human_*.png"))
    if not images:
        raise FileNotFoundError(f"{folder}: no example tiles (Human_*.png); reinstall cryonuseg_hf")
    return images


def build_app(
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    backend: str = "auto",
    threads: int | None = None,
    max_pixels: int = APP_MAX_PIXELS,
    workdir: str | os.PathLike | None = None,
) -> Any:
    """The app as a ``gr.Blocks`` (not started: call ``.launch()`` or :func:`launch`).

    Args:
        model: checkpoint folder; default the shipped ``cryonuseg_hf.MODEL_PATH``.
        device: ``cpu`` (a free Space), ``cuda`` or ``auto``.
        backend: ``auto`` (onnxruntime on the CPU), ``torch`` or ``onnx``.
        threads: CPU threads for torch and onnxruntime (default: their own choice).
        max_pixels: largest image accepted.
        workdir: where request outputs go (default: a new temporary folder); folders older than an hour are
            removed as new requests come in.

    The model is loaded now (and exported to ONNX once per checkpoint), so the first request does not wait
    for it and a missing checkpoint fails here.

    Raises:
        FileNotFoundError: no checkpoint at ``model``.
        ImportError: Gradio is not installed.
    """
    try:
        import gradio as gr
    except ImportError:
        raise ImportError(
            "the app needs Gradio: pip install 'cryonuseg_hf[app]' (or pip install gradio)"
        ) from None
    import pandas as pd

    from cryonuseg_hf.model.predict import load_predictor

    predictor = load_predictor(model, device=device, backend=backend, threads=threads)
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="cryonuseg-app-"))
    root.mkdir(parents=True, exist_ok=True)

    def find_nuclei(path: str | None, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        if path is None:
            raise gr.Error("Upload an H&E image or pick an example first.")
        try:
            analysis = analyse(path, predictor, _request_folder(root), max_pixels=max_pixels, progress=True)
        except (OSError, ValueError) as error:
            # the upload's temporary path means nothing to the user: name the file as they did
            raise gr.Error(str(error).replace(str(path), Path(path).name)) from None
        files = analysis.files
        return (
            str(files["overlay"]),
            analysis.n_nuclei,
            summary_markdown(
                analysis, f"{predictor.model_path.name}, {predictor.backend} on {predictor.device}"
            ),
            warnings_markdown(analysis.warnings),
            pd.read_csv(files["csv"]),
            str(files["labels"]),
            str(files["geojson"]),
            str(files["rois"]),
            str(files["csv"]),
        )

    with gr.Blocks(title="CryoNuSeg nuclei", analytics_enabled=False) as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="H&E image (PNG, JPEG or TIFF)",
                    type="filepath",
                    image_mode=None,  # the file as uploaded: read_image converts it, and says how
                    sources=["upload", "clipboard"],
                    elem_id="input-image",
                )
                button = gr.Button("Find nuclei", variant="primary", elem_id="run")
                gr.Examples([[str(p)] for p in example_images()], inputs=[image], label="Example tiles")
            with gr.Column():
                overlay = gr.Image(
                    label="Nuclei outlines",
                    type="filepath",
                    format="png",
                    interactive=False,
                    elem_id="overlay",
                )
                count = gr.Number(label="Nuclei", precision=0, interactive=False, elem_id="nuclei-count")
                summary = gr.Markdown(elem_id="summary")
                warnings = gr.Markdown(elem_id="warnings")
        with gr.Row():
            labels_file = gr.File(label="Instance labels (TIFF)", elem_id="download-labels")
            geojson_file = gr.File(label="QuPath detections (GeoJSON)", elem_id="download-geojson")
            rois_file = gr.File(label="ImageJ / Fiji RoiSet (zip)", elem_id="download-rois")
            csv_file = gr.File(label="Nuclei table (CSV)", elem_id="download-csv")
        table = gr.Dataframe(label="Nuclei (one row each; pixels)", interactive=False, elem_id="nuclei-table")
        button.click(
            find_nuclei,
            inputs=[image],
            outputs=[
                overlay,
                count,
                summary,
                warnings,
                table,
                labels_file,
                geojson_file,
                rois_file,
                csv_file,
            ],
            concurrency_limit=1,  # one CPU prediction at a time; others queue
        )
    return demo


def serve(demo: Any, host: str | None = None, port: int | None = None, block: bool = True) -> Any:
    """Serve an app from :func:`build_app`: one prediction at a time, no public link, no Node server.

    Args:
        demo: the ``gr.Blocks``.
        host: address to listen on; None lets Gradio choose (``$GRADIO_SERVER_NAME`` on a Space, else 127.0.0.1).
        port: port; None lets Gradio choose (``$GRADIO_SERVER_PORT``, else 7860 or the next free one).
        block: serve until interrupted; False returns at once with the server running (``demo.close()`` stops it).

    Returns:
        ``demo``, running.
    """
    demo.queue(default_concurrency_limit=1)
    # share=False: no public tunnel (a Space is public already); ssr_mode=False: no Node server needed
    demo.launch(
        server_name=host, server_port=port, share=False, ssr_mode=False, prevent_thread_lock=not block
    )
    return demo


def launch(
    host: str | None = None,
    port: int | None = None,
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    backend: str = "auto",
    threads: int | None = None,
    max_pixels: int = APP_MAX_PIXELS,
    block: bool = True,
) -> Any:
    """Build the app (:func:`build_app`) and serve it (:func:`serve`); the arguments are theirs."""
    demo = build_app(model=model, device=device, backend=backend, threads=threads, max_pixels=max_pixels)
    return serve(demo, host=host, port=port, block=block)
