"""Subcommands that run the model: ``predict`` (images and whole slides), ``demo`` and ``app``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryonuseg_hf.cli.options import add_model, add_overwrite, int_at_least


def add_parsers(sub) -> None:
    demo = sub.add_parser(
        "demo", help="predict, export and score the example tiles the package ships (the main job, small)"
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (created)")
    add_model(demo)
    add_overwrite(demo, "the outputs of an earlier demo")
    demo.set_defaults(func=cmd_demo)

    predict = sub.add_parser(
        "predict",
        help="nuclei instances of H&E images: label TIFF, overlay PNG, QuPath GeoJSON, ImageJ ROI zip, CSV",
    )
    predict.add_argument(
        "images",
        nargs="+",
        type=Path,
        help="PNG/JPEG/TIFF files or folders of them, whole-slide images, glob patterns ('scans/*.svs', quoted) "
        "and .txt files listing them; several slides run as a cohort on Dask (see --cluster)",
    )
    predict.add_argument("-o", "--output", type=Path, required=True, help="output folder (created)")
    add_model(predict, device=True)
    predict.add_argument(
        "--tile-size",
        type=int_at_least(64),
        default=512,
        help="larger images are predicted in windows of this side (the model was trained on 512); refused "
        "before any runs when each window adds under a quarter of its side to the next (its side less twice "
        "--margin, or less --overlap with --blend, on the model's grid): that runs a pixel over 16 times",
    )
    predict.add_argument(
        "--margin", type=int_at_least(0), default=64, help="context around each tile's core, pixels"
    )
    predict.add_argument("--tta", action="store_true", help="average over 8 flips/rotations (8x slower)")
    predict.add_argument(
        "--phases",
        type=int_at_least(1),
        default=1,
        help="average the model over the image moved by 0 .. N-1 pixels (N passes, up to 8): 3 keeps the nuclei "
        "far steadier when an image moves by a pixel, and scores higher (experiments/results/phase_views)",
    )
    speed = predict.add_argument_group(
        "speed (measured in results/predict_levers.md and results/wsi_throughput.md)"
    )
    speed.add_argument(
        "--head",
        choices=("stock", "folded"),
        default="folded",
        help="folded (default): the decode head's fuse layer folded into its stage projections (the same "
        "function, 19 of its 30 GFLOP per tile fewer); stock: the checkpoint's head as it is",
    )
    speed.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: bfloat16 matrix products (--backend openvino on the CPU, torch on a GPU); on CPUs with "
        "AMX or AVX512-BF16, with --backend openvino, the fastest path",
    )
    speed.add_argument(
        "--blend",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="blend the class probabilities of overlapping windows and post-process once (images and slide "
        "blocks; default); --no-blend: each window owns the nuclei whose centroid lies in its core",
    )
    speed.add_argument(
        "--overlap", type=int_at_least(0), default=64, help="with --blend: least overlap of windows, pixels"
    )
    speed.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=1,
        help="with --blend: windows run through the model at once",
    )
    speed.add_argument(
        "--block-threads",
        type=int_at_least(1),
        default=1,
        help="slides: blocks read and labelled at once, in threads (2 keeps a GPU busy while a block is read)",
    )
    predict.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=2**28,
        help="refuse larger images (and slides of one level, without a pyramid)",
    )
    add_overwrite(predict)
    predict.add_argument(
        "--allow-non-tissue",
        action="store_true",
        help="predict images and slides that do not look like H&E tissue (black, blank, grey, fluorescence) "
        "instead of refusing them",
    )
    slides = predict.add_argument_group(
        "whole slides (.svs, .ndpi, .scn, .bif, pyramidal .tif): GeoJSON, CSV, overview PNG in level-0 pixels"
    )
    slides.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="µm per level-0 pixel (default: the slide's); 0.1 to 2 is accepted, what brightfield scanners give "
        "(40x: about 0.25, 20x: 0.5): pass it when a slide's metadata is wrong",
    )
    slides.add_argument(
        "--roi",
        default=None,
        help="only this region: x,y,width,height in level-0 pixels (clipped to the slide, with a warning; "
        "wholly outside it is an error)",
    )
    slides.add_argument("--labels", action="store_true", help="also write a pyramidal label TIFF")
    slides.add_argument(
        "--block-size",
        type=int_at_least(256),
        default=4096,
        help="side of the blocks a slide is read and labelled in, model pixels (memory grows with its square; "
        "larger blocks cut the tissue less often, so fewer windows run)",
    )
    slides.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="run the slides on this Dask scheduler (e.g. tcp://host:8786) instead of a local cluster; a slide "
        "whose outputs are complete is skipped, and cohort_summary.csv/.md say what happened to each",
    )
    slides.add_argument(
        "--workers",
        type=int_at_least(1),
        default=None,
        help="workers of the local Dask cluster for several slides (default: one per GPU, else one per core)",
    )
    predict.set_defaults(func=cmd_predict)

    app = sub.add_parser(
        "app", help="serve the Gradio app (the Space): upload an H&E image, get its nuclei and the exports"
    )
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    app.add_argument("--port", type=int_at_least(1), default=7860, help="port to listen on")
    add_model(app)
    app.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=None,
        help="refuse larger uploads (default: 4096x4096 pixels)",
    )
    app.set_defaults(func=cmd_app)


def cmd_demo(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.demo import run_demo

    records = run_demo(
        args.out, model=args.model, backend=args.backend, overwrite=args.overwrite, threads=args.threads
    )
    print(f"{'tile':18s} {'fold':>4s} {'annotated':>9s} {'predicted':>9s}   dice    aji    aji+   pq")
    for r in records:
        print(
            f"{r['tile_id']:18s} {r['fold']:4d} {r['nuclei_annotated']:9d} {r['n_pred']:9d}   "
            f"{r['dice']:.3f}  {r['aji']:.3f}  {r['aji_plus']:.3f}  {r['pq']:.3f}"
        )
    print(f"outputs and scores.json in {args.out}")
    print("note: the shipped model was trained on all 30 tiles, these included; held-out scores: results/cv/")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.cohort import find_slides
    from cryonuseg_hf.core.files import ensure_writable_folder
    from cryonuseg_hf.model.image_files import predict_files
    from cryonuseg_hf.model.predict import load_predictor
    from cryonuseg_hf.model.slides.predict import predict_slide
    from cryonuseg_hf.model.slides.roi import parse_roi

    ensure_writable_folder(args.output)
    roi = parse_roi(args.roi) if args.roi else None
    predictor = load_predictor(
        args.model,
        device=args.device,
        backend=args.backend,
        threads=args.threads,
        head=args.head,
        precision=args.precision,
        phases=args.phases,
    )
    slides, images = find_slides(args.images)
    written, failures = {}, {}
    if images:
        written, failures = predict_files(
            images,
            args.output,
            predictor,
            overwrite=args.overwrite,
            tile_size=args.tile_size,
            margin=args.margin,
            tta=args.tta,
            max_pixels=args.max_pixels,
            allow_non_tissue=args.allow_non_tissue,
            blend=args.blend,
            overlap=args.overlap,
            batch_size=args.batch_size,
        )
        where = f"{args.output} ({predictor.backend} on {predictor.device})"
        print(f"predicted {len(written)} image(s) into {where}")
    if len(slides) > 1 or args.cluster or args.workers:
        try:
            written, failures = _cohort(args, slides, roi, written, failures)
        except KeyboardInterrupt:
            print(
                f"interrupted: what was done is in {args.output / 'cohort_summary.md'}; the same command "
                "again predicts the slides left",
                file=sys.stderr,
            )
            return 130
        slides = []
    for path in slides:
        try:
            summary = predict_slide(
                path,
                args.output,
                predictor,
                mpp=args.mpp,
                roi=roi,
                labels=args.labels,
                overwrite=args.overwrite,
                tta=args.tta,
                tile_size=args.tile_size,
                margin=args.margin,
                max_pixels=args.max_pixels,
                allow_non_tissue=args.allow_non_tissue,
                progress=True,
                blend=args.blend,
                overlap=args.overlap,
                batch_size=args.batch_size,
                block_threads=args.block_threads,
                block_size=args.block_size,
            )
        except (OSError, ValueError) as error:
            failures[path] = str(error)
            continue
        except KeyboardInterrupt:
            print(f"interrupted: {path}: no output of it was left behind", file=sys.stderr)
            return 130
        written[path] = summary["outputs"]
        print(
            f"{path}: {summary['nuclei']} nuclei in {summary['tissue_mm2']:.3g} mm2 of tissue "
            f"({summary['blocks_with_tissue']} of {summary['blocks']} blocks), {summary['seconds']:.0f} s; outputs "
            f"{args.output}/{path.stem}{{.geojson,_nuclei.csv,_overview.png,_summary.json}}"
        )
    for path, message in failures.items():
        # most messages name the file already
        named = message if message.startswith(str(path)) else f"{path}: {message}"
        print(f"failed: {named}", file=sys.stderr)
    return 1 if failures or not written else 0


def _cohort(args: argparse.Namespace, slides: list[Path], roi, written: dict, failures: dict):
    """Several slides on Dask (:mod:`cryonuseg_hf.apps.cohort`); adds their outputs and failures to the images'."""
    from cryonuseg_hf.apps.cohort import ModelChoice, run_cohort
    from cryonuseg_hf.reports.cohort import count

    choice = ModelChoice(
        str(args.model) if args.model else None,
        args.device,
        args.backend,
        args.threads,
        args.head,
        args.precision,
        args.phases,
    )
    rows, run = run_cohort(
        slides, args.output, choice, cluster=args.cluster, workers=args.workers, overwrite=args.overwrite,
        mpp=args.mpp, roi=roi, labels=args.labels, tta=args.tta, tile_size=args.tile_size, margin=args.margin,
        max_pixels=args.max_pixels, allow_non_tissue=args.allow_non_tissue, blend=args.blend,
        overlap=args.overlap, batch_size=args.batch_size, block_threads=args.block_threads,
        block_size=args.block_size,
    )  # fmt: skip
    for row in rows:
        if row["status"] == "failed":
            failures[Path(row["slide"])] = row["error"]
        elif row["status"] in ("done", "done earlier"):
            written[Path(row["slide"])] = row["status"]
    counts = ", ".join(f"{n} {status}" for status, n in count(rows).items() if n)
    print(
        f"cohort of {len(rows)} slides on {run['workers']} workers ({run['cluster']}), {run['seconds']:.0f} s: "
        f"{counts}; summary {args.output / 'cohort_summary.md'}"
    )
    return written, failures


def cmd_app(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.app import APP_MAX_PIXELS, launch

    print(f"serving the app on http://{args.host}:{args.port} (no public link; Ctrl+C stops it)")
    try:
        launch(
            host=args.host,
            port=args.port,
            model=args.model,
            backend=args.backend,
            threads=args.threads,
            max_pixels=args.max_pixels or APP_MAX_PIXELS,
        )
    except ImportError as error:
        print(f"cryonuseg-hf app: error: {error}", file=sys.stderr)
        return 2
    return 0
