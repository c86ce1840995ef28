"""The SegFormer decode head with its fuse layer folded into the stage projections: the same function, less work.

SegFormer's all-MLP head projects each encoder stage to ``D`` channels (a linear layer), upsamples the four maps
to a quarter of the input (bilinear), concatenates them (``4 D`` channels) and fuses them with a 1x1 convolution
back to ``D`` channels, then batch norm, ReLU and the classifier. A 1x1 convolution and bilinear upsampling are both
linear and act on different axes (channels, positions), so they commute, and batch norm in eval mode is an affine
map per channel: everything before the ReLU folds into one ``c_i -> D`` linear map per stage, applied at the
stage's own resolution, whose four upsampled results are summed. For the b0 model at a 768 px input that removes
the fuse convolution, 19 of the forward pass's 30 GFLOP (``results/model_flops.md``), and the concatenation.

The folded head computes the stock head's logits up to float rounding (the weights are folded in float64); the
ONNX export of the folded model is checked against the stock torch model like any export
(:mod:`cryonuseg_hf.model.onnx_backend`). The checkpoint on disk is never changed: the Hub widget and the stock
pipeline keep the stock head.

torch is imported inside the function that needs it.
"""

from __future__ import annotations

HEADS = ("stock", "folded")
"""Decode heads the inference graph can use: the checkpoint's own, or :func:`fold_decode_head`'s."""


def fold_decode_head(head):
    """A ``torch.nn.Module`` computing what ``head`` (a ``SegformerDecodeHead`` in eval mode) computes.

    Args:
        head: the stock decode head; its weights are read, not changed.

    Returns:
        a module with the same ``forward(encoder_hidden_states)`` -> logits at a quarter of the input.
    """
    import torch
    import torch.nn.functional as F

    stages = len(head.linear_projections)
    channels = head.config.decoder_hidden_size
    fuse = head.linear_fuse.weight[:, :, 0, 0].double()  # (D, stages * D), stage maps concatenated last first
    norm = head.batch_norm
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    bias = norm.bias.double() - norm.running_mean.double() * scale
    weights = []
    for index, projection in enumerate(head.linear_projections):
        part = fuse[:, (stages - 1 - index) * channels : (stages - index) * channels]
        weights.append(scale[:, None] * (part @ projection.proj.weight.double()))
        # bilinear weights sum to 1, so a projection's bias passes the upsampling unchanged
        bias = bias + scale * (part @ projection.proj.bias.double())

    class FoldedDecodeHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.projections = torch.nn.ModuleList()
            for weight in weights:
                conv = torch.nn.Conv2d(weight.shape[1], channels, kernel_size=1, bias=False)
                conv.weight.data = weight.float()[:, :, None, None].contiguous()
                self.projections.append(conv)
            self.register_buffer("bias", bias.float().view(1, -1, 1, 1))
            self.classifier = head.classifier

        def forward(self, encoder_hidden_states, **kwargs):
            size = encoder_hidden_states[0].shape[2:]
            total = self.projections[0](encoder_hidden_states[0]) + self.bias
            for hidden, projection in zip(encoder_hidden_states[1:], self.projections[1:], strict=True):
                total = total + F.interpolate(
                    projection(hidden), size=size, mode="bilinear", align_corners=False
                )
            return self.classifier(torch.relu(total))

    return FoldedDecodeHead().to(head.linear_fuse.weight.device).eval()


def with_head(module, head: str):
    """A probability module (:func:`cryonuseg_hf.model.segformer.probability_module`) with the decode head ``head``.

    ``"stock"`` returns ``module`` itself; ``"folded"`` a shallow copy whose SegFormer's decode head is folded
    (the encoder's parameters are shared, not copied, and ``module`` is left as it was).
    """
    import copy

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "stock":
        return module
    segformer = copy.copy(module.model)  # copies of an nn.Module share its parameters
    segformer._modules = {**module.model._modules, "decode_head": fold_decode_head(module.model.decode_head)}
    changed = copy.copy(module)
    changed._modules = {**module._modules, "model": segformer}
    return changed
