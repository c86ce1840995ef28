"""The main job on the example tiles the package ships: predict nuclei, export them, score them.

``cryonuseg-hf demo --out DIR`` runs the shipped SegFormer checkpoint on each tile in ``cryonuseg_hf/examples``,
writes every export (label TIFF, overlay, QuPath GeoJSON, ImageJ ROIs, CSV), rebuilds the tile's annotation from
its ImageJ RoiSet exactly as the release's ``label masks modify`` is made, and scores the prediction against it.

The shipped checkpoint was trained on all 30 tiles, these two included, so the demo's scores are training-set
scores: they show that the pipeline runs end to end, not how well the model generalises. Held-out scores are in
``results/cv/`` and the model card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryonuseg_hf.core.folds import fold_of, organ_of
from cryonuseg_hf.core.paths import EXAMPLES_PATH

ANNOTATION_SUFFIX = ".annotator1_round2_RoiSet.zip"


def example_tiles(folder: Path = EXAMPLES_PATH) -> list[tuple[Path, Path]]:
    """(image, Annotator 1 round 2 RoiSet) pairs of the shipped example tiles, sorted by tile id."""
    pairs = []
    for image in sorted(folder.glob("Human_*.png")):
        rois = folder / f"{image.stem}{ANNOTATION_SUFFIX}"
        if not rois.is_file():
            raise FileNotFoundError(f"{image}: its annotation {rois.name} is missing from {folder}")
        pairs.append((image, rois))
    if not pairs:
        raise FileNotFoundError(f"{folder}: no example tiles (Human_*.png) found")
    return pairs


def run_demo(
    out_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    overwrite: bool = False,
    threads: int | None = None,
) -> list[dict]:
    """Predict, export and score every example tile; also writes ``scores.json`` into ``out_dir``.

    Returns:
        one record per tile: tile id, organ, fold, nuclei annotated and predicted, the metrics of
        :func:`cryonuseg_hf.evaluation.metrics.score_tile` against Annotator 1 round 2, and the files written.

    Raises:
        FileExistsError: outputs exist in ``out_dir`` and ``overwrite`` is False.
    """
    import tifffile

    from cryonuseg_hf.core.files import ensure_writable_folder
    from cryonuseg_hf.data.masks import instance_masks
    from cryonuseg_hf.data.rois import read_roi_set
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.image_files import predict_files
    from cryonuseg_hf.model.predict import load_predictor

    out_dir = ensure_writable_folder(out_dir)
    scores_path = out_dir / "scores.json"
    if scores_path.exists() and not overwrite:
        raise FileExistsError(f"{scores_path} exists already; pass --overwrite to replace the demo's outputs")
    pairs = example_tiles()
    predictor = load_predictor(model, backend=backend, threads=threads)
    written, failures = predict_files([image for image, _ in pairs], out_dir, predictor, overwrite=overwrite)
    if failures:
        raise ValueError("; ".join(f"{path}: {message}" for path, message in failures.items()))

    records = []
    for image, rois in pairs:
        tile_id = image.stem
        nuclei = read_roi_set(rois)
        _, truth = instance_masks(nuclei)
        prediction = tifffile.imread(written[image]["labels"])
        scores = score_tile(truth, prediction)
        records.append(
            {
                "tile_id": tile_id,
                "organ": organ_of(tile_id),
                "fold": fold_of(tile_id),
                "nuclei_annotated": len(nuclei),
                **{k: v for k, v in scores.items() if not isinstance(v, dict)},
                "files": {kind: str(path) for kind, path in written[image].items()},
            }
        )
    summary = {
        "model": str(predictor.model_path),
        "backend": predictor.backend,
        "reference": "annotator1_round2 (label masks modify rebuilt from the shipped RoiSet)",
        "note": "the shipped checkpoint was trained on all 30 tiles, these included: training-set scores",
        "tiles": records,
    }
    scores_path.write_text(json.dumps(summary, indent=2) + "\n")
    return records
