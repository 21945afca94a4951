"""AFF, adversarial full finetuning: the whole network trained with TRADES.

TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
ICML 2019) with beta 6: cross-entropy on clean images plus beta times the KL divergence from the
clean prediction to the prediction on an adversarial example. The inner maximisation is 10 steps
of 2/255 on that KL, started at x + 0.001 N(0, 1), with the model in eval mode. Recipe
(``docs/protocol.md``): SGD lr 0.1, momentum 0.9, weight decay 2e-4, batch 128, 25 epochs, lr x0.1
at epochs 15 and 20.

Dual-BN AFF (``FinetuneConfig.dual_bn``; DynACL, AIR and the RobustSSL benchmark's default):
clean images go through the "normal" BN branch and adversarial ones through the finetuned branch
("pgd"), in the attack (maximising KL(p_pgd(x_adv) || p_normal(x))) and in the loss; the model
saved is the "pgd" branch as a single-BN classifier (``benchmark.schemes.dual_bn``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import eval_mode, project_linf
from benchmark.models import Classifier, ResNet
from benchmark.schemes import SCHEMES, FinetuneConfig, Scheme
from benchmark.schemes.dual_bn import DualBNClassifier, dual_bn_from_encoder, to_single_bn

Logits = Callable[[torch.Tensor], torch.Tensor]


def trades_adversary(
    model: nn.Module,
    x: torch.Tensor,
    cfg: FinetuneConfig,
    clean: Logits | None = None,
    adversarial: Logits | None = None,
) -> torch.Tensor:
    """TRADES' inner maximisation: KL to the clean prediction, start x + 0.001 N(0, 1), eval mode.

    ``clean`` and ``adversarial`` give the logits of clean and perturbed images (both ``model``
    unless given: dual-BN AFF passes its two branches).
    """
    clean = clean or model
    adversarial = adversarial or model
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(clean(x), dim=1)
        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        for _ in range(cfg.attack_steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(adversarial(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = project_linf(x_adv.detach() + cfg.attack_step * grad.sign(), x, cfg.eps)
    return x_adv.detach()


def trades_loss(
    logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """CE(clean logits) + beta KL(clean prediction || adversarial prediction), batch mean."""
    kl = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    return F.cross_entropy(logits, y) + beta * kl


@SCHEMES.register("aff", label="AFF", order=2)
class AdversarialFull(Scheme):
    """TRADES on the whole network (``cfg.trades_beta``; BN statistics update on both batches)."""

    trains_encoder = True
    supports_dual_bn = True

    def paper_config(self, dataset: str) -> FinetuneConfig:
        return FinetuneConfig(self.name, epochs=25, batch_size=128, lr=0.1, milestones=(15, 20))

    def build_model(
        self, encoder: ResNet, branch: str, num_classes: int, cfg: FinetuneConfig
    ) -> nn.Module:
        if cfg.dual_bn:
            return dual_bn_from_encoder(encoder, branch, num_classes)
        return super().build_model(encoder, branch, num_classes, cfg)

    def to_classifier(self, model: nn.Module, cfg: FinetuneConfig) -> Classifier:
        return to_single_bn(model) if isinstance(model, DualBNClassifier) else model

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig
    ) -> torch.Tensor:
        if isinstance(model, DualBNClassifier):
            return self._dual_loss(model, x, y, cfg)
        x_adv = trades_adversary(model, x, cfg)
        model.train()
        logits = model(x)
        return trades_loss(logits, model(x_adv), y, cfg.trades_beta)

    @staticmethod
    def _dual_loss(
        model: DualBNClassifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig
    ) -> torch.Tensor:
        """Clean images through the clean branch, adversarial ones through the kept branch."""

        def clean(a: torch.Tensor) -> torch.Tensor:
            return model(a, model.clean_branch)

        def adversarial(a: torch.Tensor) -> torch.Tensor:
            return model(a, model.branch)

        x_adv = trades_adversary(model, x, cfg, clean, adversarial)
        model.train()
        logits = clean(x)
        return trades_loss(logits, adversarial(x_adv), y, cfg.trades_beta)
