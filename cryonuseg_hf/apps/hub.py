"""The network ends: fetch the raw release from Kaggle (``kagglehub``), push a build to the Hub (``huggingface_hub``).

Both check that the server answers before calling the client, with a short timeout, so that a machine without
network fails in seconds with a message that says what to do instead, not after minutes of retries.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

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
        ValueError: ``folder`` is not a build made by :func:`cryonuseg_hf.data.build.build`.
        ConnectionError: offline mode is on, or the Hub cannot be reached.
    """
    from cryonuseg_hf.data.build import is_build

    folder = Path(folder)
    if not folder.is_dir() or not is_build(folder):
        raise ValueError(
            f"{folder}: not a dataset folder made by `cryonuseg-hf build` (README.md and Parquet)"
        )
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
