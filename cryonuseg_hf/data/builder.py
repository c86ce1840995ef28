"""The ``datasets`` builder of CryoNuSeg: one config per mark-up, rows from :mod:`cryonuseg_hf.data.rows`.

There is one config per mark-up (:data:`cryonuseg_hf.data.release.MARKUPS`); ``annotator1_round2`` is the default.
Every config has one split, ``train``, with all 30 tiles; the leave-one-organ-out folds are the ``fold`` column
(from :mod:`cryonuseg_hf.core.folds`), so ``filters=[("fold", "!=", k)]`` selects the training tiles of fold ``k``.

datasets 5 runs no loading scripts, but an instantiated builder still works:
``CryoNuSeg(config_name="annotator2", data_dir=<release>).download_and_prepare(...)``. It makes the same rows as
:func:`cryonuseg_hf.data.build.build`, which writes the Hub dataset folder with its card.
"""

from __future__ import annotations

import datasets

from cryonuseg_hf.data.readers import read_release
from cryonuseg_hf.data.release import DEFAULT_MARKUP, MARKUP_FOLDERS, MARKUPS, default_source, open_release
from cryonuseg_hf.data.release_checks import check_contents
from cryonuseg_hf.data.rows import features, generate_examples

VERSION = "1.0.0"
CONFIG_DESCRIPTIONS = {
    "annotator1_round1": "Annotator 1 (biologist), first round of manual mark-ups.",
    "annotator1_round2": "Annotator 1 (biologist), second round of manual mark-ups (the default).",
    "annotator2": "Annotator 2 (bioinformatician).",
}
HOMEPAGE = "https://www.kaggle.com/datasets/ipateam/segmentation-of-nuclei-in-cryosectioned-he-images"
LICENSE = "cc-by-nc-sa-4.0"
CITATION = """@article{mahbod2021cryonuseg,
  title   = {{CryoNuSeg}: A dataset for nuclei instance segmentation of cryosectioned {H\\&E}-stained histological images},
  author  = {Mahbod, Amirreza and Schaefer, Gerald and Bancher, Benjamin and L{\\"o}w, Christine and Dorffner, Georg and Ecker, Rupert and Ellinger, Isabella},
  journal = {Computers in Biology and Medicine},
  volume  = {132},
  pages   = {104349},
  year    = {2021},
  doi     = {10.1016/j.compbiomed.2021.104349}
}"""


class CryoNuSegConfig(datasets.BuilderConfig):
    """One mark-up; ``data_dir`` is the raw release folder or zip (default: ``default_source()``)."""


class CryoNuSeg(datasets.GeneratorBasedBuilder):
    """CryoNuSeg, one config per mark-up; rows from :func:`cryonuseg_hf.data.rows.generate_examples`, after the
    release's files are read once and checked (:func:`cryonuseg_hf.data.release_checks.check_contents`).

    Usage: ``CryoNuSeg(config_name="annotator2", data_dir=<release>).download_and_prepare(output_dir=<folder>,
    file_format="parquet")``.
    """

    BUILDER_CONFIG_CLASS = CryoNuSegConfig
    BUILDER_CONFIGS = [
        CryoNuSegConfig(name=m, version=datasets.Version(VERSION), description=CONFIG_DESCRIPTIONS[m])
        for m in MARKUPS
    ]
    DEFAULT_CONFIG_NAME = DEFAULT_MARKUP

    def _info(self):
        return datasets.DatasetInfo(
            description=f"CryoNuSeg nuclei instance segmentation, {MARKUP_FOLDERS[self.config.name]}.",
            features=features(self.config.name),
            homepage=HOMEPAGE,
            license=LICENSE,
            citation=CITATION,
        )

    def _split_generators(self, dl_manager):
        source = self.config.data_dir or default_source()
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"source": source})]

    def _generate_examples(self, source):
        contents = read_release(open_release(source, markups=(self.config.name,)), (self.config.name,))
        check_contents(contents)
        yield from generate_examples(contents, self.config.name)
