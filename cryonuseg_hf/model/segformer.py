"""The SegFormer: configs b0..b5 built from ``SegformerConfig``, its image processor, save/load, inference.

Every model here is a stock ``SegformerForSemanticSegmentation`` with three classes (see
:mod:`cryonuseg_hf.data.targets`), so the Hub widget and ``pipeline("image-segmentation")`` run it unchanged. Two
extra keys ride in ``config.json``: ``cryonuseg_input_scale`` (the tile is upsampled by this factor before the
encoder, because SegFormer predicts at a quarter of its input size) and ``cryonuseg_postprocess`` (the tuned
parameters of :mod:`cryonuseg_hf.model.postprocess`). The saved image processor resizes to ``512 * input_scale``, so
the widget and the pipeline upsample a 512x512 tile too.

torch and transformers are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryonuseg_hf.core.tiles import TILE_SIZE
from cryonuseg_hf.data.targets import CLASS_NAMES
from cryonuseg_hf.model.postprocess import CONFIG_KEY, INPUT_SCALE_KEY, PostprocessParams

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
"""ImageNet statistics, as in the published SegFormer checkpoints, so ``--init`` weights see what they expect."""

# Encoder sizes of the SegFormer paper (MiT-b0..b5); "tiny" exists for tests only.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 4],
                 decoder_hidden_size=32),
    "b0": dict(depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256),
    "b1": dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=256),
    "b2": dict(depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768),
    "b3": dict(depths=[3, 4, 18, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768),
    "b4": dict(depths=[3, 8, 27, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768),
    "b5": dict(depths=[3, 6, 40, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768),
}  # fmt: skip


def _label_maps(names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }


def _check_first_stride(first_stride: int) -> None:
    if first_stride not in (1, 2, 4):
        raise ValueError(f"first_stride must be 1, 2 or 4, got {first_stride}")


def segformer_config(
    variant: str = "b0",
    input_scale: float = 2.0,
    postprocess: PostprocessParams | None = None,
    first_stride: int = 4,
    class_names: Sequence[str] = CLASS_NAMES,
):
    """A ``SegformerConfig`` for one of ``VARIANTS`` with the CryoNuSeg classes (``class_names``) and extra keys.

    ``first_stride`` is the stride of the first patch embedding: 4 as in the paper (logits at a quarter of the
    input), or 2 (logits at half the input; every stage then sees twice as many tokens per side). It is a
    stock config field (``strides``), so the stock pipeline runs either.
    """
    from transformers import SegformerConfig

    if variant not in VARIANTS:
        raise ValueError(f"unknown SegFormer variant {variant!r}; choose one of {sorted(VARIANTS)}")
    _check_first_stride(first_stride)
    config = SegformerConfig(
        **VARIANTS[variant],
        **_label_maps(class_names),
        semantic_loss_ignore_index=255,
        strides=[first_stride, 2, 2, 2],
    )
    _set_extras(config, input_scale, postprocess)
    return config


def _set_extras(config, input_scale: float, postprocess: PostprocessParams | None) -> None:
    if input_scale <= 0:
        raise ValueError(f"input_scale must be > 0, got {input_scale}")
    setattr(config, INPUT_SCALE_KEY, float(input_scale))
    setattr(config, CONFIG_KEY, (postprocess or PostprocessParams()).to_dict())


def image_processor(input_scale: float = 2.0):
    """The image processor: resize a 512x512 tile to ``512 * input_scale``, ImageNet normalisation."""
    from transformers import SegformerImageProcessorPil

    side = int(round(TILE_SIZE * input_scale))
    return SegformerImageProcessorPil(
        do_resize=True,
        size={"height": side, "width": side},
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_reduce_labels=False,
    )


def variant_of(config: Any) -> str | None:
    """The name in ``VARIANTS`` whose encoder (depths and widths) a ``SegformerConfig`` has (None if none).

    Only the encoder counts: an encoder-only start point (such as the Hub's MiT checkpoints) has no trained decoder,
    and its config's decoder size need not be the one ``VARIANTS`` gives.

    >>> variant_of(segformer_config("b1"))
    'b1'
    """
    for name, sizes in VARIANTS.items():
        if all(list(getattr(config, key, ())) == sizes[key] for key in ("depths", "hidden_sizes")):
            return name
    return None


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_start_point(init: str | Path) -> None:
    """Raise ValueError unless ``init`` is a SegFormer checkpoint (a folder, or a Hub id the cache or the Hub has),
    naming what is wrong; cheap (the config and the weights' header are read), so training checks it first.
    """
    import json

    path = Path(init)
    if not path.exists() and (path.is_absolute() or str(init).startswith(".") or str(init).count("/") > 1):
        raise ValueError(f"--init {init}: no such folder")
    if not path.exists():  # a Hub id
        from transformers import SegformerConfig

        try:
            SegformerConfig.from_pretrained(str(init))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"--init {init}: no such folder, and no SegFormer of that id on the Hub or in its cache "
                f"({str(error).splitlines()[0]})"
            ) from None
        return
    where = (
        "a start point is a folder `pretrain` or `train --final` wrote (config.json and model.safetensors)"
    )
    if not (path / "config.json").is_file():
        raise ValueError(f"--init {init}: no config.json there; {where}")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise ValueError(f"{path / 'config.json'}: not a JSON object; {where}") from None
    if model_type != "segformer":
        raise ValueError(f"--init {init}: a {model_type!r} checkpoint, not a SegFormer; {where}")
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise ValueError(f"--init {init}: no {' or '.join(WEIGHT_FILES)} there; {where}")
    if weights[0].suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(weights[0], framework="pt") as file:
                file.keys()
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{weights[0]}: damaged or cut short ({error})") from None


def build_model(
    variant: str | None = None,
    input_scale: float = 2.0,
    init: str | Path | None = None,
    seed: int = 0,
    first_stride: int = 4,
    class_names: Sequence[str] = CLASS_NAMES,
):
    """A fresh SegFormer (weights drawn with ``seed``), or one fine-tuned from ``init`` (Hub id or folder).

    ``variant`` is a key of ``VARIANTS``: b0 when not given for a fresh model. With ``init``, every weight whose
    shape fits comes from the pretrained model (a model pretrained with the three CryoNuSeg classes keeps its
    decode head too); the variant is the init's, and a ``variant`` that names another is refused, so what a
    training record says it trained is what it trained. ``first_stride`` is applied to the init (the first patch
    embedding's weights fit any stride, so a start point pretrained at stride 4 can be fine-tuned at stride 2).
    ``class_names`` are the classes the model outputs; where they extend the init's classes (the centre class
    after the three), each new class starts as a copy of the interior class's classifier row, so the model
    starts from the init's outputs and learns the new class apart from the interior.
    """
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    if init is None:
        return SegformerForSemanticSegmentation(
            segformer_config(variant or "b0", input_scale, first_stride=first_stride, class_names=class_names)
        )
    _check_first_stride(first_stride)
    config = SegformerConfig.from_pretrained(str(init))
    found = variant_of(config)
    if variant is not None and found != variant:
        raise ValueError(
            f"--init {init} is SegFormer-{found or '? (sizes of no known variant)'}, not the --variant {variant} "
            "asked for; pass the init's variant"
        )
    known = tuple(config.id2label[i] for i in range(config.num_labels))
    extends = len(class_names) > len(known) and tuple(class_names[: len(known)]) == known == CLASS_NAMES
    config.update({**_label_maps(known if extends else class_names), "semantic_loss_ignore_index": 255})
    config.strides = [first_stride, *config.strides[1:]]
    model = SegformerForSemanticSegmentation.from_pretrained(
        str(init), config=config, ignore_mismatched_sizes=True, dtype=torch.float32
    )
    if extends:
        _add_classes(model, class_names)
    _set_extras(model.config, input_scale, None)
    return model


def _add_classes(model, class_names: Sequence[str]) -> None:
    """Widen the classifier of ``model`` to ``class_names``; each new row a copy of the interior class's."""
    import torch

    old = model.decode_head.classifier
    new = torch.nn.Conv2d(old.in_channels, len(class_names), kernel_size=1)
    with torch.no_grad():
        rows = list(range(old.out_channels)) + [1] * (len(class_names) - old.out_channels)
        new.weight.copy_(old.weight[rows])
        new.bias.copy_(old.bias[rows])
    model.decode_head.classifier = new
    model.config.update(_label_maps(class_names))


def save_checkpoint(
    model, out_dir: str | Path, postprocess: PostprocessParams | None = None, fp16: bool = True
) -> Path:
    """``save_pretrained`` (safetensors) plus the matching image processor; the model itself is not changed.

    Args:
        model: a ``SegformerForSemanticSegmentation`` carrying ``cryonuseg_input_scale`` in its config.
        out_dir: folder to write (created).
        postprocess: tuned parameters to store in ``config.json`` (default: keep what the config holds).
        fp16: store half-precision weights (half the size); loading with ``dtype=torch.float32`` restores fp32.
    """
    import copy
    import json

    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    to_save = copy.deepcopy(model).to("cpu")
    if fp16:
        to_save = to_save.to(torch.float16)
    if postprocess is not None:
        setattr(to_save.config, CONFIG_KEY, postprocess.to_dict())
    to_save.save_pretrained(out_dir, safe_serialization=True)
    if fp16:
        # Half-precision storage only: without this, from_pretrained and the stock pipeline would run the
        # model in float16, which is slow or unsupported on CPUs. Weights are upcast on loading.
        config_path = out_dir / "config.json"
        values = json.loads(config_path.read_text())
        values["dtype"] = "float32"
        config_path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    image_processor(getattr(to_save.config, INPUT_SCALE_KEY, 1.0)).save_pretrained(out_dir)
    return out_dir


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """``(model in eval mode, float32, on device; its config)`` from a saved folder, offline."""
    import torch
    from transformers import SegformerForSemanticSegmentation

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a saved SegFormer checkpoint (no config.json)")
    model = SegformerForSemanticSegmentation.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, model.config


def probability_module(
    model, input_scale: float, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD
):
    """The inference graph: a ``torch.nn.Module`` (N, 3, H, W) float RGB 0..255 -> (probabilities, logits).

    The input is normalised with ``mean``/``std`` (fractions of 255, as the image processor stores them) and
    upsampled by ``input_scale``; the probabilities are the softmax of the logits upsampled (bilinear) back to
    H x W; the logits are the SegFormer's (at a quarter of the upsampled input with the paper's first stride).
    This one module runs the torch backend of :mod:`cryonuseg_hf.model.predict`, through which the CV makes its
    held-out predictions, and is what the ONNX file holds, so all of them compute one graph.
    """
    import torch
    import torch.nn.functional as F

    class ProbabilityModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

        def forward(self, images):
            x = (images - self.mean) / self.std
            if input_scale != 1.0:
                x = F.interpolate(x, scale_factor=input_scale, mode="bilinear", align_corners=False)
            logits = self.model(pixel_values=x).logits
            upsampled = F.interpolate(logits, size=images.shape[2:], mode="bilinear", align_corners=False)
            return upsampled.softmax(1), logits

    device = next(model.parameters()).device
    return ProbabilityModel().to(device).eval()


def image_statistics(model_path: Path) -> tuple[list[float], list[float]]:
    """(mean, std) of the checkpoint's image processor (``preprocessor_config.json``), ImageNet if absent."""
    import json

    config_path = model_path / "preprocessor_config.json"
    if not config_path.is_file():
        logger.warning("%s: no preprocessor_config.json; using ImageNet mean and std", model_path)
        return list(IMAGE_MEAN), list(IMAGE_STD)
    config = json.loads(config_path.read_text())
    if not config.get("do_normalize", True):
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return list(config.get("image_mean", IMAGE_MEAN)), list(config.get("image_std", IMAGE_STD))


def load_torch_module(model_path: Path, device: str = "cpu"):
    """``(probability_module on device, input_scale)`` for a checkpoint folder, in float32 and eval mode."""
    from cryonuseg_hf.model.postprocess import params_from_config

    model, config = load_checkpoint(model_path, device=device)
    _, input_scale = params_from_config(config)
    mean, std = image_statistics(model_path)
    return probability_module(model, input_scale, mean, std).to(device), input_scale


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"cuda"`` for a ``--device`` value (``"auto"`` picks CUDA when torch sees a GPU)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
    return device
