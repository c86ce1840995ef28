"""Subcommands of the Hub: ``hub-export`` (model, metric and Space as repository folders) and ``push``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryonuseg_hf.cli.options import add_overwrite, add_threads


def add_parsers(sub) -> None:
    push = sub.add_parser(
        "push", help="upload a dataset build, or the model, metric and Space of hub-export, to the Hub"
    )
    push.add_argument(
        "folder",
        type=Path,
        help="a `cryonuseg-hf build` folder, one folder of a hub-export, or a hub-export --out folder (all three)",
    )
    push.add_argument(
        "--repo-id",
        default=None,
        help="e.g. your-name/cryonuseg; not needed for a hub-export --out folder (its hub_export.json names them)",
    )
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.set_defaults(func=cmd_push)

    hub_export = sub.add_parser(
        "hub-export",
        help="write the model, metric and Space as complete Hub repositories (folders) into --out",
    )
    hub_export.add_argument(
        "--out", type=Path, required=True, help="folder for model/, nuclei_instance_metric/, space/"
    )
    hub_export.add_argument(
        "--owner", default="cryonuseg", help="Hub user or organisation the repositories are for"
    )
    hub_export.add_argument(
        "--checkpoint", type=Path, default=None, help="model folder (default: the shipped one)"
    )
    hub_export.add_argument(
        "--results", type=Path, default=Path("results"), help="results folder the card reads"
    )
    add_threads(hub_export, "the ONNX export and check")
    add_overwrite(hub_export, "a previous hub-export in --out")
    hub_export.set_defaults(func=cmd_hub_export)


def cmd_push(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.hub import push_export, push_folder

    try:
        if args.repo_id is None:
            urls = push_export(args.folder, private=args.private)
        else:
            urls = {str(args.folder): push_folder(args.folder, args.repo_id, private=args.private)}
    except ConnectionError as error:
        print(f"cryonuseg-hf push: error: {error}", file=sys.stderr)
        return 2
    for folder, url in urls.items():
        print(f"pushed {folder}: {url}")
    return 0


def cmd_hub_export(args: argparse.Namespace) -> int:
    from cryonuseg_hf.apps.hub_export import hub_export
    from cryonuseg_hf.core.paths import MODEL_PATH

    manifest = hub_export(
        args.out,
        owner=args.owner,
        checkpoint=args.checkpoint or MODEL_PATH,
        results=args.results,
        overwrite=args.overwrite,
        threads=args.threads,
        command=args.command_line,
    )
    for folder, repo in manifest["repos"].items():
        print(f"{args.out / folder}: {repo['kind']} for {repo['repo_type']} repository {repo['repo_id']}")
    check = manifest["onnx_check"]
    print(f"ONNX export checked against torch: largest logit difference {check['max_abs_logit_diff']:.2g}")
    print(f"push all three with: cryonuseg-hf push {args.out}")
    return 0
