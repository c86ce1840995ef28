"""The ``evaluate`` module for nuclei instance segmentation: Dice, AJI, AJI+ and PQ on label images.

This folder is complete on its own, as ``evaluate``'s modules on the Hub are: this file declares the inputs and
calls the plain numpy functions of ``nuclei_metrics.py`` beside it (numpy and scipy only; the ``cryonuseg_hf``
package re-exports the same functions as ``cryonuseg_hf.evaluation.metrics``), ``requirements.txt`` lists what it imports,
``README.md`` is the metric card and ``app.py`` the Space's Gradio app. Load it by path, offline:
``evaluate.load("path/to/nuclei_instance_metric")``, or from the Hub by its repository id.

The inputs are declared as ``datasets.Image()`` because that is the cheapest encoding ``evaluate`` offers for 2-D
integer arrays of any size (16-bit and 32-bit label images round-trip losslessly as TIFF); inputs are checked
before ``evaluate`` encodes them, so a 3-D, boolean, negative or NaN input fails with the same clear message as
the plain functions.
"""

import datasets
import evaluate

from .nuclei_metrics import as_label_image, score

_CITATION = """\
@article{kumar2017dataset,
  title={A Dataset and a Technique for Generalized Nuclear Segmentation for Computational Pathology},
  author={Kumar, Neeraj and Verma, Ruchika and Sharma, Sanuj and Bhargava, Surabhi and Vahadane, Abhishek and Sethi, Amit},
  journal={IEEE Transactions on Medical Imaging}, volume={36}, number={7}, pages={1550--1560}, year={2017}
}
@inproceedings{kirillov2019panoptic,
  title={Panoptic Segmentation},
  author={Kirillov, Alexander and He, Kaiming and Girshick, Ross and Rother, Carsten and Doll{\\'a}r, Piotr},
  booktitle={CVPR}, pages={9404--9413}, year={2019}
}
@article{graham2019hover,
  title={HoVer-Net: Simultaneous segmentation and classification of nuclei in multi-tissue histology images},
  author={Graham, Simon and Vu, Quoc Dang and Raza, Shan E Ahmed and Azam, Ayesha and Tsang, Yee Wah and Kwak, Jin Tae and Rajpoot, Nasir},
  journal={Medical Image Analysis}, volume={58}, pages={101563}, year={2019}
}
@article{mahbod2021cryonuseg,
  title={CryoNuSeg: A dataset for nuclei instance segmentation of cryosectioned H\\&E-stained histological images},
  author={Mahbod, Amirreza and Schaefer, Gerald and Bancher, Benjamin and L{\\"o}w, Christine and Dorffner, Georg and Ecker, Rupert and Ellinger, Isabella},
  journal={Computers in Biology and Medicine}, volume={132}, pages={104349}, year={2021}
}
"""

_DESCRIPTION = """\
Nuclei instance segmentation metrics on label images (0 = background, every other id one nucleus): binary Dice,
AJI (Kumar et al., 2017), AJI+ (Graham et al., 2019) and Panoptic Quality with its detection and segmentation
parts (Kirillov et al., 2019; a match is IoU > 0.5), plus precision and recall at that threshold. Computed per
tile as HoVer-Net's stats_utils does, and averaged over tiles.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted label images, each a 2-D integer numpy array or PIL image (H, W), 0 = background;
        ids need not be contiguous.
    references: list of reference label images, same shapes as the predictions, one per prediction.
    organs: optional list of organ names, one per tile; adds `per_organ`.
    folds: optional list of fold numbers, one per tile; adds `per_fold`.
    tile_ids: optional list of tile ids, one per tile; shown in `per_tile` and in error messages.
    more_references: optional dict name -> list of reference label images, to score the same predictions against
        further reference sets (e.g. the other CryoNuSeg mark-ups) in the same call; adds `by_reference`.
Returns:
    dice, aji, aji_plus, pq, dq, sq, precision, recall: mean over tiles of the per-tile values;
    <metric>_pooled: the same metrics from counts summed over all tiles;
    n_tiles and the summed counts (n_true, n_pred, tp, fp, fn, ...);
    per_tile: list of dicts, one per tile; per_organ / per_fold: group -> summary (when organs / folds are given);
    by_reference: name -> the whole result for that reference set (when more_references is given).
Examples:
    >>> import numpy as np
    >>> metric = evaluate.load("nuclei_instance_metric")  # this folder; from the Hub: "<owner>/nuclei_instance_metric"
    >>> truth = np.array([[1, 1, 0, 2, 2]])
    >>> prediction = np.array([[7, 7, 0, 0, 0]])
    >>> results = metric.compute(predictions=[prediction], references=[truth])
    >>> results["aji"], results["pq"]
    (0.5, 0.6666666666666666)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NucleiInstanceMetric(evaluate.Metric):
    """Dice, AJI, AJI+, PQ/DQ/SQ, precision and recall for nuclei label images (see ``nuclei_metrics.py``)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
            reference_urls=[
                "https://github.com/vqdang/hover_net/blob/master/metrics/stats_utils.py",
                "https://doi.org/10.1109/TMI.2017.2677499",
                "https://arxiv.org/abs/1801.00868",
            ],
        )

    def _checked(self, images, what):
        checked = []
        for k, image in enumerate(images):
            array = as_label_image(image, f"{what}[{k}]")
            if array.size and int(array.max()) > 2**31 - 1:
                raise ValueError(
                    f"{what}[{k}]: ids above 2**31 - 1 do not survive evaluate's image encoding; relabel the "
                    "image, or call score() of nuclei_metrics.py (this folder; cryonuseg_hf.evaluation.metrics) directly"
                )
            checked.append(_encodable(array))
        return checked

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Check a batch of label images, then add it (evaluate appends the input description here)."""
        # evaluate encodes inputs as images here; check them first so bad input fails with a clear message
        # instead of being cast (e.g. a 3-D array to uint8) by the encoder.
        if predictions is not None:
            predictions = self._checked(predictions, "predictions")
        if references is not None:
            references = self._checked(references, "references")
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Check one pair of label images, then add it (evaluate appends the input description here)."""
        if prediction is not None:
            prediction = self._checked([prediction], "prediction")[0]
        if reference is not None:
            reference = self._checked([reference], "reference")[0]
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, organs=None, folds=None, tile_ids=None, more_references=None):
        result = score(predictions, references, organs=organs, folds=folds, tile_ids=tile_ids)
        if more_references:
            result["by_reference"] = score(
                predictions, dict(more_references), organs=organs, folds=folds, tile_ids=tile_ids
            )
        return result


def _encodable(labels):
    """A checked label image in the smallest unsigned or int32 type that holds its ids: evaluate's image encoder
    takes uint8, uint16 and int32 losslessly but refuses int8 and other types (the card promises any integer type).
    """
    top = int(labels.max()) if labels.size else 0
    dtype = "uint8" if top <= 255 else "uint16" if top <= 65535 else "int32"
    return labels.astype(dtype, copy=False)
