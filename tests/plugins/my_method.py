"""A complete method in one file: SimCLR whose first view is attacked by PGD on the same loss.

    PYTHONPATH=. acbench --plugin tests.plugins.my_method run --method adv-simclr --preset smoke
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks import contrastive_pgd, eval_mode
from benchmark.augment import SimCLRViews
from benchmark.models import ContrastiveModel, MLPHead
from methods import register_method
from methods.base import AdversarialParams, Batch, Logs, Method, Recipe
from methods.losses import info_nce


@register_method("adv-simclr")
class AdvSimCLR(Method):
    paper = "acbench's plugin example"
    summary = "NT-Xent between a PGD-attacked view and a clean view (the attack maximises it)"

    @dataclass(frozen=True)
    class Params(AdversarialParams):  # temperature, eps, attack_step, attack_steps: validated
        crop_scale_min: float = 0.08

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        return Recipe(epochs=500, batch_size=512, optimizer="sgd", lr=0.5, weight_decay=1e-4)

    def build_head(self, feature_dim: int) -> nn.Module:
        return MLPHead([feature_dim, 4 * feature_dim, 128])

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        self.views = SimCLRViews(image_size, scale=(self.params.crop_scale_min, 1.0)).to(device)

    def contrast(self, model: ContrastiveModel, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z = torch.stack([model(x1, "normal"), model(x2, "normal")])  # [2 views, batch, dim]
        return info_nce(self.gather(z), self.params.temperature)  # global negatives under torchrun

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        p = self.params
        t1, t2 = self.views(batch.images), self.views(batch.images)
        with eval_mode(model):  # the attack leaves the BN statistics alone
            (adv,) = contrastive_pgd(
                lambda a: self.contrast(model, a[0], t2), [t1], p.eps, p.attack_step, p.attack_steps
            )
        loss = self.contrast(model, adv, t2)
        return loss, {"loss": loss.detach()}
