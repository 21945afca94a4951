"""The evaluation form of a finetuned classifier: every BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is an affine map per channel, ``y = s * (x - mean) + beta`` with
``s = gamma / sqrt(var + eps)``, so ``BN(conv(x))`` equals one convolution with weights
``s * W`` and bias ``beta - s * mean``. :func:`fold_batchnorm` builds that network from a
:class:`benchmark.models.Classifier`: the same function of the input (outputs and input gradients
agree to float rounding, ~1e-6 relative), with a third fewer operations per pass, which is what the
attacks spend their time on (AutoAttack's APGD/FAB gradients and Square's forwards). The folded
network has no BatchNorm, so train/eval mode does not change it; it is built for evaluation only
and never trained or saved (the record's checkpoint stays the finetuned ``classifier.pt``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models import BasicBlock, Classifier, PlainBatchNorm

INFERENCE_FORM = "bn-folded"  # recorded in the evaluate stage's config (part of its key)


def fold_conv_bn(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """One convolution computing ``norm(conv(x))`` for an eval-mode BatchNorm ``norm``
    (a :class:`PlainBatchNorm` or ``nn.BatchNorm2d``) that tracks running statistics."""
    bn = norm.bn if isinstance(norm, PlainBatchNorm) else norm
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise TypeError(f"cannot fold {type(norm).__name__}: "
                        "a BatchNorm2d with running statistics is needed")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.affine:
            shift = shift + bn.bias
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding, conv.dilation, conv.groups, bias=True,
                        padding_mode=conv.padding_mode)
        out = out.to(device=conv.weight.device, dtype=conv.weight.dtype)
        out.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        out.bias.copy_(shift)
    return out


class _FoldedBlock(nn.Module):
    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1 = fold_conv_bn(block.conv1, block.bn1)
        self.conv2 = fold_conv_bn(block.conv2, block.bn2)
        self.shortcut = fold_conv_bn(block.shortcut_conv, block.shortcut_bn) if block.has_shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class FoldedClassifier(nn.Module):
    """A :class:`Classifier` with its BatchNorms folded: [0, 1] images -> logits, evaluation only."""

    def __init__(self, model: Classifier):
        super().__init__()
        enc = model.encoder
        self.normalize = enc.normalize
        self.conv1 = fold_conv_bn(enc.conv1, enc.bn1)
        self.maxpool = enc.maxpool
        self.blocks = nn.ModuleList(_FoldedBlock(b) for b in enc.blocks)
        self.fc = model.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(self.normalize(x)))
        if self.maxpool is not None:
            out = self.maxpool(out)
        for block in self.blocks:
            out = block(out)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def fold_batchnorm(model: Classifier) -> FoldedClassifier:
    """The evaluation form of ``model`` (see the module docstring), in eval mode, on its device,
    its parameters not requiring gradients (attacks need input gradients only)."""
    folded = FoldedClassifier(model.eval()).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
