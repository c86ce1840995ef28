"""Subcommands that score: ``score`` (any tool's predictions) and ``agreement`` (the mark-ups against each other)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cryonuseg_hf.cli.options import add_overwrite, add_source, source
from cryonuseg_hf.core.files import check_can_create


def add_parsers(sub) -> None:
    agreement = sub.add_parser(
        "agreement", help="score the three mark-ups against each other (intra- and inter-observer agreement)"
    )
    add_source(agreement)
    agreement.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for human_agreement.json/.md/_per_tile.csv"
    )
    agreement.set_defaults(func=cmd_agreement)

    score = sub.add_parser(
        "score",
        help="score any tool's predictions (label images, QuPath GeoJSON, ImageJ RoiSets, HoVer-Net .mat) "
        "per tile, organ and fold, beside the SegFormer CV and the human agreement",
    )
    score.add_argument(
        "predictions",
        type=Path,
        help="folder with one file per tile, named after it (e.g. Human_Larynx_01.png)",
    )
    add_source(score)
    score.add_argument(
        "--out", type=Path, required=True, help="folder for score.md, score.json, score_per_tile.csv"
    )
    score.add_argument(
        "--reference",
        action="append",
        default=None,
        help="mark-up to score against (repeatable; default: annotator1_round1, annotator1_round2, annotator2)",
    )
    score.add_argument("--pattern", default="*", help="glob choosing the files, e.g. '*_labels.tif'")
    score.add_argument(
        "--object-type",
        action="append",
        default=None,
        help="GeoJSON: keep only these QuPath object types (repeatable: detection, annotation, cell)",
    )
    score.add_argument(
        "--cv",
        type=Path,
        default=Path("results/cv/metrics.json"),
        help="SegFormer CV scores to put beside (left out when the file is missing)",
    )
    score.add_argument(
        "--name", default=None, help="what the report calls the predictions (default: folder name)"
    )
    score.add_argument(
        "--ignore-unmatched",
        action="store_true",
        help="list files that name no tile as extra instead of failing",
    )
    add_overwrite(score, "an earlier report in --out")
    score.set_defaults(func=cmd_score)


@contextlib.contextmanager
def _release_named_as_given(given: Path) -> Iterator[Path]:
    """Yield the folder of the release ``given`` names (a zip: its extraction, made once in a cache folder), and
    have errors that name files of an extraction name them inside the zip (``release.zip: Annotator 2 .../x.tif``)
    instead of in the cache folder."""
    from cryonuseg_hf.data.release import extract_zip

    folder = extract_zip(given) if given.is_file() else given
    try:
        yield folder
    except (OSError, ValueError) as error:
        text = str(error)
        if folder == given or str(folder) not in text:
            raise
        shown = text.replace(f"{folder}{os.sep}", f"{given}: ").replace(str(folder), str(given))
        raise (OSError if isinstance(error, OSError) else ValueError)(shown) from None


def cmd_agreement(args: argparse.Namespace) -> int:
    from cryonuseg_hf.data.release import open_release
    from cryonuseg_hf.data.release_checks import check_release
    from cryonuseg_hf.reports.agreement import write_agreement

    check_can_create(args.out)  # before any work: the results are written there at the end
    with _release_named_as_given(source(args)) as folder:
        release = open_release(folder)
        check_release(release)  # scores of files that do not belong together would be silently wrong
        agreement, paths = write_agreement(release, args.out)
    for name, result in agreement.items():
        means = "  ".join(f"{k} {v:.4f}" for k, v in result["mean"].items())
        print(f"{name} ({result['prediction']} vs reference {result['reference']}): {means}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from cryonuseg_hf.evaluation.score import score_folder
    from cryonuseg_hf.reports.score import write_report

    check_can_create(args.out)  # before any work: the results are written there at the end
    with _release_named_as_given(source(args)) as folder:
        report = score_folder(
            args.predictions,
            source=folder,
            references=args.reference,
            pattern=args.pattern,
            object_types=args.object_type,
            cv_metrics=args.cv,
            allow_extra=args.ignore_unmatched,
            name=args.name,
        )
    paths = write_report(report, args.out, command=args.command_line, overwrite=args.overwrite)
    missing = ", ".join(report["missing"]) or "none"
    print(f"scored {len(report['tiles'])} tile(s) of {args.predictions}; missing: {missing}")
    for name in ("extra", "skipped"):
        if report[name]:
            print(f"{name}: {', '.join(Path(p).name for p in report[name])}")
    for reference in report["references"]:
        mean = report["summary"][reference]["mean"]
        values = "  ".join(f"{m} {mean[m]:.4f}" for m in ("dice", "aji", "aji_plus", "pq"))
        print(f"vs {reference}: {values}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
