"""The dataset card (``README.md`` of the Hub dataset repository), generated from the data it describes.

The YAML header holds what ``datasets`` reads (``configs:`` with the Parquet files per split, ``dataset_info:``
with the declared features and sizes); the body says what the data is, how to load it and a fold, what every
column means, the counts, the human agreement, the license and the citation. Everything is rendered from
arguments, in a fixed order and without dates, so that the same release gives the same bytes.
"""

from __future__ import annotations

from cryonuseg_hf.core.folds import ORGANS, TILE_IDS, fold_of
from cryonuseg_hf.data.build import CARD_MARKER, BuiltDataset
from cryonuseg_hf.data.parquet import PARQUET_NAME, SPLIT
from cryonuseg_hf.data.release import DEFAULT_MARKUP, MARKUP_FOLDERS, MARKUPS

MASK_DEFINITIONS: dict[str, str] = {
    "instance_mask": "the released `label masks modify` (uint16 TIFF, stored as a 16-bit PNG): one id per "
    "nucleus, 0 = background. Nucleus `n` (the `n`-th ROI by file name) has id `n`; where ROIs overlap, the "
    "larger id wins (`max`), so this is a clean instance map. **Use this as the instance ground truth.**",
    "label_masks": "the released `label masks` (uint16, stored as 16-bit PNG): the ROI masks *added* together, "
    "so overlapping ROIs produce spurious sums. Kept for completeness; prefer `instance_mask`.",
    "mask_binary": "the released `mask binary` PNG (uint8, 0/255): foreground of all nuclei.",
    "mask_binary_without_border": "the released `mask binary without border` PNG (uint8, 0/255): foreground "
    "with the borders between touching nuclei removed.",
    "mask_binary_without_border_erode": "the released `mask binary without border erode` PNG (uint8, 0/255): "
    "the previous mask eroded with a disk of radius 1.",
    "distance_maps": "the released `distance maps` PNG (uint8): per-nucleus distance to the background, "
    "maximum over nuclei, scaled to 0..255 per tile.",
    "weighted_maps": "the released `weighted_maps` PNG (uint8): U-Net border weight map of "
    "`mask_binary_without_border`, scaled to 0..255 per tile.",
    "weighted_maps_erode": "the released `weighted_maps_erode` PNG (uint8): the same for the eroded mask.",
    "nuclei_border_1 .. nuclei_border_10": "**regenerated** (the release lacks them): the authors' MATLAB "
    "generator writes `nuclei border/disk<k>` as `mask_binary - imerode(mask_binary, strel('disk', k))`; "
    "recomputed from `instance_mask` by `cryonuseg_hf.data.mask_variants.nuclei_borders`, stored as 0/255 PNG.",
}

METADATA_DEFINITIONS: dict[str, str] = {
    "tcga_barcode": "TCGA patient barcode of the source whole-slide image (WSI).",
    "slide_url": "GDC portal page of the WSI.",
    "race": "as recorded by TCGA; the sheet's `x` (not recorded) is null{null_race}.",
    "sex": "`female` / `male` (the sheet's `f` / `m`).",
    "age_years": "completed years at diagnosis, `floor(-days_to_birth / 365.25)`.",
    "days_to_birth": "the sheet's `Age` column as stored: TCGA *days to birth*, a negative day count.",
    "organ_site": "TCGA primary site (finer than `organ`).",
    "disease": "TCGA diagnosis.",
    "bit_depth": "bit depth of the WSI.",
    "magnification": "scan magnification of the WSI.",
    "svs_width, svs_height": "WSI size in pixels; null where the sheet leaves it empty{null_size}.",
    "microns_per_pixel": "the sheet's `Pixel-Dimensions`; null where the sheet leaves it empty{null_mpp}.",
    "centroid_x, centroid_y": "centre of the tile in the WSI, in WSI pixels.",
    "difficulty": "`easy` / `medium` / `hard`: the first word of the authors' note.",
    "difficulty_note": "the authors' note on the tile, verbatim (typos included).",
    "n_cells_annotator1_round1, n_cells_annotator1_round2, n_cells_annotator2": "the authors' cell counts per "
    "mark-up, from the sheet ({cell_counts}).",
}

AGREEMENT_METRICS = {"dice": "Dice", "aji": "AJI", "aji_plus": "AJI+", "pq": "PQ"}


def _yaml_header(splits: dict[str, dict], features: dict) -> str:
    import yaml

    configs = []
    for markup in splits:
        entry = {"config_name": markup, "data_files": [{"split": SPLIT, "path": f"{markup}/{PARQUET_NAME}"}]}
        if markup == DEFAULT_MARKUP:
            entry["default"] = True
        configs.append(entry)
    # No `splits:` sizes here: datasets 5.2 checks them against what it loads, so a load with `filters=`
    # would fail with NonMatchingSplitsSizesError. The card body gives the counts instead.
    infos = [
        {
            "config_name": markup,
            "features": features[markup]._to_yaml_list(),
            "download_size": s["download_size"],
            "dataset_size": s["num_bytes"],
        }
        for markup, s in splits.items()
    ]
    header = {
        "license": "cc-by-nc-sa-4.0",
        "pretty_name": "CryoNuSeg",
        "task_categories": ["image-segmentation"],
        "task_ids": ["instance-segmentation"],
        "tags": ["histopathology", "nuclei", "H&E", "frozen-section", "medical", "biology"],
        "size_categories": ["n<1K"],
        "configs": configs,
        "dataset_info": infos,
    }
    return yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120)


def _counts_table(summaries: dict[str, dict]) -> list[str]:
    markups = list(summaries)
    lines = [
        "| organ | fold | tiles | " + " | ".join(f"ROIs `{m}`" for m in markups) + " |",
        "|---|---|---|" + "---|" * len(markups),
    ]
    for fold, organ in enumerate(ORGANS):
        cells = [str(summaries[m]["per_organ"][organ]["n_nuclei"]) for m in markups]
        tiles = summaries[markups[0]]["per_organ"][organ]["tiles"]
        lines.append(f"| {organ} | {fold} | {tiles} | " + " | ".join(cells) + " |")
    totals = [f"**{summaries[m]['n_nuclei']}**" for m in markups]
    lines.append(f"| **all** | | **{summaries[markups[0]]['tiles']}** | " + " | ".join(totals) + " |")
    return lines


def _tiles_where(metadata: dict[str, dict], field: str) -> str:
    """`` (Human_Testes_01)``: the tiles whose ``field`` is null, for the column definitions."""
    tiles = [t for t, record in metadata.items() if record[field] is None]
    return f" ({', '.join(tiles)})" if tiles else " (no tile here)"


def _cell_count_check(metadata: dict[str, dict], summaries: dict[str, dict]) -> str:
    """Whether the sheet's counts equal the ROI counts of each built config, tile by tile."""
    pairs = [(t, m) for m in summaries for t in metadata]
    differ = [f"{t}/{m}" for t, m in pairs if metadata[t][f"n_cells_{m}"] != summaries[m]["per_tile"].get(t)]
    if not differ:
        return f"equal to `n_nuclei` of the matching config for all {len(pairs)} tile/mark-up pairs"
    return (
        f"different from `n_nuclei` for {len(differ)} of {len(pairs)} tile/mark-up pairs: {', '.join(differ)}"
    )


def _agreement_rows(agreement: dict) -> list[str]:
    """Reference rows: one per comparison of :func:`cryonuseg_hf.evaluation.agreement.human_agreement`, mean over tiles."""
    lines = [
        "| comparison | reference | scored as prediction | " + " | ".join(AGREEMENT_METRICS.values()) + " |",
        "|---|---|---|" + "---|" * len(AGREEMENT_METRICS),
    ]
    for name, result in agreement.items():
        values = " | ".join(f"{float(result['mean'][k]):.3f}" for k in AGREEMENT_METRICS)
        lines.append(f"| {name} | `{result['reference']}` | `{result['prediction']}` | {values} |")
    return lines


def dataset_card(built: BuiltDataset) -> str:
    """The ``README.md`` of a build (what :func:`cryonuseg_hf.data.build.build` takes as ``card``): the card of
    :func:`render_card`, with the human agreement when all three mark-ups were built."""
    from cryonuseg_hf.data.rows import features
    from cryonuseg_hf.evaluation.agreement import COMPARISONS, markup_pairs, observer_comparisons

    agreement = None
    if set(built.splits) == set(MARKUPS):
        references = sorted({reference for reference, _ in COMPARISONS.values()})
        agreement = observer_comparisons(markup_pairs(built.instance_masks, references, TILE_IDS))
    declared = {markup: features(markup) for markup in built.splits}
    return render_card(built.splits, built.summaries, declared, built.metadata, agreement)


def render_card(
    splits: dict[str, dict],
    summaries: dict[str, dict],
    features: dict,
    metadata: dict[str, dict],
    agreement: dict | None = None,
) -> str:
    """The full ``README.md``: YAML header, then the card.

    Args:
        splits: per config, ``num_bytes``, ``num_examples`` and ``download_size`` (from the builder).
        summaries: per config, tiles, ``n_nuclei``, ``n_instances``, ``per_organ`` and ``per_tile`` counts.
        features: per config, its declared ``datasets.Features`` (:func:`cryonuseg_hf.data.rows.features`).
        metadata: the slide metadata per tile (used for the organ-site column of the tile table).
        agreement: :func:`cryonuseg_hf.evaluation.agreement.human_agreement` output, shown as reference rows; omitted
            when ``None``.
    """
    from cryonuseg_hf.data.builder import CITATION, HOMEPAGE

    markups = list(splits)
    default = DEFAULT_MARKUP if DEFAULT_MARKUP in markups else markups[0]
    n = summaries[markups[0]]["tiles"]
    lines = [
        "---",
        _yaml_header(splits, features).rstrip(),
        "---",
        CARD_MARKER,
        "",
        "# CryoNuSeg: nuclei instance segmentation of frozen-section H&E images",
        "",
        f"{n} RGB tiles of 512x512 pixels at 40x, cut from TCGA frozen-section (cryosectioned) H&E whole-slide "
        "images of 10 human organs, 3 tiles per organ. Every nucleus was outlined by hand in ImageJ, three "
        "times: twice by a biologist (Annotator 1, two rounds) and once by a bioinformatician (Annotator 2). "
        "Each config below is one of these mark-ups; every config holds the same tiles, with that mark-up's "
        "polygons, its instance mask and all its derived masks, plus the slide metadata.",
        "",
        "Source: the authors' Kaggle release "
        f"([ipateam/segmentation-of-nuclei-in-cryosectioned-he-images]({HOMEPAGE})), converted losslessly by "
        "`cryonuseg-hf build` (the `cryonuseg_hf` package). Paper: Mahbod et al., "
        "*Computers in Biology and Medicine* 132:104349 (2021), "
        "[doi:10.1016/j.compbiomed.2021.104349](https://doi.org/10.1016/j.compbiomed.2021.104349).",
        "",
        "## Quick start",
        "",
        "```python",
        "import numpy as np",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("cryonuseg", split="train")            # default config: {default}',
        'a2 = load_dataset("cryonuseg", "annotator2", split="train")',
        "row = ds[0]",
        'image = np.asarray(row["image"])                          # (512, 512, 3) uint8',
        'labels = np.asarray(row["instance_mask"]).astype(np.uint16)  # (512, 512), 0 = background',
        f'ds.features["markup"].int2str(row["markup"])              # "{default}": who drew this row',
        "",
        "# fold k of the leave-one-organ-out protocol: train on every other organ, test on organ k",
        'train = load_dataset("cryonuseg", split="train", filters=[("fold", "!=", 3)])',
        'test = load_dataset("cryonuseg", split="train", filters=[("fold", "==", 3)])',
        "",
        "# streaming works the same way",
        'stream = load_dataset("cryonuseg", split="train", streaming=True)',
        "```",
        "",
        "`instance_mask` and `label_masks` are 16-bit PNGs: they decode to PIL mode `I;16`, and "
        '`np.asarray(...)` gives the exact uint16 ids. With `ds.with_format("torch")` they arrive as '
        "`torch.uint16`; convert them (`.to(torch.int32)`) before use.",
        "",
        "## Configs (mark-ups)",
        "",
        "| config | release folder | ROIs (nuclei) | labelled instances |",
        "|---|---|---|---|",
    ]
    for markup in markups:
        mark = " (default)" if markup == default else ""
        lines.append(
            f"| `{markup}`{mark} | `{MARKUP_FOLDERS[markup]}` | {summaries[markup]['n_nuclei']} "
            f"| {summaries[markup]['n_instances']} |"
        )
    lines += [
        "",
        "`n_nuclei` counts the ROIs of a tile; `n_instances` counts the distinct ids in its `instance_mask`. A few "
        "ROIs have no id left in the mask because later ROIs cover them completely.",
        "",
        "## Split and folds",
        "",
        f"There is one split, `train`, with all {n} tiles, in the same order in every config. The evaluation "
        "protocol is **leave one organ out**: fold `k` (0..9) holds the 3 tiles of the `k`-th organ in "
        "alphabetical order as its test set and the other 27 as its training set. The `fold` column says which "
        'fold a tile is the test set of, so select a fold with `filters=[("fold", "!=", k)]` (training) and '
        '`filters=[("fold", "==", k)]` (test), or `ds.filter(lambda r: r["fold"] != k)`. The folds come from '
        "`cryonuseg_hf.core.folds`; nothing here recomputes them.",
        "",
        *_counts_table(summaries),
        "",
        "## Columns",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
        "| `tile_id` | string | `Human_<Organ>_<NN>`, the release's file stem |",
        "| `markup` | ClassLabel (one name: the config) | the mark-up whose outlines and masks the row holds; "
        "see below |",
        "| `image` | Image (PNG, RGB) | the released tile (uncompressed TIFF in the release, stored as lossless PNG) |",
        "| `instance_mask` | Image (16-bit PNG) | see below |",
        f"| `organ` | ClassLabel | one of {', '.join(ORGANS)} |",
        "| `fold` | int8 | 0..9: the fold whose test set holds this tile (the organ's index) |",
        "| `nuclei` | list of {name, roi_type, x, y} | one entry per ImageJ ROI, in file-name order: ROI name, "
        "ImageJ type (`freehand` here) and vertex coordinates (float32 pixels, x right, y down, as ImageJ "
        "stores them) |",
        "| `n_nuclei` | int32 | number of ROIs |",
        "| `n_instances` | int32 | number of distinct non-zero ids in `instance_mask` |",
        "| mask variants | Image | one column each, defined below |",
        "| slide metadata | | from the authors' `Selected_WSIs.xlsx`, defined below |",
        "",
        "### Which mark-up a row holds",
        "",
        "Every row names its mark-up in `markup`. The Parquet files store it as text, so any Parquet reader "
        "sees it; the card declares it a `ClassLabel` whose one name is the config's mark-up, so `load_dataset` "
        'gives `0` and `ds.features["markup"].names` says which mark-up that is. A data file that holds rows '
        "of another mark-up than its config's (a swapped or renamed file, an edited card) is refused while "
        "loading: `Invalid string class label annotator1_round1`, with the file named in the log just above. "
        "`cryonuseg-hf check --source <this folder>` names the file, the config and the mark-up found. Configs do "
        "not concatenate as they are (their `markup` features differ, so their rows cannot mix unnoticed); to mix "
        'them, turn the column into text first: `ds.remove_columns("markup").add_column("markup", '
        '[ds.features["markup"].names[0]] * len(ds))`.',
        "",
        "### Mask variants",
        "",
        "All are 512x512 and lossless: the released 8-bit PNG bytes are stored verbatim, the released uint16 "
        "TIFFs as 16-bit PNG.",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in MASK_DEFINITIONS.items()]
    facts = {
        "null_race": _tiles_where(metadata, "race"),
        "null_size": _tiles_where(metadata, "svs_width"),
        "null_mpp": _tiles_where(metadata, "microns_per_pixel"),
        "cell_counts": _cell_count_check(metadata, summaries),
    }
    lines += ["", "### Slide metadata", ""]
    lines += [
        f"- {', '.join(f'`{f}`' for f in name.split(', '))}: {text.format(**facts)}"
        for name, text in METADATA_DEFINITIONS.items()
    ]
    lines += [
        "",
        "Cleaning applied to the sheet: stray newlines and spaces stripped from values (`'f\\n'`, "
        "`'Human_Skin_03\\n'`), the formula cells (organ-wise sums) and the rows below the table ignored. "
        "Empty cells stay null.",
        "",
        "| tile | fold | organ site | TCGA | difficulty |",
        "|---|---|---|---|---|",
    ]
    for tile in TILE_IDS:
        record = metadata[tile]
        lines.append(
            f"| {tile} | {fold_of(tile)} | {record['organ_site']} | {record['tcga_barcode']} "
            f"| {record['difficulty'] or ''} |"
        )
    if agreement:
        lines += [
            "",
            "## Human agreement (reference rows)",
            "",
            "How well one manual mark-up scores against another, computed at build time by "
            "`cryonuseg_hf.evaluation.agreement` with the same metric code that scores models "
            "(`cryonuseg_hf.evaluation.metrics`): mean over the 30 tiles of the `instance_mask` of each config. "
            "`intra_observer` compares Annotator 1's two rounds, `inter_observer` the two annotators; Annotator 1 "
            "round 2 is the reference in both, as in the CryoNuSeg paper (AJI 0.605 / PQ 0.570 and 0.525 / 0.493 "
            "there). A model that reaches these numbers agrees with an annotator as well as another annotator "
            "does.",
            "",
            *_agreement_rows(agreement),
        ]
    lines += [
        "",
        "## License and attribution",
        "",
        "CryoNuSeg is released by its authors under **CC BY-NC-SA 4.0** (Creative Commons "
        "Attribution-NonCommercial-ShareAlike 4.0): no commercial use, cite the paper below when you use it, "
        "and share derivatives under the same license. This repository is a lossless conversion of that release "
        "(plus the regenerated `nuclei_border_*` masks and the cleaned metadata) and is shared under the same "
        "license. The images come from The Cancer Genome Atlas (TCGA).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    assert set(markups) <= set(MARKUPS)
    return "\n".join(lines)
