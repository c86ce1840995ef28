"""The network ends: fetch the raw release from Kaggle (``kagglehub``); push a dataset build, or the model, metric
and Space folders of ``hub-export``, to the Hub (``huggingface_hub``).

Both check that the server answers before calling the client, with a short timeout, so that a machine without
network fails in seconds with a message that says what to do instead, not after minutes of retries.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cryonuseg_hf.apps.hub_export import (
    MANIFEST,
    MODEL_FOLDER,
    REPO_NAMES,
    REPO_TYPES,
    resolve_prefix,
    widget_sources,
)

logger = logging.getLogger(__name__)

KAGGLE_HANDLE = "ipateam/segmentation-of-nuclei-in-cryosectioned-he-images"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_HANDLE}"
CONNECT_TIMEOUT_S = 5.0
_TRUE = {"1", "ON", "YES", "TRUE"}


def check_connection(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to the host of ``url``; raise ``ConnectionError`` after ``timeout``.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread that is abandoned when
    the time is up.
    """
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise ConnectionError(f"no answer from {host}:{port} within {timeout:g} s")
    if outcome[0] is not None:
        raise ConnectionError(f"cannot reach {host}:{port} ({outcome[0]})")


def download_release(output_dir: str | Path | None = None, timeout: float = CONNECT_TIMEOUT_S) -> Path:
    """Download the raw release from Kaggle with ``kagglehub`` and return its folder.

    Args:
        output_dir: where to put it (default: kagglehub's cache, ``~/.cache/kagglehub``).
        timeout: seconds to wait for Kaggle to answer before giving up.

    Raises:
        ConnectionError: Kaggle cannot be reached; the message says how to pass a local copy instead.
    """
    endpoint = os.environ.get("KAGGLE_API_ENDPOINT", "https://www.kaggle.com")
    try:
        check_connection(endpoint, timeout)
    except ConnectionError as error:
        raise ConnectionError(
            f"cannot download CryoNuSeg from Kaggle: {error}. Without network, download "
            f"{KAGGLE_URL} elsewhere and pass it with --source <release folder or zip> "
            "(or set $CRYONUSEG_DATA)"
        ) from None
    import kagglehub

    logger.info("downloading %s with kagglehub", KAGGLE_HANDLE)
    path = kagglehub.dataset_download(KAGGLE_HANDLE, output_dir=str(output_dir) if output_dir else None)
    return Path(path)


def push_dataset(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> str:
    """Upload a build folder (``cryonuseg-hf build --out``) to the Hub dataset repository ``repo_id``.

    Creates the repository if needed (``repo_type="dataset"``) and uploads the folder in one commit.

    Returns:
        the URL of the commit.

    Raises:
        ValueError: ``folder`` is not a build made by :func:`cryonuseg_hf.data.build.build`, or a config's data
            files hold another mark-up's rows (:func:`cryonuseg_hf.data.parquet.check_build`).
        FileNotFoundError: a data file the card names is missing.
        ConnectionError: offline mode is on, or the Hub cannot be reached.
    """
    from cryonuseg_hf.data.build import is_build
    from cryonuseg_hf.data.parquet import check_build

    folder = Path(folder)
    if not folder.is_dir() or not is_build(folder):
        raise ValueError(
            f"{folder}: not a dataset folder made by `cryonuseg-hf build` (README.md and Parquet)"
        )
    check_build(folder)  # a data file of another mark-up under a config's name would publish wrong rows
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        raise ConnectionError(
            f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE is set; unset it on a machine with network"
        )
    from huggingface_hub import HfApi, constants

    try:
        check_connection(constants.ENDPOINT, timeout)
    except ConnectionError as error:
        raise ConnectionError(
            f"cannot push {folder} to {repo_id}: the Hub is unreachable ({error}); run `cryonuseg-hf push` on "
            "a machine with network, or upload the folder with `hf upload --repo-type dataset`"
        ) from None
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="dataset",
        commit_message="Upload CryoNuSeg built by cryonuseg-hf",
    )
    return commit.commit_url


def _yaml_header(readme: Path) -> dict[str, Any]:
    import yaml

    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if not text.startswith("---"):
        return {}
    header = yaml.safe_load(text.split("---", 2)[1])
    return header if isinstance(header, dict) else {}


def folder_kind(folder: str | os.PathLike) -> str:
    """What a folder is, by its files: ``dataset`` (a build), ``model``, ``metric`` (an ``evaluate`` module folder,
    ``<name>/<name>.py``) or ``space`` (a README with Space YAML and its app file).

    Raises:
        ValueError: none of these.
    """
    from cryonuseg_hf.data.build import is_build

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    if is_build(folder):
        return "dataset"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return "model"
    if (folder / f"{folder.name}.py").is_file():
        return "metric"
    header = _yaml_header(folder / "README.md")
    if header.get("sdk") and (folder / str(header.get("app_file", "app.py"))).is_file():
        return "space"
    raise ValueError(
        f"{folder}: not a dataset build, model, evaluate module or Space folder; make one with `cryonuseg-hf build` "
        "or `cryonuseg-hf hub-export`"
    )


def check_repo_id(folder: Path, kind: str, repo_id: str) -> None:
    """Refuse a push that would break the repository on the Hub.

    Raises:
        ValueError: a model card whose widget points into another repository, or a metric repository not named
            like its script (``evaluate.load`` would not find it).
    """
    if kind == "model":
        wrong = [
            src for src in widget_sources(folder / "README.md") if not src.startswith(resolve_prefix(repo_id))
        ]
        if wrong:
            owner = repo_id.split("/")[0]
            raise ValueError(
                f"{folder}: the card's widget points at {wrong[0]}, not into {repo_id}; push to the repository "
                f"the card names, or export for this owner (`cryonuseg-hf hub-export --owner {owner}`) and push "
                f"to {owner}/{REPO_NAMES[MODEL_FOLDER]}"
            )
    if kind == "metric" and repo_id.split("/")[-1] != folder.name:
        raise ValueError(
            f"{folder}: evaluate.load('<owner>/<name>') runs <name>.py, so the metric's repository must be named "
            f"{folder.name}, not {repo_id.split('/')[-1]}"
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload one folder (dataset build, model, metric or Space) to the Hub repository ``repo_id``.

    Creates the repository with the type of :data:`REPO_TYPES` (Gradio SDK for Spaces) and uploads the folder in
    one commit. Dataset builds go through :func:`push_dataset`.

    Returns:
        the URL of the commit.

    Raises:
        ValueError: not a folder this package writes, or a repository id that would break it (:func:`check_repo_id`).
        ConnectionError: offline mode is on, or the Hub cannot be reached.
    """
    folder = Path(folder)
    kind = folder_kind(folder)
    if kind == "dataset":
        return push_dataset(folder, repo_id, private=private, token=token)
    check_repo_id(folder, kind, repo_id)
    repo_type = REPO_TYPES[kind]
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        raise ConnectionError(
            f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE is set; unset it on a machine with network"
        )
    from huggingface_hub import HfApi, constants

    endpoint = endpoint or constants.ENDPOINT
    try:
        check_connection(endpoint, CONNECT_TIMEOUT_S)
    except ConnectionError as error:
        raise ConnectionError(
            f"cannot push {folder} to {repo_id}: the Hub is unreachable ({error}); run `cryonuseg-hf push` on "
            f"a machine with network, or upload the folder with `hf upload --repo-type {repo_type}`"
        ) from None
    api = HfApi(endpoint=endpoint, token=token)
    extra = {"space_sdk": "gradio"} if repo_type == "space" else {}
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **extra)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type=repo_type,
        commit_message=f"Upload the {kind} written by cryonuseg-hf",
    )
    return commit.commit_url


def push_export(
    out: str | os.PathLike, private: bool = False, token: str | None = None, endpoint: str | None = None
) -> dict[str, str]:
    """Push every folder of a ``hub-export`` to the repository its manifest names; returns folder -> commit URL.

    Raises:
        FileNotFoundError: ``out`` has no manifest (not a ``hub-export`` folder).
    """
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{out}: no {MANIFEST}; pass a folder made by `cryonuseg-hf hub-export`, or --repo-id"
        )
    manifest = json.loads((out / MANIFEST).read_text())
    return {
        folder: push_folder(out / folder, repo["repo_id"], private=private, token=token, endpoint=endpoint)
        for folder, repo in manifest["repos"].items()
    }
