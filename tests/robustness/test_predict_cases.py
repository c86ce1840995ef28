"""Robustness of `predict` and the image reader: real tiles saved in unusual or broken ways, hostile arguments,
damaged checkpoints and output folders that cannot be written as a set.

The model runs on 256 x 256 crops of real tiles (torch backend, one thread) to keep each case around a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from robustness.helpers import (
    assert_user_error,
    copy_checkpoint,
    png_bytes,
    run_cli,
    tiff_bytes,
    tree_state,
)

MODEL = ("--backend", "torch", "--device", "cpu", "--threads", "1")
KINDS = ("_labels.tif", "_overlay.png", ".geojson", "_RoiSet.zip", "_nuclei.csv")


@pytest.fixture(scope="module")
def tile(release) -> np.ndarray:
    """A 256 x 256 crop of a real tile (Human_Larynx_01, many nuclei)."""
    import tifffile

    return np.ascontiguousarray(tifffile.imread(release.images["Human_Larynx_01"])[:256, :256])


def _outputs(folder: Path, stem: str) -> list[Path]:
    return [folder / f"{stem}{kind}" for kind in KINDS]


def _predict(*args) -> object:
    return run_cli("predict", *map(str, args), *MODEL)


def _n_nuclei(csv_path: Path) -> int:
    return len(csv_path.read_text().splitlines()) - 1


@pytest.fixture(scope="module")
def rgb_run(tile, tmp_path_factory):
    """The plain RGB PNG predicted once: the reference the re-encoded copies must reproduce."""
    folder = tmp_path_factory.mktemp("rgb")
    (folder / "tile.png").write_bytes(png_bytes(tile))
    result = _predict(folder / "tile.png", "-o", folder / "out")
    assert result.code == 0, result.err
    return folder / "out"


def test_threads_zero():
    """predict --threads 0: refused by the parser, before the model loads."""
    assert_user_error(_predict_args("--threads", "0"), "--threads", ">= 1")


def test_tile_size_too_small():
    """predict --tile-size 8: refused by the parser."""
    assert_user_error(_predict_args("--tile-size", "8"), "--tile-size", ">= 64")


def test_negative_margin():
    """predict --margin -1: refused by the parser."""
    assert_user_error(_predict_args("--margin", "-1"), "--margin", ">= 0")


def _predict_args(*extra: str):
    return run_cli("predict", "x.png", "-o", "unused-out", *extra)


def test_cmyk_tiff_predicts_like_rgb(tile, rgb_run, tmp_path, caplog):
    """A CMYK TIFF of a real tile: converted, and the same nuclei as the RGB PNG (was: read as RGBA, 0 nuclei)."""
    k = 255 - tile.max(axis=2, keepdims=True).astype(np.float64)
    cmy = np.where(k < 255, np.round((255 - tile - k) / np.maximum(255 - k, 1) * 255), 0)
    path = tmp_path / "tile.tif"
    path.write_bytes(tiff_bytes(np.concatenate([cmy, k], axis=2).astype(np.uint8), photometric="separated"))
    result = _predict(path, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert "transparency" not in caplog.text and "CMYK TIFF converted to RGB" in caplog.text
    assert (tmp_path / "out" / "tile_nuclei.csv").read_bytes() == (rgb_run / "tile_nuclei.csv").read_bytes()


def test_palette_tiff(tile, tmp_path):
    """A palette TIFF: colours through its colour map (was: the indices read as grey)."""
    from PIL import Image

    from cryonuseg_hf.model.images import read_image

    quantized = Image.fromarray(tile).quantize(64)
    palette = np.zeros((256, 3))
    palette[:64] = np.asarray(quantized.getpalette()[: 64 * 3]).reshape(64, 3)
    path = tmp_path / "palette.tif"
    colormap = (palette.T * 257).astype(np.uint16)
    path.write_bytes(tiff_bytes(np.asarray(quantized), photometric="palette", colormap=colormap))
    assert np.array_equal(read_image(path), np.asarray(quantized.convert("RGB")))


def test_miniswhite_tiff(tile, tmp_path):
    """A grey TIFF stored with white as 0 (MINISWHITE): inverted (was: read as a negative)."""
    from cryonuseg_hf.model.images import read_image

    grey = tile.mean(axis=2).astype(np.uint8)
    path = tmp_path / "negative.tif"
    path.write_bytes(tiff_bytes(255 - grey, photometric="miniswhite"))
    assert np.array_equal(read_image(path)[..., 0], grey)


def test_jpeg_exif_orientation(tile, tmp_path):
    """A JPEG stored rotated with EXIF orientation 6: turned upright (was: predicted sideways)."""
    from PIL import Image

    from cryonuseg_hf.model.images import read_image

    image = Image.fromarray(np.ascontiguousarray(np.rot90(tile, 1)))
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    upright = read_image(path).astype(np.int16)
    assert upright.shape == tile.shape
    assert np.abs(upright - tile).mean() < 3 < np.abs(np.rot90(upright, 1) - tile).mean()


def test_tiff_orientation_tag(tile, tmp_path):
    """A TIFF whose Orientation tag says 8 (rotated 90 degrees): turned upright."""
    from cryonuseg_hf.model.images import read_image

    path = tmp_path / "rotated.tif"
    stored = np.ascontiguousarray(np.rot90(tile, -1))
    path.write_bytes(tiff_bytes(stored, photometric="rgb", extratags=[(274, "H", 1, 8, True)]))
    assert np.array_equal(read_image(path), tile)


def test_tiff_with_unassociated_extra_sample(tile, tmp_path):
    """An RGB TIFF with a fourth sample of no declared meaning: dropped, not taken as transparency."""
    from cryonuseg_hf.model.images import read_image

    path = tmp_path / "extra.tif"
    extra = np.concatenate([tile, np.zeros_like(tile[..., :1])], axis=2)
    path.write_bytes(tiff_bytes(extra, photometric="rgb", extrasamples=[0]))
    assert np.array_equal(read_image(path), tile)


def test_cielab_tiff_is_refused(tile, tmp_path):
    """A CIELab TIFF: refused, naming the file, the interpretation and the fix."""
    path = tmp_path / "lab.tif"
    path.write_bytes(tiff_bytes(tile, photometric="cielab"))
    result = _predict(path, "-o", tmp_path / "out")
    assert_user_error(result, f"{path}: TIFF photometric interpretation CIELAB", "save it as RGB", code=1)
    assert tree_state(tmp_path / "out") == {}


@pytest.mark.parametrize(
    ("kind", "image", "reason"),
    [
        ("black", np.zeros((256, 256, 3), np.uint8), "almost black"),
        ("blank", np.full((256, 256, 3), 245, np.uint8), "blank"),
    ],
)
def test_non_tissue_is_refused(tmp_path, kind, image, reason):
    """An all-black or blank tile: no nucleus invented; refused with the reason and the way to force it."""
    path = tmp_path / f"{kind}.png"
    path.write_bytes(png_bytes(image))
    result = _predict(path, "-o", tmp_path / "out")
    assert_user_error(result, f"{path}: not an H&E tissue image: {reason}", "--allow-non-tissue", code=1)
    assert tree_state(tmp_path / "out") == {}


def test_grey_image_is_refused(tile, tmp_path):
    """A real tile saved as grey: refused (the model reads H&E colour), with the reason."""
    path = tmp_path / "grey.png"
    path.write_bytes(png_bytes(tile.mean(axis=2).astype(np.uint8)))
    assert_user_error(_predict(path, "-o", tmp_path / "out"), "not an H&E tissue image: grey", code=1)


def test_non_tissue_allowed_on_request(tmp_path, caplog):
    """--allow-non-tissue predicts a black tile anyway and says so."""
    path = tmp_path / "black.png"
    path.write_bytes(png_bytes(np.zeros((256, 256, 3), np.uint8)))
    result = _predict(path, "-o", tmp_path / "out", "--allow-non-tissue")
    assert result.code == 0, result.err
    assert "not an H&E tissue image (almost black" in caplog.text and "predicted anyway" in caplog.text
    assert all(p.is_file() for p in _outputs(tmp_path / "out", "black"))


def test_output_folder_is_the_input_folder(tile, tmp_path):
    """-o equal to the input folder, run twice with --overwrite: our own outputs are never taken as images."""
    (tmp_path / "tile.png").write_bytes(png_bytes(tile))
    first = _predict(tmp_path, "-o", tmp_path)
    second = _predict(tmp_path, "-o", tmp_path, "--overwrite")
    assert first.code == second.code == 0, second.err
    assert "predicted 1 image(s)" in second.out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tile.png", *(f"tile{k}" for k in KINDS)])


def test_outputs_exist_without_overwrite(tile, rgb_run, tmp_path):
    """Outputs already there and no --overwrite: exit 1 naming them and --overwrite; nothing replaced."""
    before = tree_state(rgb_run)
    result = _predict(rgb_run.parent / "tile.png", "-o", rgb_run)
    assert_user_error(result, "outputs exist already", "tile_labels.tif", "--overwrite", code=1)
    assert tree_state(rgb_run) == before


def test_overwrite_blocked_by_a_folder(tile, rgb_run, tmp_path):
    """--overwrite where one output name is taken by a folder: refused, the old files left exactly as they were."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(rgb_run, out)
    (out / "tile.geojson").unlink()
    (out / "tile.geojson").mkdir()
    before = tree_state(out)
    result = _predict(rgb_run.parent / "tile.png", "-o", out, "--overwrite")
    assert_user_error(
        result, f"{out / 'tile.geojson'}: an output path is taken by something that is not a file", code=1
    )
    assert tree_state(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_write_outputs_is_all_or_nothing(tile, rgb_run, tmp_path, monkeypatch):
    """A rename that fails half-way through replacing a set: the old set comes back whole, no new file is left."""
    import shutil

    from cryonuseg_hf.model import export

    out = tmp_path / "out"
    shutil.copytree(rgb_run, out)
    before = tree_state(out)
    labels = np.zeros(tile.shape[:2], np.int32)
    labels[10:20, 10:20] = 1
    real_replace, calls = os.replace, []

    def failing_replace(source, target):
        calls.append(target)
        if len(calls) == 8:  # 5 old files moved aside, then the 3rd new file fails
            raise PermissionError(13, "Permission denied", str(target))
        return real_replace(source, target)

    monkeypatch.setattr(export.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        export.write_outputs(tile, labels, out, "tile", overwrite=True)
    assert tree_state(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(f"tile{k}" for k in KINDS)


def test_truncated_png(tile, tmp_path):
    """A PNG cut in half: the file is named as unreadable, the other images go on."""
    good, bad = tmp_path / "in" / "good.png", tmp_path / "in" / "bad.png"
    good.parent.mkdir()
    good.write_bytes(png_bytes(tile))
    bad.write_bytes(png_bytes(tile)[:5000])
    result = _predict(tmp_path / "in", "-o", tmp_path / "out")
    assert_user_error(result, f"failed: {bad}: unreadable PNG (OSError: image file is truncated", code=1)
    assert (tmp_path / "out" / "good_nuclei.csv").is_file() and not (
        tmp_path / "out" / "bad_nuclei.csv"
    ).exists()


@pytest.mark.parametrize("layout", [{}, {"tile": (128, 128)}], ids=["strips", "tiles"])
def test_truncated_tiff(tile, tmp_path, layout):
    """A plain TIFF (strips or tiles) cut at 60 %: named as damaged or truncated, the other images go on (was:
    tifffile's 'cannot be reshaped' without the file)."""
    good, bad = tmp_path / "in" / "good.png", tmp_path / "in" / "bad.tif"
    good.parent.mkdir()
    good.write_bytes(png_bytes(tile))
    data = tiff_bytes(tile, **layout)
    bad.write_bytes(data[: int(len(data) * 0.6)])
    result = _predict(tmp_path / "in", "-o", tmp_path / "out")
    assert_user_error(result, f"failed: {bad}: damaged or truncated TIFF", code=1)
    assert (tmp_path / "out" / "good_nuclei.csv").is_file()


def test_text_file_named_png(tmp_path):
    """A text file named .png: 'not an image'."""
    path = tmp_path / "notes.png"
    path.write_text("not pixels")
    assert_user_error(_predict(path, "-o", tmp_path / "out"), f"{path}: not an image", code=1)


def test_missing_input(tmp_path):
    """An input path that does not exist: named, exit 1."""
    assert_user_error(
        _predict(tmp_path / "nope.png", "-o", tmp_path / "out"), "nope.png: no such file", code=1
    )


def test_same_name_twice(tile, tmp_path):
    """Two inputs with the same name from different folders: the second is refused, its outputs would collide."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tile.png").write_bytes(png_bytes(tile))
    result = _predict(tmp_path / "a" / "tile.png", tmp_path / "b" / "tile.png", "-o", tmp_path / "out")
    assert_user_error(result, "same name as", "would collide", code=1)


def test_output_path_is_a_file(tmp_path):
    """-o naming an existing file: refused before the model loads."""
    (tmp_path / "out").write_text("x")
    assert_user_error(_predict(tmp_path / "x.png", "-o", tmp_path / "out"), "is not a folder")


def test_truncated_safetensors(tile, tmp_path):
    """A checkpoint whose model.safetensors is cut short: exit 2, the file named, no traceback."""
    model = copy_checkpoint(tmp_path / "model")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "tile.png").write_bytes(png_bytes(tile))
    result = _predict(tmp_path / "tile.png", "-o", tmp_path / "out", "--model", model)
    assert_user_error(result, f"{model / 'model.safetensors'}: cannot load the checkpoint", "--model")


def test_demo_with_truncated_safetensors(tmp_path):
    """demo --model with a damaged checkpoint: the same clear error as predict (the library names the file)."""
    model = copy_checkpoint(tmp_path / "model")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = run_cli("demo", "--out", tmp_path / "out", "--model", model, "--backend", "torch")
    assert_user_error(result, f"{model / 'model.safetensors'}: cannot load the checkpoint", "--model")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_corrupt_config_json(tile, tmp_path):
    """A checkpoint whose config.json is not JSON: exit 2, config.json named (was: parser text only)."""
    model = copy_checkpoint(tmp_path / "model")
    (model / "config.json").write_text('{"architectures": [')
    (tmp_path / "tile.png").write_bytes(png_bytes(tile))
    result = _predict(tmp_path / "tile.png", "-o", tmp_path / "out", "--model", model)
    assert_user_error(result, str(model / "config.json"))


def test_model_folder_without_checkpoint(tmp_path):
    """--model naming a folder without config.json."""
    (tmp_path / "empty").mkdir()
    result = _predict(tmp_path / "x.png", "-o", tmp_path / "out", "--model", tmp_path / "empty")
    assert_user_error(result, f"{tmp_path / 'empty'}: not a saved SegFormer checkpoint")


def test_float_tiff_is_refused(tile, tmp_path):
    """A float32 TIFF (0..1 or 0..255?): refused as ambiguous, naming the file and what to give."""
    from cryonuseg_hf.model.images import read_image

    path = tmp_path / "float.tif"
    path.write_bytes(tiff_bytes(tile.astype(np.float32) / 255, photometric="rgb"))
    with pytest.raises(ValueError, match=f"{path}: pixel type float32 is not supported; give uint8"):
        read_image(path)


def test_stack_tiff_is_refused(tile, tmp_path):
    """A TIFF holding a stack of 3 planes: refused, saying to save one RGB plane per file."""
    from cryonuseg_hf.model.images import read_image

    path = tmp_path / "stack.tif"
    path.write_bytes(tiff_bytes(np.stack([tile] * 3), photometric="rgb"))
    with pytest.raises(ValueError, match=f"{path}: TIFF holds a stack .*save one RGB plane per file"):
        read_image(path)


def test_sixteen_bit_tiff_is_scaled(tile, tmp_path):
    """A 16-bit RGB TIFF of a real tile: scaled to the same 8-bit tile (handled, not refused)."""
    from cryonuseg_hf.model.images import read_image

    path = tmp_path / "deep.tif"
    path.write_bytes(tiff_bytes(tile.astype(np.uint16) * 257, photometric="rgb"))
    assert np.array_equal(read_image(path), tile)


def test_image_larger_than_max_pixels(tile, tmp_path):
    """--max-pixels below the image size: refused from the header, naming the limit and how to raise it."""
    path = tmp_path / "tile.png"
    path.write_bytes(png_bytes(tile))
    result = _predict(path, "-o", tmp_path / "out", "--max-pixels", "1000")
    assert_user_error(result, "larger than the limit of 1000 pixels", "--max-pixels", code=1)
    assert tree_state(tmp_path / "out") == {}


def test_cuda_without_a_gpu_is_not_called_a_damaged_checkpoint(tile, tmp_path):
    """--device cuda on a machine without a GPU: the device is named, not the (healthy) checkpoint."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    (tmp_path / "tile.png").write_bytes(png_bytes(tile))
    result = run_cli("predict", tmp_path / "tile.png", "-o", tmp_path / "out", "--device", "cuda")
    assert_user_error(result, "torch sees no CUDA GPU", "--device cpu")
    assert "damaged" not in result.err
