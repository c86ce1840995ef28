"""cryonuseg_hf.evaluation.metrics and the evaluate module: golden values by hand, invariants, bad input, and agreement with
the straightforward per-nucleus implementation (``tests/reference_metric.py``) on the 30 real tile pairs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from reference_metric import reference_score_tile

from cryonuseg_hf.evaluation.metrics import COUNTS, METRICS, as_label_image, score, score_tile


def _expect(scores: dict, **expected: float) -> None:
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-12), name


def _disks(shape=(96, 96), n=25, seed=0, max_radius=9) -> np.ndarray:
    """A label image of overlapping disks (later disks cover earlier ones), ids 1..n, some possibly hidden."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    for i in range(1, n + 1):
        center = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rr, cc = disk(center, rng.uniform(2, max_radius), shape=shape)
        labels[rr, cc] = i
    return labels


# ---- golden values, computed by hand in the comments ----


def test_one_match_one_miss():
    # truth 1 = pred 5 exactly (IoU 1, 2 px); truth 2 (2 px) is missed.
    scores = score_tile(np.array([[1, 1, 0, 2, 2]]), np.array([[5, 5, 0, 0, 0]]))
    # dice 2*2/(4+2); AJI 2/(2+2); PQ: TP 1, FN 1 -> DQ 1/1.5, SQ 1.
    _expect(scores, dice=2 / 3, aji=0.5, aji_plus=0.5, dq=2 / 3, sq=1.0, pq=2 / 3, precision=1.0, recall=0.5)
    _expect(scores, n_true=2, n_pred=1, tp=1, fp=0, fn=1, aji_intersection=2, aji_union=4)


def test_unpaired_prediction_adds_its_area_to_the_union():
    # pred 3 (1 px) overlaps nothing: AJI 2/(2+1); PQ: TP 1, FP 1.
    scores = score_tile(np.array([[1, 1, 0, 0]]), np.array([[2, 2, 0, 3]]))
    _expect(
        scores, dice=4 / 5, aji=2 / 3, aji_plus=2 / 3, dq=2 / 3, sq=1.0, pq=2 / 3, precision=0.5, recall=1.0
    )


def test_merge_iou_exactly_half_is_not_a_match_and_aji_reuses_the_prediction():
    # One prediction over two true nuclei of 2 px: each IoU = 2/4 = 0.5 exactly.
    scores = score_tile(np.array([[1, 1, 2, 2]]), np.array([[7, 7, 7, 7]]))
    # AJI: both true nuclei take pred 7 -> (2+2)/(4+4): the merged prediction counts twice in the union.
    # AJI+: one-to-one, one pair (2/4) and one unpaired true nucleus (2 px) -> 2/6.
    # PQ: IoU 0.5 is not > 0.5 -> TP 0, FP 1, FN 2.
    _expect(scores, dice=1.0, aji=0.5, aji_plus=1 / 3, dq=0.0, sq=0.0, pq=0.0, precision=0.0, recall=0.0)
    _expect(scores, tp=0, fp=1, fn=2, aji_union=8, aji_plus_union=6)


def test_split():
    # truth 1 (6 px) split into pred 3 (4 px, IoU 4/6) and pred 4 (2 px, IoU 2/6).
    scores = score_tile(np.array([[1, 1, 1, 1, 1, 1]]), np.array([[3, 3, 3, 3, 4, 4]]))
    # AJI/AJI+: pair (1, 3) 4/6, pred 4 unpaired -> 4/(6+2). PQ: TP 1 (IoU 2/3), FP 1.
    _expect(scores, dice=1.0, aji=0.5, aji_plus=0.5, dq=2 / 3, sq=2 / 3, pq=4 / 9, precision=0.5, recall=1.0)


def test_iou_just_above_half_is_a_match():
    scores = score_tile(np.array([[1, 1, 1]]), np.array([[2, 2, 0]]))
    _expect(scores, tp=1, fp=0, fn=0, dq=1.0, sq=2 / 3, pq=2 / 3, aji=2 / 3)


def test_aji_tie_goes_to_larger_intersection_then_smaller_id():
    # truth 1 (4 px); pred 5 covers 1 px of it (IoU 1/4); pred 7 covers 2 px of it and 4 px outside (IoU 2/8).
    truth = np.array([[1, 1, 1, 1, 0, 0, 0, 0]])
    scores = score_tile(truth, np.array([[5, 0, 7, 7, 7, 7, 7, 7]]))
    # Equal IoU: the larger intersection (pred 7) wins: 2/(8 + 1 for pred 5), not 1/(4 + 6 for pred 7).
    _expect(scores, aji=2 / 9, dice=6 / 11, pq=0.0)
    # Equal IoU and equal intersection: the smaller id wins; either way 2/(4+2).
    _expect(score_tile(np.array([[1, 1, 1, 1]]), np.array([[4, 4, 3, 3]])), aji=1 / 3, aji_plus=1 / 3)


def test_aji_exact_tie_goes_to_raster_order_whatever_the_ids():
    # truth 1 = px 0-5, truth 2 = px 6-8. Pred A = px 0-2 and 6, pred B = px 3-5 and 12: both have IoU 3/7 and
    # intersection 3 with truth 1. A comes first in raster order, so truth 1 takes A; truth 2 takes A too
    # (its only overlap); B stays unpaired: (3 + 1) / (7 + 6 + 4) = 4/17. Had truth 1 taken B: (3 + 1) / (7 + 6).
    truth = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0]])
    a_is_5 = np.array([[5, 5, 5, 9, 9, 9, 5, 0, 0, 0, 0, 0, 9]])
    a_is_9 = np.where(a_is_5 == 5, 9, np.where(a_is_5 == 9, 5, 0))
    for prediction in (a_is_5, a_is_9):
        _expect(score_tile(truth, prediction), aji=4 / 17)
        assert reference_score_tile(truth, prediction)["aji"] == pytest.approx(4 / 17)


def test_aji_plus_tie_goes_to_larger_intersection_whatever_the_ids():
    # The tie of test_aji_tie_goes_to_larger_intersection_then_smaller_id, for AJI+: both pairings have total IoU
    # 1/4; HoVer-Net's weights inter / (union + 1e-6) prefer the larger intersection: 2/(8 + 1), not 1/(4 + 6).
    truth = np.array([[1, 1, 1, 1, 0, 0, 0, 0]])
    for prediction in ([[5, 0, 7, 7, 7, 7, 7, 7]], [[7, 0, 5, 5, 5, 5, 5, 5]]):
        _expect(score_tile(truth, np.array(prediction)), aji=2 / 9, aji_plus=2 / 9)
        assert reference_score_tile(truth, np.array(prediction))["aji_plus"] == pytest.approx(2 / 9)


def test_aji_plus_is_one_to_one_and_maximises_total_iou():
    # truth 1 (4 px) and 2 (2 px); pred 8 (5 px) covers truth 1 and one pixel of truth 2, pred 9 the other pixel.
    truth = np.array([[1, 1, 1, 1, 2, 2]])
    prediction = np.array([[8, 8, 8, 8, 8, 9]])
    # IoU(1,8) = 4/5, IoU(2,8) = 1/6, IoU(2,9) = 1/2. AJI and AJI+ both pair 1-8 and 2-9: (4+1)/(5+2).
    # PQ: only IoU 4/5 matches: TP 1, FP 1 (pred 9), FN 1 (truth 2).
    _expect(score_tile(truth, prediction), aji=5 / 7, aji_plus=5 / 7, tp=1, fp=1, fn=1)
    # Best-IoU pairing and the Hungarian differ: truth 1 (3 px) and 2 (5 px) both prefer pred 8 (7 px).
    truth = np.array([[1, 1, 1, 2, 2, 2, 2, 2]])
    prediction = np.array([[8, 8, 8, 8, 8, 8, 8, 9]])
    # IoU(1,8) = 3/7, IoU(2,8) = 4/8, IoU(2,9) = 1/5. AJI: 1->8 and 2->8, pred 9 unused: (3+4)/(7+8+1).
    # AJI+: {1-8, 2-9} (total IoU 22/35) beats {2-8} (1/2): (3+1)/(7+5).
    _expect(score_tile(truth, prediction), aji=7 / 16, aji_plus=1 / 3)


@pytest.mark.parametrize(
    ("truth", "prediction", "value"),
    [
        (np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.uint8), 1.0),
        (np.zeros((3, 4), np.uint8), np.eye(3, 4, dtype=np.uint8), 0.0),
        (np.eye(3, 4, dtype=np.uint8), np.zeros((3, 4), np.uint8), 0.0),
    ],
    ids=["both-empty", "truth-empty", "prediction-empty"],
)
def test_empty_images(truth, prediction, value):
    scores = score_tile(truth, prediction)
    assert {m: scores[m] for m in METRICS} == dict.fromkeys(METRICS, value)
    assert reference_score_tile(truth, prediction) == dict.fromkeys(METRICS, value)


def test_zero_sized_images_count_as_empty():
    assert score_tile(np.zeros((0, 0), int), np.zeros((0, 0), int))["pq"] == 1.0


def test_metric_card_examples():
    # The worked example and the merge example of cryonuseg_hf/evaluation/nuclei_instance_metric/README.md.
    truth = np.array([[1, 1, 0, 0, 2, 2], [1, 1, 0, 0, 2, 2], [0, 0, 0, 0, 0, 0], [3, 3, 0, 0, 0, 0]])
    prediction = np.array([[7, 7, 0, 0, 8, 0], [7, 7, 0, 0, 8, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 9]])
    _expect(
        score_tile(truth, prediction), dice=12 / 17, aji=6 / 11, aji_plus=6 / 11, pq=1 / 3, dq=1 / 3, sq=1.0
    )
    _expect(score_tile(truth, prediction), precision=1 / 3, recall=1 / 3, tp=1, fp=2, fn=2)
    merged = score_tile(np.array([[1, 1, 1, 0, 2, 2, 2]]), np.full((1, 7), 5))
    _expect(merged, aji=6 / 14, aji_plus=3 / 10, pq=0.0)


# ---- invariants ----


def test_self_score_is_one():
    labels = _disks(seed=1)
    scores = score_tile(labels, labels)
    assert {m: scores[m] for m in METRICS} == dict.fromkeys(METRICS, 1.0)


def _permuted(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Relabel ids 1..n of ``labels`` to ``ids`` (0 stays background)."""
    lookup = np.concatenate([[0], ids]).astype(ids.dtype)
    return lookup[labels]


@pytest.mark.parametrize(
    "id_range",
    [60, 50_000, 10**12],
    ids=["small-ids", "ids-below-65536", "huge-ids"],  # the three contingency-table paths
)
def test_permuting_and_spreading_ids_changes_nothing(id_range):
    rng = np.random.default_rng(7)
    truth, prediction = _disks(seed=2), _disks(seed=3)
    expected = score_tile(truth, prediction)
    n = 25
    new_truth = _permuted(truth, rng.choice(id_range, n, replace=False).astype(np.int64) + 1)
    new_prediction = _permuted(prediction, rng.choice(id_range, n, replace=False).astype(np.int64) + 1)
    got = score_tile(new_truth, new_prediction)
    for name in (*METRICS, *COUNTS):
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]
)
def test_any_integer_dtype(dtype):
    truth, prediction = _disks(seed=4), _disks(seed=5)
    expected = score_tile(truth, prediction)
    assert score_tile(truth.astype(dtype), prediction.astype(dtype)) == expected


def test_pil_images_and_whole_number_floats_are_accepted():
    from PIL import Image

    truth, prediction = _disks(seed=6), _disks(seed=7)
    expected = score_tile(truth, prediction)
    assert (
        score_tile(Image.fromarray(truth.astype(np.uint16)), Image.fromarray(prediction.astype(np.uint8)))
        == expected
    )
    assert score_tile(truth.astype(np.float32), prediction.astype(np.float64)) == expected


def test_non_contiguous_views():
    truth, prediction = _disks(seed=8), _disks(seed=9)
    assert score_tile(truth.T, prediction.T) == score_tile(truth.T.copy(), prediction.T.copy())
    assert score_tile(truth[::2, ::3], prediction[::2, ::3]) == score_tile(
        truth[::2, ::3].copy(), prediction[::2, ::3].copy()
    )


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_the_straightforward_implementation_on_random_disks(seed):
    truth = _disks(seed=100 + seed, n=30)
    prediction = _disks(seed=200 + seed, n=30)
    if seed % 3 == 0:  # predictions close to the truth: many matches
        prediction = np.where(np.roll(truth, seed % 5, axis=1) > 0, np.roll(truth, seed % 5, axis=1) + 100, 0)
    got, expected = score_tile(truth, prediction), reference_score_tile(truth, prediction)
    for name in METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-9), name


# ---- bad input ----


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((4, 4, 3), np.uint8), "expected a 2-D label image"),
        (np.zeros(16, np.uint8), "expected a 2-D label image"),
        (np.full((4, 4), 1.5), "non-integer"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
        (np.array([[0, -1], [1, 2]]), "negative"),
        (np.ones((4, 4), bool), "boolean mask"),
        (np.array([["a", "b"], ["c", "d"]]), "integer label image"),
    ],
    ids=["3-D", "1-D", "fractional", "NaN", "negative", "bool", "strings"],
)
def test_bad_input_gets_a_clear_error(bad, message):
    good = np.zeros(np.shape(bad)[:2] if np.ndim(bad) >= 2 else (4, 4), np.int32)
    with pytest.raises(ValueError, match=message):
        score_tile(good, bad, name="Human_Skin_01")
    with pytest.raises(ValueError, match="Human_Skin_01: prediction"):
        score_tile(good, bad, name="Human_Skin_01")


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"truth has shape \(4, 4\) but prediction has shape \(4, 5\)"):
        score_tile(np.zeros((4, 4), int), np.zeros((4, 5), int))


def test_as_label_image_does_not_copy_valid_integer_arrays():
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert as_label_image(labels) is labels


# ---- score over tiles ----


def test_score_means_over_tiles_and_pools_counts():
    truths = [np.array([[1, 1, 0, 2, 2]]), np.array([[1, 1, 2, 2, 0]])]
    predictions = [np.array([[5, 5, 0, 0, 0]]), np.array([[3, 3, 4, 4, 0]])]
    result = score(predictions, truths, organs=["Skin", "Larynx"], folds=[6, 1], tile_ids=["a", "b"])
    # tile a: AJI 2/4 (see test_one_match_one_miss); tile b: perfect.
    assert result["aji"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["aji_pooled"] == pytest.approx((2 + 4) / (4 + 4))
    assert result["pq"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["dq_pooled"] == pytest.approx(3 / (3 + 0.5))
    assert result["n_tiles"] == 2 and result["n_true"] == 4 and result["tp"] == 3
    assert [row["tile_id"] for row in result["per_tile"]] == ["a", "b"]
    assert result["per_tile"][0]["organ"] == "Skin" and result["per_tile"][0]["fold"] == 6
    assert list(result["per_organ"]) == ["Larynx", "Skin"]
    assert result["per_organ"]["Skin"]["aji"] == pytest.approx(0.5)
    assert result["per_fold"][1]["aji"] == pytest.approx(1.0)
    for name in METRICS:
        assert name in result and f"{name}_pooled" in result


def test_score_against_several_reference_sets():
    truths = [_disks(seed=10), _disks(seed=11)]
    predictions = [_disks(seed=12), _disks(seed=13)]
    both = score(predictions, {"markup_a": truths, "markup_b": predictions})
    assert both["markup_a"]["aji"] == score(predictions, truths)["aji"]
    assert both["markup_b"]["aji"] == 1.0


def test_score_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score([np.zeros((2, 2), int)] * 2, [np.zeros((2, 2), int)])
    with pytest.raises(ValueError, match="nothing to score"):
        score([], [])
    with pytest.raises(ValueError, match="organs: expected one value per tile"):
        score([np.zeros((2, 2), int)], [np.zeros((2, 2), int)], organs=["Skin", "Larynx"])
    with pytest.raises(ValueError, match="Human_Skin_02: truth has shape"):
        score([np.zeros((2, 2), int)], [np.zeros((2, 3), int)], tile_ids=["Human_Skin_02"])


# ---- package hygiene ----


def test_importing_metrics_does_not_import_torch():
    code = "import sys, cryonuseg_hf.evaluation.metrics; print('torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"


# ---- the evaluate module ----


@pytest.fixture(scope="module")
def metric():
    import evaluate

    from cryonuseg_hf import METRIC_PATH

    assert (METRIC_PATH / f"{METRIC_PATH.name}.py").is_file()
    return evaluate.load(str(METRIC_PATH), keep_in_memory=True)


def test_evaluate_module_matches_the_plain_functions(metric):
    truths = [_disks(seed=20).astype(np.uint16), _disks(seed=21)]
    predictions = [_disks(seed=22), _disks(seed=23).astype(np.uint8)]
    result = metric.compute(predictions=predictions, references=truths, organs=["Skin", "Skin"], folds=[6, 6])
    expected = score(predictions, truths, organs=["Skin", "Skin"], folds=[6, 6])
    for name in (*METRICS, *(f"{m}_pooled" for m in METRICS)):
        assert result[name] == pytest.approx(expected[name], abs=1e-12), name
    assert result["per_organ"]["Skin"]["aji"] == pytest.approx(expected["per_organ"]["Skin"]["aji"])


def test_evaluate_module_worked_example(metric):
    result = metric.compute(
        predictions=[np.array([[7, 7, 0, 0, 0]])], references=[np.array([[1, 1, 0, 2, 2]])]
    )
    assert (result["aji"], result["pq"]) == (0.5, pytest.approx(2 / 3))


def test_evaluate_module_more_references(metric):
    truths, predictions = [_disks(seed=24)], [_disks(seed=25)]
    result = metric.compute(predictions=predictions, references=truths, more_references={"same": predictions})
    assert result["by_reference"]["same"]["aji"] == 1.0
    assert result["aji"] == pytest.approx(score(predictions, truths)["aji"])


def test_evaluate_module_rejects_bad_input_before_encoding(metric):
    with pytest.raises(ValueError, match=r"predictions\[0\]: expected a 2-D label image"):
        metric.compute(predictions=[np.zeros((4, 4, 3), np.uint8)], references=[np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="NaN"):
        metric.compute(predictions=[np.full((4, 4), np.nan)], references=[np.zeros((4, 4), np.uint8)])


# ---- real data ----


@pytest.fixture(scope="module")
def real_pairs(release):
    import tifffile

    read = lambda markup: [  # noqa: E731
        tifffile.imread(release.markups[markup].variants["label_masks_modify"][t]) for t in release.tile_ids
    ]
    return release.tile_ids, read("annotator1_round2"), read("annotator2")


def test_agrees_with_the_straightforward_implementation_on_all_real_tiles(real_pairs):
    tiles, references, predictions = real_pairs
    assert len(tiles) == 30
    for tile, truth, prediction in zip(tiles, references, predictions, strict=True):
        got, expected = score_tile(truth, prediction, name=tile), reference_score_tile(truth, prediction)
        for name in METRICS:
            assert got[name] == pytest.approx(expected[name], abs=1e-9), (tile, name)


def test_evaluate_on_real_tiles_matches_score(metric, real_pairs):
    tiles, references, predictions = real_pairs
    result = metric.compute(predictions=predictions, references=references, tile_ids=list(tiles))
    expected = score(predictions, references)
    assert result["n_tiles"] == 30
    for name in METRICS:
        assert result[name] == pytest.approx(expected[name], abs=1e-12), name


def test_ties_among_small_ids_beside_huge_ids():
    # The raster-order tie-break must not allocate per-id tables when other ids are huge.
    truth = np.array([[1, 1, 1, 1, 0, 10**12]], dtype=np.int64)
    prediction = np.array([[4, 4, 3, 3, 0, 10**12]], dtype=np.int64)
    _expect(score_tile(truth, prediction), aji=(2 + 1) / (4 + 2 + 1), aji_plus=(2 + 1) / (4 + 2 + 1))


def test_sparse_pairing_gives_the_dense_pairings_counts(real_pairs, monkeypatch):
    # AJI+ pairs on a dense table for a tile's few hundred nuclei and on the overlapping pairs alone beyond; both
    # must give every count the same, on the 30 real tile pairs (both orientations), on random disks and on ties.
    from cryonuseg_hf.evaluation.nuclei_instance_metric import nuclei_metrics

    tiles, references, predictions = real_pairs
    pairs = [*zip(references, predictions, strict=True), *zip(predictions, references, strict=True)]
    pairs += [(_disks(seed=300 + s, n=40), _disks(seed=400 + s, n=40)) for s in range(6)]
    pairs += [(np.array([[1, 1, 1, 1, 0, 0, 0, 0]]), np.array([[5, 0, 7, 7, 7, 7, 7, 7]]))]
    dense = [score_tile(t, p) for t, p in pairs]
    monkeypatch.setattr(nuclei_metrics, "_DENSE_PAIRING_CELLS", 0)
    assert [score_tile(t, p) for t, p in pairs] == dense
