"""RoCL (Kim et al., NeurIPS 2020) and its A-InfoNCE variants (Yu et al., ECCV 2022).

RoCL attacks one view instance-wise: starting from t1 + U(-eps, eps) it maximises the NT-Xent
between the attacked view and the (fixed) embedding of t2, with the model in eval mode. The loss
contrasts the three views [t1, t2, adv] and adds a small NT-Xent between adv and t2 (the
regulariser). Single BN, no input normalisation, PyTorch's default initialisation.

As released (Kim-Minseon/RoCL ``src/loss.py``, ``src/attack_lib.py``): every similarity of the
contrast, of the attack objective and of the regulariser is ``<z_a, stopgrad(z_b)> / T``
(``detach_contrast``), the 3-view term sums over the positives of each anchor (``sum_positives``),
and the regulariser is a separate train-mode forward of [adv, t2] on the local batch, before the
3-view forward (``reg_forward="separate"``; ``"shared"`` reuses the 3-view embeddings, gathered).

The A-InfoNCE variants (``rocl-ip``, ``rocl-hn``, ``rocl-iphn``) keep views, attack, regulariser
and recipe and replace the three-view contrast by ``a_info_nce`` with the adversarial view as
view 2, with A-InfoNCE's released hard-negative weights (``hn_form="a-infonce"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks import contrastive_pgd, eval_mode
from benchmark.errors import ConfigError, check_choice
from benchmark.models import ContrastiveModel, MLPHead
from methods import register_method
from methods.base import AdversarialParams, Batch, Logs, Method, Recipe
from methods.losses import HN_FORMS, a_info_nce, info_nce
from methods.simclr import projector_dims

ADV = 2  # index of the adversarial view in the stack [t1, t2, adv]
REG_FORWARDS = ("separate", "shared")  # how the regulariser's embeddings are computed
_AINFONCE = "Yu et al., ECCV 2022 (A-InfoNCE on RoCL)"


@register_method("rocl")
class RoCL(Method):
    paper = "Kim et al., NeurIPS 2020"
    summary = "instance-wise attack on one view; 3-view NT-Xent [t1, t2, adv] + 1/256 NT-Xent(adv, t2)"
    branches = ("normal",)
    finetune_branch = "normal"
    normalize_input = False

    @dataclass(frozen=True)
    class Params(AdversarialParams):
        eps: float = 0.0314
        attack_step: float = 0.007
        attack_steps: int = 7
        reg_weight: float = 1 / 256
        # As released (docs/methods.md): the 3-view term sums over both positives of each anchor
        # (x2 against info_nce); the contrast side of every similarity is detached (contrast,
        # attack, regulariser); the regulariser has its own forward of [adv, t2].
        sum_positives: bool = True
        detach_contrast: bool = True
        reg_forward: str = "separate"
        base_lr: float = 0.1  # before RoCL's x15 warm-up multiplier

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("reg_forward", self.reg_forward, REG_FORWARDS)

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        return Recipe(
            epochs=1000, batch_size=512, optimizer="lars", lr=15 * self.params.base_lr,
            momentum=0.9, weight_decay=1e-6, warmup_epochs=10, warmup_start=1 / 15,
            # torchlars over SGD: the learning rate multiplies the momentum buffer, not the update
            optimizer_options=(("eta", 1e-3), ("eps", 1e-8), ("lr_in_momentum", False)),
            source="RoCL paper and Kim-Minseon/RoCL (torchlars LARS over SGD, warm-up x15 over 10 epochs, cosine); "
            "A-InfoNCE (yqy2001/A-InfoNCE) for the variants' learning rates",
        )

    def build_head(self, feature_dim: int) -> nn.Module:
        return MLPHead(projector_dims(feature_dim))

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        self.views = self.simclr_views(image_size, scale=(0.08, 1.0), colour_first=True).to(device)

    def pair_loss(self, z: torch.Tensor) -> torch.Tensor:
        """NT-Xent on z = [x, t2] ([2, B, D]): the attack objective (x the attacked view) and the
        regulariser (x the adversarial view); the release's ``NT_xent(..., 'None')``."""
        return info_nce(z, self.params.temperature, detach_contrast=self.params.detach_contrast)

    def adversarial_view(self, model: ContrastiveModel, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        p = self.params
        with eval_mode(model):
            with torch.no_grad():
                target = model(t2, "normal")  # fixed in eval mode: computed once per step
            (adv,) = contrastive_pgd(
                lambda a: self.pair_loss(torch.stack([model(a[0], "normal"), target])),
                [t1], p.eps, p.attack_step, p.attack_steps,
            )
        return adv

    def contrast(self, z: torch.Tensor) -> torch.Tensor:
        """The 3-view term on z = [t1, t2, adv] ([3, B, D])."""
        p = self.params
        loss = info_nce(z, p.temperature, detach_contrast=p.detach_contrast)
        return loss * (z.shape[0] - 1) if p.sum_positives else loss

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        p = self.params
        x = batch.images
        n = x.shape[0]
        t1, t2 = self.views(x), self.views(x)
        adv = self.adversarial_view(model, t1, t2)  # the attack's negatives are per GPU, as released
        if p.reg_forward == "separate":  # as released: its own train-mode forward, local negatives
            reg = self.pair_loss(model(torch.cat([adv, t2]), "normal").view(2, n, -1))
        # the loss's negatives are global under torchrun
        z = self.gather(model(torch.cat([t1, t2, adv]), "normal").view(3, n, -1))
        contrast = self.contrast(z)
        if p.reg_forward == "shared":
            reg = self.pair_loss(torch.stack([z[ADV], z[1]]))
        loss = contrast + p.reg_weight * reg
        return loss, {"loss": loss.detach(), "contrast": contrast.detach(), "reg": reg.detach()}


class _RoCLAInfoNCE(RoCL):
    """RoCL with the three-view contrast replaced by ``a_info_nce`` (adversarial view 2).

    With the defaults (``detach_contrast``, ``hn_form="a-infonce"``, the sum over positives) the
    term is A-InfoNCE's released ``NT_xent`` / ``NT_xent_HN`` (``Asym-RoCL/loss.py``) for
    ``--stpg_degree ip --adv_weight 2 * adv_weight``; ``hn_form="hcl"`` and
    ``detach_contrast=False`` give the formula of docs/methods.md.
    """

    @dataclass(frozen=True)
    class Params(RoCL.Params):
        ip: float | None = None
        adv_weight: float = 1.0
        hn_beta: float | None = None
        hn_tau_plus: float = 0.1
        hn_form: str = "a-infonce"  # the release's hard-negative weights; "hcl": HCL's formula

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("hn_form", self.hn_form, HN_FORMS)
            if self.ip is not None and not 0 <= self.ip <= 1:
                raise ConfigError(f"ip (lambda) must be in [0, 1], got {self.ip}")
            if self.adv_weight <= 0:
                raise ConfigError(f"adv_weight must be > 0, got {self.adv_weight}")
            if not 0 <= self.hn_tau_plus < 1:
                raise ConfigError(f"hn_tau_plus must be in [0, 1), got {self.hn_tau_plus}")

    def contrast(self, z: torch.Tensor) -> torch.Tensor:
        p = self.params
        hn = (p.hn_beta, p.hn_tau_plus) if p.hn_beta is not None else None
        loss = a_info_nce(
            z, adv=(ADV,), temperature=p.temperature, ip=p.ip, adv_weight=p.adv_weight, hn=hn,
            detach_contrast=p.detach_contrast, hn_form=p.hn_form,
        )
        return loss * (z.shape[0] - 1) if p.sum_positives else loss


@register_method("rocl-ip")
class RoCLIP(_RoCLAInfoNCE):
    paper = _AINFONCE
    summary = "RoCL with the adversarial view as an inferior positive (lambda 0.2, pair weight 0.5)"

    @dataclass(frozen=True)
    class Params(_RoCLAInfoNCE.Params):
        ip: float | None = 0.2
        adv_weight: float = 0.5  # the released loss halves each clean-adversarial pair's weight
        base_lr: float = 0.1


@register_method("rocl-hn")
class RoCLHN(_RoCLAInfoNCE):
    paper = _AINFONCE
    summary = "RoCL with hard-negative reweighting (A-InfoNCE's released weights, beta 1, tau+ 0.12 / 0.1)"
    dataset_params = {"cifar100": {"hn_tau_plus": 0.1, "base_lr": 0.1}}

    @dataclass(frozen=True)
    class Params(_RoCLAInfoNCE.Params):
        hn_beta: float | None = 1.0
        hn_tau_plus: float = 0.12
        base_lr: float = 0.2


@register_method("rocl-iphn")
class RoCLIPHN(_RoCLAInfoNCE):
    paper = _AINFONCE
    summary = "RoCL with inferior positives and hard negatives (lambda 0.2, beta 1, tau+ 0.12 / 0.1)"
    dataset_params = {"cifar100": {"hn_tau_plus": 0.1, "base_lr": 0.2}}

    @dataclass(frozen=True)
    class Params(_RoCLAInfoNCE.Params):
        ip: float | None = 0.2
        adv_weight: float = 0.5
        hn_beta: float | None = 1.0
        hn_tau_plus: float = 0.12
        base_lr: float = 0.3
