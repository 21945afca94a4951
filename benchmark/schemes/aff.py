"""AFF, adversarial full finetuning: the whole network trained with TRADES.

TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
ICML 2019) with beta 6: cross-entropy on clean images plus beta times the KL divergence from the
clean prediction to the prediction on an adversarial example. The inner maximisation is 10 steps
of 2/255 on that KL, started at x + 0.001 N(0, 1), with the model in eval mode. Recipe
(``docs/protocol.md``): SGD lr 0.1, momentum 0.9, weight decay 2e-4, batch 128, 25 epochs, lr x0.1
at epochs 15 and 20.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import eval_mode, project_linf
from benchmark.models import Classifier
from benchmark.schemes import SCHEMES, FinetuneConfig, Scheme


def trades_adversary(model: nn.Module, x: torch.Tensor, cfg: FinetuneConfig) -> torch.Tensor:
    """TRADES' inner maximisation: KL to the clean prediction, start x + 0.001 N(0, 1), eval mode."""
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        for _ in range(cfg.attack_steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = project_linf(x_adv.detach() + cfg.attack_step * grad.sign(), x, cfg.eps)
    return x_adv.detach()


@SCHEMES.register("aff", label="AFF", order=2)
class AdversarialFull(Scheme):
    """TRADES on the whole network (``cfg.trades_beta``; BN statistics update on both batches)."""

    trains_encoder = True

    def paper_config(self, dataset: str) -> FinetuneConfig:
        return FinetuneConfig(self.name, epochs=25, batch_size=128, lr=0.1, milestones=(15, 20))

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig
    ) -> torch.Tensor:
        x_adv = trades_adversary(model, x, cfg)
        model.train()
        logits = model(x)
        kl = F.kl_div(
            F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
        )
        return F.cross_entropy(logits, y) + cfg.trades_beta * kl
