"""Prediction: reading any image, tiling with one owner per nucleus, the predictor, the CLI and its failures.

Models here are tiny randomly initialised SegFormers saved into tmp_path: the tests check that prediction runs
and is consistent, never how accurate it is. The tiling tests use a local, deterministic stand-in for the model
on a mosaic of real CryoNuSeg tiles, so that tiled and untiled results must agree exactly.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYONUSEG_HF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random SegFormer (3 classes, input scale 1) saved with save_pretrained."""
    from cryonuseg_hf.model.segformer import build_model, save_checkpoint

    return save_checkpoint(
        build_model("tiny", input_scale=1.0, seed=0), tmp_path_factory.mktemp("tiny"), fp16=False
    )


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from cryonuseg_hf.model.predict import load_predictor

    return load_predictor(checkpoint, device="cpu", backend="torch", threads=2)


@pytest.fixture(scope="module")
def tile(release):
    from cryonuseg_hf.model.images import read_image

    return read_image(release.images["Human_Skin_01"])


@pytest.fixture(scope="module")
def mosaic(release):
    """2x2 real tiles (1024x1024): the seams between them run through real tissue."""
    from cryonuseg_hf.model.images import read_image

    tiles = [
        read_image(release.images[t])
        for t in ("Human_Skin_01", "Human_Larynx_02", "Human_Thymus_01", "Human_Pleura_03")
    ]
    return np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (8-bit RGB) and whose pixel data is a stub."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )
    return path


# ------------------------------------------------------------------------------------------------- reading


def test_read_rgb_png_and_tiff_are_identical(tmp_path, tile):
    import tifffile

    from cryonuseg_hf.model.images import read_image

    Image.fromarray(tile).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", tile)
    tifffile.imwrite(tmp_path / "c.tif", tile.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    for name in ("a.png", "b.tif", "c.tif"):
        np.testing.assert_array_equal(read_image(tmp_path / name), tile, err_msg=name)


def test_conversions_are_made_and_said(tmp_path, caplog):
    import tifffile

    from cryonuseg_hf.model.images import as_rgb8, read_image

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # fully transparent -> white
    grey16 = np.array([[0, 257, 65535]], np.uint16)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((3, 3), 7, np.uint8), "L").save(tmp_path / "grey.png")
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    tifffile.imwrite(tmp_path / "rgb16.tif", np.full((2, 2, 3), 65535, np.uint16), photometric="rgb")
    with caplog.at_level(logging.WARNING):
        out = read_image(tmp_path / "rgba.png")
        assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [100, 100, 100]
        assert "RGBA" in caplog.text and "rgba.png" in caplog.text
        caplog.clear()
        assert read_image(tmp_path / "grey.png").tolist() == np.full((3, 3, 3), 7).tolist()
        assert "grey" in caplog.text
        caplog.clear()
        assert read_image(tmp_path / "grey16.png")[0, :, 0].tolist() == [0, 1, 255]
        assert "16-bit" in caplog.text
        caplog.clear()
        assert (read_image(tmp_path / "rgb16.tif") == 255).all()
        assert "16-bit" in caplog.text
    assert as_rgb8(np.zeros((2, 2, 1), np.uint8)).shape == (2, 2, 3)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4, 3), np.float32), "float"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int32), "int32"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
    ],
)
def test_unsupported_arrays_are_clear_errors(array, message):
    from cryonuseg_hf.model.images import as_rgb8

    with pytest.raises(ValueError, match=message):
        as_rgb8(array, name="my-image")


def test_bad_files_raise_errors_naming_the_file(tmp_path):
    import tifffile

    from cryonuseg_hf.model.images import read_image

    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "notes.png").write_text("not an image at all")
    with pytest.raises(ValueError, match="notes.png.*not an image"):
        read_image(tmp_path / "notes.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.png.*unreadable"):
        read_image(tmp_path / "truncated.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    with pytest.raises(ValueError, match="broken.tif.*unreadable"):
        read_image(tmp_path / "broken.tif")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="float.tif.*float32"):
        read_image(tmp_path / "float.tif")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match="stack.tif.*stack"):
        read_image(tmp_path / "stack.tif")
    Image.new("CMYK", (4, 4)).save(tmp_path / "cmyk.jpg")
    with pytest.raises(ValueError, match="cmyk.jpg.*CMYK"):
        read_image(tmp_path / "cmyk.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "image.bmp")
    with pytest.raises(ValueError, match="image.bmp.*BMP"):
        read_image(tmp_path / "image.bmp")


def test_huge_image_is_refused_from_its_header(tmp_path):
    from cryonuseg_hf.model.images import read_image

    # 100000 x 100000 RGB would need 30 GB; the header alone must stop it (the stub data cannot decode)
    path = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(ValueError, match="huge.png.*100000x100000.*limit"):
        read_image(path)
    with pytest.raises(ValueError, match="limit"):
        read_image(_png_header_only(tmp_path / "small.png", 40, 40), max_pixels=1000)


# -------------------------------------------------------------------------------------------------- tiling


def test_tile_grid_cores_partition_the_image_and_windows_give_margin():
    from cryonuseg_hf.model.tiling import tile_grid

    cases = [
        ((1024, 1024), 512, 64, 1),
        ((1024, 1024), 512, 64, 32),
        ((1000, 2100), 300, 50, 16),
        ((513, 200), 512, 100, 32),
    ]
    for shape, size, margin, align in cases:
        tiles = tile_grid(shape, size, margin, align)
        cover = np.zeros(shape, int)
        for t in tiles:
            cover[t.core] += 1
            for window, core, n in zip(t.window, t.core, shape, strict=True):
                assert window.start % align == 0
                assert min(size, n) <= window.stop - window.start <= size + align - 1
                assert window.start <= core.start and core.stop <= window.stop
                # a cut edge of the window is at least `margin` away from the core
                assert window.start == 0 or core.start - window.start >= margin
                assert window.stop == n or window.stop - core.stop >= margin
        assert (cover == 1).all(), shape
    with pytest.raises(ValueError, match="margin"):
        tile_grid((1000, 1000), 100, 50)


def _local_nuclei(image: np.ndarray) -> np.ndarray:
    """A stand-in for the model that depends only on a small neighbourhood: dark blobs smaller than 40 px."""
    from scipy import ndimage as ndi

    dark = image.mean(axis=2) < 120
    dark = ndi.binary_opening(dark, structure=np.ones((3, 3)))
    labels, _ = ndi.label(dark)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None and max(s.stop - s.start for s in box) > 40:
            labels[box][labels[box] == index] = 0
    return labels


def test_tiled_equals_untiled_on_real_mosaic(mosaic):
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.tiling import predict_tiled

    whole = predict_tiled(mosaic, _local_nuclei, tile_size=2048)
    stats = {}
    tiled = predict_tiled(mosaic, _local_nuclei, tile_size=512, margin=64, align=32, stats=stats)
    assert whole.max() > 300  # real tissue: hundreds of nuclei, many across the 3x3 tile seams
    scores = score_tile(whole, tiled)
    assert scores["pq"] >= 0.99
    # the stand-in is exactly local, so the partition must be identical: no duplicated or cut nucleus
    assert scores["pq"] == 1.0 and len(np.unique(tiled)) == len(np.unique(whole))
    assert stats["tiles"] == 9 and stats["duplicates_dropped"] == 0 and stats["touching_cut_edge"] == 0


def test_tiling_drops_duplicates_and_keeps_pixels_single():
    from cryonuseg_hf.model.tiling import predict_tiled

    # a "model" that sees one fixed nucleus in every window, whatever the window: every tile owns its own copy
    # only where the centroid falls in its core, so exactly one copy survives
    def same_blob_everywhere(window):
        labels = np.zeros(window.shape[:2], np.int32)
        labels[5:15, 5:15] = 1
        return labels

    image = np.zeros((600, 600, 3), np.uint8)
    out = predict_tiled(image, same_blob_everywhere, tile_size=256, margin=32)
    owned = [np.count_nonzero(out == v) for v in np.unique(out)[1:]]
    assert owned and all(n == 100 for n in owned)


# ----------------------------------------------------------------------------------------------- predictor


def test_predict_instances_any_size(predictor, tile):
    from cryonuseg_hf.model.predict import predict_instances

    for image in (tile, tile[:1, :1], tile[:70, :45], np.ascontiguousarray(tile[:, :, 0])):
        labels = predict_instances(image, predictor)
        assert labels.shape == image.shape[:2] and labels.dtype == np.int32
        assert labels.min() >= 0
    probabilities = predictor.probabilities(tile[:70, :45])
    assert probabilities.shape == (3, 70, 45)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)


def test_onnx_and_torch_backends_agree(checkpoint, tile, tmp_path):
    from cryonuseg_hf.model.predict import load_predictor

    torch_run = load_predictor(checkpoint, "cpu", "torch", 2)
    onnx_run = load_predictor(checkpoint, "cpu", "onnx", 2)
    assert onnx_run.backend == "onnx"
    for image in (tile, tile[:100, :77]):
        np.testing.assert_allclose(onnx_run.probabilities(image), torch_run.probabilities(image), atol=1e-3)
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1  # the export went to the user cache only


def test_auto_backend_falls_back_to_torch_loudly(checkpoint, monkeypatch, caplog):
    import cryonuseg_hf.model.onnx_backend as onnx_backend
    from cryonuseg_hf.model.predict import _load_predictor, load_predictor

    def broken(*args, **kwargs):
        raise onnx_backend.OnnxMismatchError("the ONNX export differs from torch by up to 0.86")

    monkeypatch.setattr(onnx_backend, "onnx_runner", broken)
    _load_predictor.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert load_predictor(checkpoint, "cpu", "auto").backend == "torch"
        assert "0.86" in caplog.text
        with pytest.raises(onnx_backend.OnnxMismatchError):
            load_predictor(checkpoint, "cpu", "onnx")
    finally:
        _load_predictor.cache_clear()


def test_tta_averages_views(predictor, tile):
    small = tile[:64, :96]
    plain, averaged = predictor.probabilities(small), predictor.probabilities(small, tta=True)
    assert averaged.shape == plain.shape
    np.testing.assert_allclose(averaged.sum(0), 1.0, atol=1e-5)
    # a flip of the image must give the flipped TTA result (TTA is flip-equivariant by construction)
    flipped = predictor.probabilities(np.ascontiguousarray(small[:, ::-1]), tta=True)
    np.testing.assert_allclose(flipped[:, :, ::-1], averaged, atol=1e-4)


def test_phases_average_the_grid_phase_away(predictor, tile):
    """A model whose output depends on where a pixel falls on a grid of 3 (as SegFormer's logits do on theirs)
    gives the same at every pixel once three phases are averaged; the real model's probabilities keep summing to 1
    and change less when the image moves by a pixel."""
    from dataclasses import replace

    def gridded(batch: np.ndarray) -> np.ndarray:
        rows = np.arange(batch.shape[2])[:, None] % 3 == 0
        on_grid = np.broadcast_to(rows, batch.shape[2:]).astype(np.float32)
        return np.stack([1 - on_grid, on_grid, np.zeros_like(on_grid)])[None].repeat(len(batch), 0)

    stand_in = replace(predictor, run=gridded)
    image = tile[:50, :70]
    assert len(np.unique(stand_in.probabilities(image)[1])) == 2
    averaged = replace(stand_in, phases=3).probabilities(image)[1]
    np.testing.assert_allclose(averaged[:-2, :-2], 1 / 3, atol=1e-6)  # the last 2 rows see fewer phases
    assert replace(stand_in, phases=3).probabilities(image[:1, :1]).shape == (3, 1, 1)

    small = tile[:96, :96]
    three = replace(predictor, phases=3)
    averaged = three.probabilities(small)
    np.testing.assert_allclose(averaged.sum(0), 1.0, atol=1e-5)
    moved = three.probabilities(small[1:, 1:])[:, :-1, :-1]
    plain_moved = predictor.probabilities(small[1:, 1:])[:, :-1, :-1]
    core = (slice(None), slice(16, -16), slice(16, -16))  # away from the edges, which move
    change = np.abs(averaged[:, 1:-1, 1:-1] - moved)[core].mean()
    plain_change = np.abs(predictor.probabilities(small)[:, 1:-1, 1:-1] - plain_moved)[core].mean()
    assert change < plain_change


def test_phases_are_checked(checkpoint):
    from cryonuseg_hf.model.predict import load_predictor

    assert load_predictor(checkpoint, "cpu", "torch", phases=3).phases == 3
    for bad in (0, 9, 2.5):
        with pytest.raises(ValueError, match="phases must be a whole number from 1 to 8"):
            load_predictor(checkpoint, "cpu", "torch", phases=bad)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from cryonuseg_hf.model.predict import load_predictor

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_predictor(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="backend"):
        load_predictor(tmp_path, backend="tensorflow")


def test_instances_from_stock_pipeline_output(release, checkpoint):
    """The stock pipeline's per-class masks -> instances; exercised on real annotations turned into classes."""
    from transformers import pipeline

    from cryonuseg_hf.data.readers import read_mask
    from cryonuseg_hf.data.targets import CLASS_NAMES, instances_to_classes
    from cryonuseg_hf.evaluation.metrics import score_tile
    from cryonuseg_hf.model.predict import instances_from_pipeline

    truth = read_mask(release.markups["annotator1_round2"].variants["label_masks_modify"]["Human_Skin_01"])
    classes = instances_to_classes(truth)
    segments = [
        {"score": None, "label": name, "mask": Image.fromarray(((classes == i) * 255).astype(np.uint8))}
        for i, name in enumerate(CLASS_NAMES)
        if (classes == i).any()
    ]
    labels = instances_from_pipeline(segments, checkpoint, params={"min_size": 0})
    assert score_tile(truth, labels)["pq"] > 0.8

    pipe = pipeline("image-segmentation", model=str(checkpoint), device="cpu")
    image = Image.open(release.images["Human_Skin_01"])
    labels = instances_from_pipeline(pipe(image), pipe.model.config)
    assert labels.shape == (512, 512) and labels.dtype == np.int32
    with pytest.raises(ValueError, match="not in the config"):
        instances_from_pipeline([{"label": "cytoplasm", "mask": segments[0]["mask"]}], checkpoint)


def test_shipped_checkpoint_predicts(release):
    """The shipped model loads and runs, and tiling it leaves no nucleus cut at a window edge.

    Tiled and untiled predictions of the shipped model are compared in ``results/predict_speed.json``
    (``tiling_agreement``) rather than here: the model's output depends on the size of what it sees (global
    attention), so their agreement measures the model as much as the tiling. The tiling rule itself is checked
    exactly by ``test_tiled_equals_untiled_on_real_mosaic``.
    """
    import cryonuseg_hf
    from cryonuseg_hf.model.postprocess import probabilities_to_instances
    from cryonuseg_hf.model.tiling import predict_tiled

    if not (cryonuseg_hf.MODEL_PATH / "config.json").is_file():
        pytest.skip(f"{cryonuseg_hf.MODEL_PATH} not written yet (helper 'train')")
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.predict import load_predictor

    predictor = load_predictor(backend="torch", threads=2)
    labels = cryonuseg_hf.predict_instances(release.images["Human_Skin_01"], predictor)
    assert labels.shape == (512, 512) and labels.dtype == np.int32 and labels.max() > 0
    # a 2x2 mosaic of real 256 px crops, predicted in 2x2 windows of 448 px whose seams cut through tissue
    side = 256
    names = ("Human_Skin_01", "Human_Larynx_02", "Human_Thymus_01", "Human_Pleura_03")
    crops = [read_image(release.images[t])[:side, :side] for t in names]
    mosaic = np.concatenate([np.concatenate(crops[:2], 1), np.concatenate(crops[2:], 1)], 0)
    stats = {}
    tiled = predict_tiled(
        mosaic,
        lambda window: probabilities_to_instances(predictor.probabilities(window), predictor.params),
        tile_size=448,
        margin=64,
        align=32,
        stats=stats,
    )
    assert stats["tiles"] == 4 and stats["nuclei"] == tiled.max() > 0
    # a kept nucleus touching a cut edge would be longer than the margin: a model artefact, and rare
    assert stats["touching_cut_edge"] <= 0.02 * stats["nuclei"]
    assert stats["duplicates_dropped"] <= 0.02 * stats["nuclei"]


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_batch_with_bad_files_finishes_the_others(tmp_path, tile, checkpoint, capsys):
    from cryonuseg_hf.cli import main

    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    Image.fromarray(tile[:128, :160]).save(good)
    Image.fromarray(tile[:1, :1]).save(tmp_path / "in" / "dot.png")  # 1x1: every output still written
    (tmp_path / "in" / "bad.png").write_text("no pixels here")
    missing = tmp_path / "in" / "missing.tif"
    out = tmp_path / "out"
    argv = [
        "predict",
        str(tmp_path / "in"),
        str(missing),
        "-o",
        str(out),
        "--model",
        str(checkpoint),
        "--threads",
        "2",
        "--phases",
        "2",  # the 1x1 image too small for a second phase keeps its one
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "bad.png" in err and "missing.tif" in err and "good.png" not in err and "dot.png" not in err
    names = sorted(p.name for p in out.iterdir())
    kinds = [".geojson", "_RoiSet.zip", "_labels.tif", "_nuclei.csv", "_overlay.png"]
    assert names == sorted([f"dot{k}" for k in kinds] + [f"good{k}" for k in kinds])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["predict", str(good), "-o", str(out), "--model", str(checkpoint)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["predict", str(good), "-o", str(out), "--model", str(checkpoint), "--overwrite"]) == 0
    assert main(["predict", str(good), "-o", str(out), "--model", str(checkpoint), "--phases", "9"]) != 0
    assert "phases must be a whole number from 1 to 8, got 9" in capsys.readouterr().err


def test_cli_unwritable_output_folder(tmp_path, checkpoint, tile, capsys):
    from cryonuseg_hf.cli import main

    image = tmp_path / "x.png"
    Image.fromarray(tile[:64, :64]).save(image)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["predict", str(image), "-o", str(blocker / "out"), "--model", str(checkpoint)]) == 2
    assert "a-file" in capsys.readouterr().err
    assert main(["predict", str(image), "-o", str(blocker), "--model", str(checkpoint)]) == 2
    assert "not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot be tested as root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["predict", str(image), "-o", str(locked), "--model", str(checkpoint)]) == 2
        assert "cannot write" in capsys.readouterr().err
