"""DynACL (Luo et al., ICLR 2023): ACL with annealed augmentations, a re-weighted loss and, as
released (PKU-ML/DYNACL ``train_DynACL.py``), a momentum encoder.

Released behaviour (WAVE2.md section 1, ORIGINALS.md section 4), the defaults here:

* **Dynamic augmentation.** Every K epochs the views' strength becomes s = 1 - (e - 1) / E
  (e = 1, K + 1, 2K + 1, ...): RandomResizedCrop scale (1 - 0.9 s, 1), colour jitter magnitudes
  and probability, and grayscale probability times s; flips unchanged; bilinear resize.
* **Dynamic loss weight.** w(e) = min(1 + floor(e / K) (K / E) lambda, 2), lambda = 2/3, and
  L = 1/2 [(2 - w) NT(clean pair, "normal" BN) + w NT(adversarial pair, "pgd" BN)]. The weight
  uses floor(e / K), the strength floor((e - 1) / K): they change one epoch apart (a release quirk,
  ``weight_epoch="aligned"`` uses floor((e - 1) / K) for both).
* **Momentum encoder with the "swap".** The model holds the online encoder (query) and an EMA copy
  (key, momentum 0.99 over parameters only, BN statistics its own). View 1 goes through the online
  encoder, view 2 through the EMA copy, in the attack (eval mode, "pgd" BN, PGD-5 on NT) and in the
  loss (train mode), so each BN sees B images per call and only view 1 back-propagates into weights.
  The EMA update runs after the forwards and before the backward (here: at the end of
  :meth:`training_step`, which the loop follows with the backward).
* **Finetuned branch.** The EMA copy with the "pgd" BN: :meth:`export_state_dict` writes it as the
  encoder (and head) of ``encoder.pt``, the released ``model_encoder_k.pt``.
* **Schedule.** LARS 5.0, 10 warm-up epochs, cosine to 1e-6, the scheduler stepped once per epoch
  with the warm-up factor (e + 1) / 10 for 0-based epoch e: epoch 1 runs at 0.5, epochs 10 and 11
  at 5.0 (WAVE2.md 0.1). ``lr_schedule="iteration"`` uses acbench's per-iteration ACL schedule.
* **Head.** 512-512-BN-ReLU-512-BN-ReLU-512-BN, dual BN; the second and third Linear layers have
  no bias (``models/resnet_multi_bn.py`` ``proj_head``).

K is E / ``stages``: the release's K = 50 at E = 1000 (20 stages); a preset that shortens training
keeps the 20 stages. The release's NT-Xent runs on a CPU copy of the embeddings (same math; not
reproduced).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attacks import contrastive_pgd, eval_mode
from benchmark.errors import ConfigError, check_choice
from benchmark.models import BackboneConfig, ContrastiveModel, MLPHead
from methods import register_method
from methods.base import AdversarialParams, Batch, Logs, Method, Recipe
from methods.losses import info_nce

EMA_ENCODER, EMA_HEAD = "ema_encoder", "ema_head"  # the EMA copy's keys in the model's extra_heads
LR_SCHEDULES = ("released", "iteration")
WEIGHT_EPOCHS = ("released", "aligned")
INTERPOLATIONS = ("bilinear", "bicubic")


def released_recipe(source: str) -> Recipe:
    """DynACL's and AIR's pretraining recipe (CIFAR-10, CIFAR-100 and STL-10 alike): 1000 epochs,
    batch 512, LARS lr 5.0 (eta 1e-3, momentum 0.9, weight decay 1e-6), 10 warm-up epochs, cosine
    to an absolute 1e-6."""
    return Recipe(
        epochs=1000, batch_size=512, optimizer="lars", lr=5.0, momentum=0.9, weight_decay=1e-6,
        warmup_epochs=10, min_lr_ratio=1e-6 / 5.0, optimizer_options=(("eta", 1e-3),), source=source,
    )


def released_head(feature_dim: int, branches: tuple[str, ...]) -> MLPHead:
    """The releases' ``proj_head``: Linear (bias) - BN - ReLU - Linear (no bias) - BN - ReLU -
    Linear (no bias) - BN, every BN branch-selectable."""
    d = feature_dim
    head = MLPHead([d, d, d, d], bn=True, bn_last=True, branches=branches)
    for lin in head.linears[1:]:
        lin.register_parameter("bias", None)
    return head


def stage_period(epochs: int, stages: int) -> int:
    """K, the epochs per augmentation stage: E / stages, at least 1 (the release: 1000 / 20 = 50)."""
    return max(1, round(epochs / stages))


def dynamic_strength(epoch: int, epochs: int, stages: int) -> float:
    """The views' strength in (1-based) ``epoch``: s = 1 - floor((e - 1) / K) K / E, the value the
    release sets at the stage's first epoch e = 1, K + 1, ... (and keeps for the stage)."""
    k = stage_period(epochs, stages)
    return 1.0 - ((epoch - 1) // k) * k / epochs


def dynacl_weight(epoch: int, epochs: int, stages: int, reweight: float, aligned: bool = False) -> float:
    """DynACL's adversarial weight w(e) = min(1 + floor(e / K) (K / E) lambda, 2) (``aligned``:
    floor((e - 1) / K), the strength's stage)."""
    k = stage_period(epochs, stages)
    stage = (epoch - 1) // k if aligned else epoch // k
    return min(1.0 + stage * (k / epochs) * reweight, 2.0)


def epoch_warmup_cosine_lambda(
    steps_per_epoch: int, epochs: int, warmup_epochs: float, min_ratio: float, start_ratio: float = 0.0
) -> Callable[[int], float]:
    """DYN's ``cosine_annealing`` stepped once per epoch, as a per-iteration factor: in 0-based
    epoch e = step // steps_per_epoch,

    .. code-block:: text

        e <  W:  start + (1 - start) (e + 1) / W
        e >= W:  min + (1 - min) (1 + cos(pi (e - W) / (E - W))) / 2

    (the release: start 0, W = 10, so epoch 1 runs at lr / 10 and epochs 10 and 11 at lr)."""

    def factor(step: int) -> float:
        e = step // steps_per_epoch
        if e < warmup_epochs:
            return start_ratio + (1.0 - start_ratio) * (e + 1) / warmup_epochs
        if epochs <= warmup_epochs:
            return 1.0
        t = (e - warmup_epochs) / (epochs - warmup_epochs)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], online: list[torch.Tensor], momentum: float) -> None:
    """``ema = ema * m + online * (1 - m)`` in place (the release's ``_momentum_update_encoder_k``)."""
    torch._foreach_mul_(ema, momentum)
    torch._foreach_add_(ema, torch._foreach_mul(online, 1.0 - momentum))


@register_method("dynacl")
class DynACL(Method):
    paper = "Luo et al., ICLR 2023"
    summary = ("ACL with annealed augmentation strength and adversarial weight; momentum (EMA) encoder "
               "on view 2, finetuned as released")
    branches = ("normal", "pgd")
    finetune_branch = "pgd"

    @dataclass(frozen=True)
    class Params(AdversarialParams):  # temperature 0.5; PGD-5, eps 8/255, step 2/255
        init: str = "kaiming-fan-out"  # the release's ResNet: Kaiming-normal (fan-out) convolutions
        ema: float = 0.99  # momentum of the EMA encoder (parameters only)
        stages: int = 20  # augmentation stages: K = E / stages epochs each (the release: K = 50 of 1000)
        reweight: float = 2 / 3  # lambda (the release's --swap_param)
        weight_epoch: str = "released"  # "released": w uses floor(e / K); "aligned": floor((e - 1) / K)
        lr_schedule: str = "released"  # "released": stepped per epoch, (e + 1) / W warm-up; "iteration": ACL's
        interpolation: str = "bilinear"  # the release's RandomResizedCrop default

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.ema < 1.0:
                raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
            if self.stages < 1:
                raise ConfigError(f"stages must be >= 1, got {self.stages}")
            if not self.reweight >= 0:
                raise ConfigError(f"reweight must be >= 0, got {self.reweight}")
            check_choice("weight_epoch", self.weight_epoch, WEIGHT_EPOCHS)
            check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
            check_choice("interpolation", self.interpolation, INTERPOLATIONS)

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        return released_recipe("DynACL paper and PKU-ML/DYNACL train_DynACL.py (LARS 5.0, 10 warm-up epochs "
                               "stepped per epoch, cosine to 1e-6)")

    def build_head(self, feature_dim: int) -> nn.Module:
        return released_head(feature_dim, self.branches)

    def build_model(self, backbone: BackboneConfig) -> ContrastiveModel:
        """The online encoder and head (``encoder``, ``head``: trained) and their EMA copies
        (``extra_heads``: initialised equal, no gradients; the optimiser skips them as LARS does)."""
        model = super().build_model(backbone)
        ema_encoder, ema_head = self._copy(model.encoder), self._copy(model.head)
        model.extra_heads[EMA_ENCODER] = ema_encoder
        model.extra_heads[EMA_HEAD] = ema_head
        return model

    @staticmethod
    def _copy(module: nn.Module) -> nn.Module:
        out = copy.deepcopy(module)
        for p in out.parameters():
            p.requires_grad_(False)
        return out

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        self.views = self.simclr_views(
            image_size, scale=(0.1, 1.0), interpolation=self.params.interpolation
        ).to(device)

    # ---- the schedules ---------------------------------------------------------------------
    def strength(self, epoch: int, epochs: int) -> float:
        return dynamic_strength(epoch, epochs, self.params.stages)

    def adv_weight(self, epoch: int, epochs: int) -> float:
        p = self.params
        return dynacl_weight(epoch, epochs, p.stages, p.reweight, aligned=p.weight_epoch == "aligned")

    def lr_lambda(self, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
        if self.params.lr_schedule == "iteration":
            return super().lr_lambda(recipe, steps_per_epoch, total_steps)
        return epoch_warmup_cosine_lambda(
            steps_per_epoch, recipe.epochs, recipe.warmup_epochs, recipe.min_lr_ratio, recipe.warmup_start
        )

    def on_epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        return {"strength": self.strength(epoch, epochs), "adv_weight": self.adv_weight(epoch, epochs)}

    # ---- the model -------------------------------------------------------------------------
    @staticmethod
    def ema_modules(model: ContrastiveModel) -> tuple[nn.Module, nn.Module]:
        return model.extra_heads[EMA_ENCODER], model.extra_heads[EMA_HEAD]

    def swap_forward(self, model: ContrastiveModel, x: torch.Tensor, n: int, branch: str) -> torch.Tensor:
        """The release's ``swap=True`` forward of a [2n, ...] stack of two views: view 1 (rows
        ``:n``) through the online encoder, view 2 through the EMA copy; L2-normalised [2n, D]."""
        encoder, head = self.ema_modules(model)
        z1 = model(x[:n], branch)
        z2 = F.normalize(head(encoder(x[n:], branch), branch), dim=-1)
        return torch.cat([z1, z2])

    def contrast(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """NT-Xent on a [2n, D] stack of two views' embeddings: the attack objective, and each
        half of the loss (global negatives under torchrun)."""
        return info_nce(self.gather(z.view(2, n, -1)), self.params.temperature)

    def loss(self, clean: torch.Tensor, adv: torch.Tensor, n: int, w: float) -> tuple[torch.Tensor, ...]:
        """(loss, clean NT, adversarial NT): 1/2 [(2 - w) NT(clean) + w NT(adv)]."""
        clean_loss, adv_loss = self.contrast(clean, n), self.contrast(adv, n)
        return 0.5 * ((2.0 - w) * clean_loss + w * adv_loss), clean_loss, adv_loss

    def adversarial_views(self, model: ContrastiveModel, t: torch.Tensor, n: int) -> torch.Tensor:
        p = self.params
        with eval_mode(model):
            (adv,) = contrastive_pgd(
                lambda a: self.contrast(self.swap_forward(model, a[0], n, "pgd"), n),
                [t], p.eps, p.attack_step, p.attack_steps,
            )
        return adv

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        x = batch.images
        n = x.shape[0]
        self.views.strength = self.strength(batch.epoch, batch.epochs)
        t = torch.cat([self.views(x), self.views(x)])  # both views attacked jointly
        adv = self.adversarial_views(model, t, n)
        z_adv = self.swap_forward(model, adv, n, "pgd")  # the release's order: adversarial first
        z = self.swap_forward(model, t, n, "normal")
        encoder, head = self.ema_modules(model)
        ema_update(
            [*encoder.parameters(), *head.parameters()],
            [*model.encoder.parameters(), *model.head.parameters()],
            self.params.ema,
        )
        w = self.adv_weight(batch.epoch, batch.epochs)
        loss, clean_loss, adv_loss = self.loss(z, z_adv, n, w)
        return loss, {"loss": loss.detach(), "clean": clean_loss.detach(), "adv": adv_loss.detach()}

    def export_state_dict(self, model: ContrastiveModel) -> dict[str, torch.Tensor]:
        """The EMA copy as ``encoder.*`` and ``head.*`` (the release finetunes encoder_k)."""
        encoder, head = self.ema_modules(model)
        return {
            **{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
            **{f"head.{k}": v for k, v in head.state_dict().items()},
        }
