"""One config's rows as a Parquet file with its features in the schema, and the check that a build's files are
the ones its card names.

A config is one folder of a dataset repository, ``<config>/train-00000-of-00001.parquet``; ``datasets`` reads
the features back from the schema, so no loading script is needed. The card's ``configs:`` list maps each config
to its files; :func:`check_build` reads the ``markup`` column of every file and refuses a file whose rows belong
to another mark-up than the config that names it (a swapped, copied or renamed file, or an edited card).
"""

from __future__ import annotations

from pathlib import Path

SPLIT = "train"
PARQUET_NAME = "train-00000-of-00001.parquet"
ROWS_PER_ROW_GROUP = 10
"""Small row groups let streaming and the Hub viewer start without reading a whole config."""
REBUILD = "rebuild the folder with `cryonuseg-hf build --overwrite`"


def write_config(rows: list[dict], path: Path, markup: str) -> dict:
    """Write one config's rows as Parquet with embedded features; return its split sizes for the card.

    The ``markup`` column is stored as text (:func:`cryonuseg_hf.data.rows.stored_features`).
    """
    import datasets
    from datasets import utils as hf_utils

    from cryonuseg_hf.data.rows import stored_features

    dataset = datasets.Dataset.from_list(rows, features=stored_features(markup))
    path.parent.mkdir(parents=True, exist_ok=True)
    bars_were_on = not hf_utils.are_progress_bars_disabled()
    hf_utils.disable_progress_bars()  # one bar per 10 rows is noise; the CLI reports per config
    try:
        dataset.to_parquet(str(path), batch_size=ROWS_PER_ROW_GROUP)
    finally:
        if bars_were_on:
            hf_utils.enable_progress_bars()
    return {
        "num_bytes": int(dataset.data.nbytes),
        "num_examples": len(dataset),
        "download_size": path.stat().st_size,
    }


def card_header(folder: Path) -> dict:
    """The YAML header of ``folder/README.md`` (the dataset card), as a dict.

    Raises:
        FileNotFoundError: the folder has no card.
        ValueError: the card has no readable YAML header with a ``configs:`` list.
    """
    import yaml

    card = Path(folder) / "README.md"
    if not card.is_file():
        raise FileNotFoundError(
            f"{card}: missing; a dataset folder needs its card to map configs to files; {REBUILD}"
        )
    text = card.read_text(encoding="utf-8", errors="replace")
    parts = text.split("---\n", 2) if text.startswith("---\n") else []
    try:
        header = yaml.safe_load(parts[1]) if len(parts) == 3 else None
    except yaml.YAMLError as error:
        raise ValueError(f"{card}: unreadable YAML header ({error}); {REBUILD}") from None
    if not isinstance(header, dict) or not isinstance(header.get("configs"), list):
        raise ValueError(
            f"{card}: no `configs:` list in the YAML header, so no config names its files; {REBUILD}"
        )
    return header


def config_files(folder: Path, header: dict) -> dict[str, list[Path]]:
    """config name -> the data files the card's ``configs:`` list gives it (every split), in card order."""
    files: dict[str, list[Path]] = {}
    for entry in header["configs"]:
        data_files = entry.get("data_files") or []
        if isinstance(data_files, (str, dict)):
            data_files = [data_files]
        paths = []
        for item in data_files:
            patterns = item.get("path", []) if isinstance(item, dict) else item
            for pattern in [patterns] if isinstance(patterns, str) else patterns:
                matched = sorted(folder.glob(pattern)) if any(c in pattern for c in "*?[") else []
                paths += matched or [folder / pattern]
        files[str(entry.get("config_name"))] = paths
    return files


def check_build(folder: str | Path, configs: tuple[str, ...] | None = None) -> dict[str, list[Path]]:
    """Check that every data file the card gives a config holds that config's rows, and nothing else.

    Reads only the ``markup`` column of each file (milliseconds), and the card's declared ``markup`` feature.
    ``load_dataset`` refuses such files on its own (the declared ``ClassLabel`` has one name); this says which
    file, which config and which mark-up, before any image is decoded.

    Args:
        folder: a folder written by :func:`cryonuseg_hf.data.build.build`.
        configs: the configs to check (default: every config of the card).

    Returns:
        config -> its data files.

    Raises:
        FileNotFoundError: the card or a data file it names is missing.
        ValueError: a file holds rows of another mark-up, or none that say theirs; the card lacks a config, or
            declares another mark-up for it. The message names the file, the config and the mark-up found.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cryonuseg_hf.data.rows import MARKUP_COLUMN

    folder = Path(folder)
    card = folder / "README.md"
    header = card_header(folder)
    files = config_files(folder, header)
    wanted = tuple(files) if configs is None else tuple(configs)
    absent = [c for c in wanted if c not in files]
    if absent:
        raise ValueError(f"{card}: no config {', '.join(map(repr, absent))} (the card lists {list(files)})")
    for config in wanted:
        _check_declared(card, header, config)
        if not files[config]:
            raise ValueError(f"{card}: config {config!r} names no data files; {REBUILD}")
        for path in files[config]:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: missing, yet the card gives it to config {config!r}; {REBUILD}"
                )
            try:
                column = pq.read_table(path, columns=[MARKUP_COLUMN]).column(0).to_pylist()
            except (pa.ArrowInvalid, KeyError, OSError) as error:
                if MARKUP_COLUMN not in _column_names(path):
                    raise ValueError(
                        f"{path}: its rows carry no `{MARKUP_COLUMN}` column, so nothing shows they are config "
                        f"{config!r}'s (a build made before rows named their mark-up); {REBUILD}"
                    ) from None
                raise ValueError(f"{path}: not a readable Parquet file ({error}); {REBUILD}") from None
            found = sorted({str(value) for value in column} - {config})
            if found:
                raise ValueError(
                    f"{path}: the card gives this file to config {config!r}, but its rows are mark-up "
                    f"{', '.join(found)}: the card and the files contradict each other. Put back "
                    f"{config}'s own file, or {REBUILD}"
                )
    return {config: files[config] for config in wanted}


def _column_names(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except Exception:  # an unreadable file: the caller reports it as such
        return []


def _check_declared(card: Path, header: dict, config: str) -> None:
    """The card's ``dataset_info`` for ``config``, if any, must declare ``markup`` with that one name."""
    from datasets import ClassLabel, Features

    from cryonuseg_hf.data.rows import MARKUP_COLUMN

    infos = header.get("dataset_info") or []
    infos = [infos] if isinstance(infos, dict) else infos
    for info in infos:
        if isinstance(info, dict) and info.get("config_name", "default") == config and "features" in info:
            try:
                declared = Features._from_yaml_list(info["features"]).get(MARKUP_COLUMN)
            except (TypeError, ValueError, KeyError, AttributeError) as error:
                raise ValueError(
                    f"{card}: unreadable features of config {config!r} ({error}); {REBUILD}"
                ) from None
            if not isinstance(declared, ClassLabel) or declared.names != [config]:
                names = declared.names if isinstance(declared, ClassLabel) else declared
                raise ValueError(
                    f"{card}: config {config!r} declares its `{MARKUP_COLUMN}` column as {names}, not as "
                    f"ClassLabel(names=[{config!r}]), so datasets would not refuse another mark-up's rows; {REBUILD}"
                )
