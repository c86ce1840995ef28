"""Blended windows, the folded decode head, the OpenVINO backend and slide blocks labelled in threads.

The blending tests use stand-ins for the model whose answer at a pixel does not depend on the window, so a blend
must give exactly what one pass over the whole image gives; the model tests use a tiny random SegFormer.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYONUSEG_HF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from cryonuseg_hf.model.segformer import build_model, save_checkpoint

    return save_checkpoint(
        build_model("tiny", input_scale=1.5, seed=0), tmp_path_factory.mktemp("tiny"), fp16=False
    )


def _pixelwise(batch: np.ndarray) -> np.ndarray:
    """Class probabilities that depend on each pixel alone: a softmax of its colour."""
    logits = batch.astype(np.float32).transpose(0, 3, 1, 2) / 64.0
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_window_grid_covers_with_overlap_on_the_grid():
    from cryonuseg_hf.model.blending import window_grid

    for shape, window, overlap, align in [
        ((1000, 2100), 512, 64, 64),
        ((513, 200), 512, 128, 32),
        ((64, 64), 512, 0, 1),
    ]:
        grid = window_grid(shape, window, overlap, align)
        cover = np.zeros(shape, int)
        for rows, cols in grid.slices:
            cover[rows, cols] += 1
            for span, n in zip((rows, cols), shape, strict=True):
                assert span.start % align == 0 and min(window, n) <= span.stop - span.start < window + align
        assert (cover >= 1).all()
        starts = sorted({rows.start for rows, _ in grid.slices})
        stops = sorted({rows.stop for rows, _ in grid.slices})
        assert all(stop - start >= overlap for start, stop in zip(starts[1:], stops[:-1], strict=True))
    with pytest.raises(ValueError, match="overlap"):
        window_grid((1000, 1000), 128, 100, 64)


def test_blend_of_a_pixelwise_model_is_the_whole_image_pass():
    from cryonuseg_hf.model.blending import blended_probabilities

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    whole = _pixelwise(image[None])[0]
    stats: dict = {}
    one = blended_probabilities(image, _pixelwise, window=256, overlap=64, align=32, stats=stats)
    batched = blended_probabilities(image, _pixelwise, window=256, overlap=64, align=32, batch_size=5)
    np.testing.assert_allclose(one, whole, atol=1e-5)
    np.testing.assert_array_equal(one, batched)
    assert stats == {"windows": 4 * 5, "windows_skipped": 0}  # starts 0 192 384 416, 0 .. 576 640


def test_skipped_windows_are_background():
    from cryonuseg_hf.model.blending import blended_probabilities

    image = np.zeros((300, 300, 3), np.uint8)
    image[:100, :100] = 200
    stats: dict = {}
    p = blended_probabilities(
        image, _pixelwise, window=128, overlap=32, skip=lambda w: not w.any(), stats=stats
    )
    assert p.shape == (3, 300, 300) and stats["windows_skipped"] > 0
    assert (p[0, 250:, 250:] == 1).all() and (p[1:, 250:, 250:] == 0).all()
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    nothing = blended_probabilities(image * 0, _pixelwise, window=128, overlap=32, skip=lambda w: True)
    assert (nothing[0] == 1).all()


def test_folded_head_computes_the_stock_head(checkpoint):
    import torch

    from cryonuseg_hf.model.folded_head import with_head
    from cryonuseg_hf.model.segformer import load_torch_module

    stock, _ = load_torch_module(checkpoint, "cpu")
    folded = with_head(stock, "folded")
    assert with_head(stock, "stock") is stock
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 255, (2, 3, 96, 160)).astype(np.float32))
    with torch.inference_mode():
        (p1, l1), (p2, l2) = stock(x), folded(x)
    torch.testing.assert_close(l2, l1, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p2, p1, atol=1e-5, rtol=1e-5)
    assert type(stock.model.decode_head).__name__ == "SegformerDecodeHead"  # the original is untouched


def test_predict_options_agree_and_blend_one_window_is_the_default(checkpoint, release):
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.predict import load_predictor, predict_instances

    tile = read_image(release.images["Human_Skin_01"])[:256, :320]
    base = load_predictor(checkpoint, "cpu", "onnx", 2)
    folded = load_predictor(checkpoint, "cpu", "onnx", 2, head="folded")
    assert folded.head == "folded"
    np.testing.assert_allclose(folded.probabilities(tile), base.probabilities(tile), atol=1e-3)
    labels = predict_instances(tile, base)
    np.testing.assert_array_equal(predict_instances(tile, base, blend=True), labels)
    large = np.concatenate([tile, tile[:, ::-1]], axis=0)
    one = predict_instances(large, base, blend=True, tile_size=192, overlap=64)
    batched = predict_instances(large, base, blend=True, tile_size=192, overlap=64, batch_size=4)
    np.testing.assert_array_equal(one, batched)
    assert one.shape == large.shape[:2] and one.dtype == np.int32
    with pytest.raises(ValueError, match="bf16 needs backend openvino"):
        load_predictor(checkpoint, "cpu", "onnx", precision="bf16")


def test_openvino_backend_is_checked_and_cached(checkpoint, tmp_path):
    pytest.importorskip("openvino")
    from cryonuseg_hf.model.openvino_backend import openvino_runner
    from cryonuseg_hf.model.predict import load_predictor

    torch_run = load_predictor(checkpoint, "cpu", "torch", 2)
    x = np.random.default_rng(2).uniform(0, 255, (1, 3, 96, 128)).astype(np.float32)
    for precision, tolerance in (("fp32", 1e-4), ("bf16", 0.05)):
        run = openvino_runner(checkpoint, threads=2, head="folded", precision=precision)
        assert np.abs(run(x) - torch_run.run(x)).mean() < tolerance
    assert len(list((tmp_path / "cache").glob("*.check.json"))) == 2  # one check per precision, remembered


def test_slide_blocks_in_threads_and_blended(tmp_path, checkpoint, release):
    from cryonuseg_hf.model.images import read_image
    from cryonuseg_hf.model.predict import load_predictor
    from cryonuseg_hf.model.slides.predict import predict_slide
    from cryonuseg_hf.model.slides.pyramid import write_pyramid

    tile = read_image(release.images["Human_Skin_01"])
    image = np.full((1024, 1024, 3), 255, np.uint8)
    image[100:612, 200:712] = tile
    slide = write_pyramid(tmp_path / "slide.tif", image, 0.2505, steps=(1, 4))
    predictor = load_predictor(checkpoint, "cpu", "onnx", 2)
    runs = {}
    for name, options in {
        "one": {},
        "threads": {"block_threads": 2},
        "blend": {"blend": True, "overlap": 64, "batch_size": 2, "block_threads": 2},
    }.items():
        runs[name] = predict_slide(
            slide, tmp_path / name, predictor, block_size=448, tile_size=256, margin=32, **options
        )
    assert runs["one"]["blocks_with_tissue"] > 1
    for key in ("nuclei", "tiles_run", "tiles_skipped_blank"):
        assert runs["threads"][key] == runs["one"][key]
    assert runs["blend"]["tiles_run"] > 0 and runs["blend"]["nuclei"] >= 0


def test_cli_predict_with_the_speed_options(tmp_path, checkpoint, release):
    """The held-out tiles of a fold can be predicted on any path from the command line and read back."""
    from PIL import Image

    from cryonuseg_hf.cli import main
    from cryonuseg_hf.model.images import read_image

    folder = tmp_path / "held_out"
    folder.mkdir()
    for name in ("Human_Skin_01", "Human_Larynx_01"):
        Image.fromarray(read_image(release.images[name])[:320, :384]).save(folder / f"{name}.png")
    out = tmp_path / "out"
    argv = ["predict", str(folder), "-o", str(out), "--model", str(checkpoint), "--threads", "2"]
    argv += ["--backend", "onnx", "--head", "folded", "--blend", "--overlap", "64", "--tile-size", "192"]
    assert main(argv) == 0
    labels = sorted(out.glob("*_labels.tif"))
    assert [p.name for p in labels] == ["Human_Larynx_01_labels.tif", "Human_Skin_01_labels.tif"]
