"""ACL (Jiang et al., NeurIPS 2020), the "ACL (DS)" variant: dual BN, adversarial pair of views.

Both SimCLR views are perturbed jointly through the "pgd" BN branch (model in eval mode) to
maximise their NT-Xent; the loss averages the clean pair's NT-Xent ("normal" branch) and the
adversarial pair's ("pgd" branch). Finetuning uses the "pgd" branch. The backbone's convolutions
are initialised as released (``init="kaiming-fan-out"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks import contrastive_pgd, eval_mode
from benchmark.models import ContrastiveModel, MLPHead
from methods import register_method
from methods.base import AdversarialParams, Batch, Logs, Method, Recipe
from methods.losses import info_nce


@register_method("acl")
class ACL(Method):
    paper = "Jiang et al., NeurIPS 2020"
    summary = "dual-BN encoder; NT-Xent on a clean pair + on a jointly attacked pair (ACL-DS)"
    branches = ("normal", "pgd")
    finetune_branch = "pgd"

    @dataclass(frozen=True)
    class Params(AdversarialParams):  # temperature 0.5; PGD-5, eps 8/255, step 2/255
        init: str = "kaiming-fan-out"  # the release's ResNet: Kaiming-normal (fan-out) convolutions

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        return Recipe(
            epochs=1000, batch_size=512, optimizer="lars", lr=5.0, momentum=0.9, weight_decay=1e-6,
            warmup_epochs=10, min_lr_ratio=1e-6 / 5.0, optimizer_options=(("eta", 1e-3),),
            source="ACL paper and VITA-Group/Adversarial-Contrastive-Learning (LARS 5.0, warm-up 10, cosine to 1e-6)",
        )

    def build_head(self, feature_dim: int) -> nn.Module:
        d = feature_dim  # 512-512-BN-ReLU-512-512-BN-ReLU-512-512-BN with dual BN
        return MLPHead([d, d, d, d], bn=True, bn_last=True, branches=self.branches)

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        self.views = self.simclr_views(image_size, scale=(0.1, 1.0), interpolation="bicubic").to(device)

    def contrast(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """NT-Xent on a [2n, D] stack of two views' embeddings (global negatives, in the attack
        too, under torchrun): the attack objective, and each half of the loss."""
        return info_nce(self.gather(z.view(2, n, -1)), self.params.temperature)

    def adversarial_views(self, model: ContrastiveModel, t: torch.Tensor, n: int) -> torch.Tensor:
        p = self.params
        with eval_mode(model):
            (adv,) = contrastive_pgd(
                lambda a: self.contrast(model(a[0], "pgd"), n), [t], p.eps, p.attack_step, p.attack_steps
            )
        return adv

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        x = batch.images
        n = x.shape[0]
        t = torch.cat([self.views(x), self.views(x)])  # both views attacked jointly
        adv = self.adversarial_views(model, t, n)
        clean_loss = self.contrast(model(t, "normal"), n)
        adv_loss = self.contrast(model(adv, "pgd"), n)
        loss = 0.5 * (clean_loss + adv_loss)
        return loss, {"loss": loss.detach(), "clean": clean_loss.detach(), "adv": adv_loss.detach()}
