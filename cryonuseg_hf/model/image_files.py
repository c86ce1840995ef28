"""Predict many image files into one folder: each image's five outputs written as a set, one bad file reported
without stopping the others (the ``cryonuseg-hf predict`` of images, the demo and the app's batch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from cryonuseg_hf.core.files import ensure_writable_folder
from cryonuseg_hf.core.tiles import TILE_SIZE
from cryonuseg_hf.model.images import MAX_PIXELS, find_images, read_image
from cryonuseg_hf.model.predict import BLEND_OVERLAP, MARGIN, Predictor, predict_instances
from cryonuseg_hf.model.tissue import tissue_problem

logger = logging.getLogger(__name__)


def predict_files(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    predictor: Predictor,
    *,
    overwrite: bool = False,
    tile_size: int = TILE_SIZE,
    margin: int = MARGIN,
    tta: bool = False,
    max_pixels: int = MAX_PIXELS,
    progress: bool = True,
    allow_non_tissue: bool = False,
    blend: bool = False,
    overlap: int = BLEND_OVERLAP,
    batch_size: int = 1,
) -> tuple[dict[Path, dict[str, Path]], dict[Path, str]]:
    """Predict every image and write its outputs (see :func:`cryonuseg_hf.model.export.write_outputs`).

    A file that fails (missing, unreadable, not an image, too large, not a tissue image, outputs already there
    without ``overwrite``) is reported in the second result, nothing is written for it, and the others go on.
    The five outputs of an image are written as one set (all or none).

    Args:
        inputs: image files and folders of images.
        out_dir: output folder (created); must be writable.
        predictor: from :func:`~cryonuseg_hf.model.predict.load_predictor`.
        overwrite: replace existing outputs; otherwise an image whose outputs exist fails.
        tile_size, margin, tta, blend, overlap, batch_size: as in
            :func:`~cryonuseg_hf.model.predict.predict_instances`.
        max_pixels: as in :func:`~cryonuseg_hf.model.images.read_image`.
        progress: show a progress bar (tqdm) over images.
        allow_non_tissue: predict images that :func:`tissue_problem` refuses (black, blank, grey, unstained,
            channels reversed), with a logged warning, instead of failing them.

    Returns:
        ``(written, failures)``: input path -> {output kind -> path}, and input path -> error message.

    Raises:
        PermissionError, FileExistsError: the output folder cannot be created or written, or is a file.
    """
    from tqdm.auto import tqdm

    from cryonuseg_hf.model.export import output_paths, write_outputs

    out_dir = ensure_writable_folder(out_dir)
    paths = find_images(inputs)
    written: dict[Path, dict[str, Path]] = {}
    failures: dict[Path, str] = {}
    seen_stems: dict[str, Path] = {}
    for path in tqdm(paths, desc="predict", unit="image", disable=not progress or len(paths) < 2):
        try:
            if path.stem in seen_stems:
                raise ValueError(f"{path}: same name as {seen_stems[path.stem]}; its outputs would collide")
            seen_stems[path.stem] = path
            targets = output_paths(out_dir, path.stem)
            existing = [str(p) for p in targets.values() if p.exists()]
            if existing and not overwrite:
                raise FileExistsError(
                    f"{path}: outputs exist already ({', '.join(existing)}); pass --overwrite to replace them"
                )
            image = read_image(path, max_pixels=max_pixels)
            problem = tissue_problem(image)
            if problem and not allow_non_tissue:
                raise ValueError(
                    f"{path}: not an H&E tissue image: {problem}; nothing predicted (pass --allow-non-tissue "
                    "to predict it anyway)"
                )
            if problem:
                logger.warning("%s: not an H&E tissue image (%s); predicted anyway", path, problem)
            labels = predict_instances(
                image,
                predictor,
                tile_size=tile_size,
                margin=margin,
                tta=tta,
                progress=progress,
                blend=blend,
                overlap=overlap,
                batch_size=batch_size,
                allow_non_tissue=True,  # judged above by tissue_problem, which holds the channel-order rule
            )
            written[path] = write_outputs(image, labels, out_dir, path.stem, overwrite=overwrite)
        except (OSError, ValueError) as error:
            failures[path] = str(error)
            logger.info("failed: %s", error)
    return written, failures
