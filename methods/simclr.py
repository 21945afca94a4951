"""SimCLR (Chen et al., ICML 2020): the non-adversarial reference, and AdvCL's pseudo-label encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.models import ContrastiveModel, MLPHead
from methods import register_method
from methods.base import Batch, ContrastiveParams, Logs, Method, Recipe
from methods.losses import info_nce


def projector_dims(feature_dim: int, out: int = 128) -> list[int]:
    """feature -> 4x feature -> 128: 512-2048-128 on ResNet-18, scaled with the backbone width."""
    return [feature_dim, 4 * feature_dim, out]


@register_method("simclr")
class SimCLR(Method):
    paper = "Chen et al., ICML 2020"
    summary = "two augmented views, NT-Xent (info_nce); no attack: the standard-training reference"
    branches = ("normal",)
    finetune_branch = "normal"

    @dataclass(frozen=True)
    class Params(ContrastiveParams):
        crop_scale_min: float = 0.08

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        return Recipe(
            epochs=1000, batch_size=512, optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=1e-4,
            warmup_epochs=10, min_lr_ratio=1e-3,
            source="SimCLR CIFAR setting with AdvCL's optimiser (SGD 0.5, cosine); acbench's choice, "
            "no adversarial recipe exists for it",
        )

    def build_head(self, feature_dim: int) -> nn.Module:
        return MLPHead(projector_dims(feature_dim))

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        self.views = self.simclr_views(image_size, scale=(self.params.crop_scale_min, 1.0)).to(device)

    def contrast(self, z: torch.Tensor) -> torch.Tensor:
        """The loss on z = [t1, t2] ([2, B, D]): NT-Xent."""
        return info_nce(z, self.params.temperature)

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        x = batch.images
        t = torch.cat([self.views(x), self.views(x)])
        z = model(t, "normal").view(2, x.shape[0], -1)
        loss = self.contrast(self.gather(z))
        return loss, {"loss": loss.detach()}
