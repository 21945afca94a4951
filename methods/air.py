"""ACL-AIR and DynACL-AIR (Xu et al., NeurIPS 2023): ACL (or the AIR release's DynACL) plus the
standard and adversarial invariance regularisers, as released (GodXuxilie/Enhancing_ACL_via_AIR,
``AIR.py``, ``pretraining.py`` with ``--ACL_DS``; ``--DynAug`` for DynACL-AIR).

Released behaviour (WAVE2.md section 3, ORIGINALS.md section 5), the defaults here:

* **Views.** Two SimCLR views t1 x, t2 x (bicubic RandomResizedCrop, scale (1 - 0.9 s, 1)) and the
  un-augmented image x_o. The views are attacked jointly (PGD-5, eps 8/255, step eps / 4, uniform
  start, eval mode, "pgd" BN, ascent on NT); then three train-mode forwards: the adversarial pair
  ("pgd"), the clean pair ("normal") and x_o ("normal", its own BN batch).
* **Loss** (``AIR.py:100``): L = (1 - w) NT_nat + (1 + w) NT_adv + lambda1 SIR + lambda2 AIR with
  lambda1 = lambda2 = 0.5 (the released "IR" models; ``pretraining.py`` defaults). See
  :func:`invariance_regularisers` for SIR and AIR, including the release's ``kl_div`` convention.
* **DynAug** (``dynacl-air``): s = 1 - floor((e - 1) / K) K / E and w = (2/3)(1 - s), K = E / 20
  (the release: K = 50 at E = 1000). ``acl-air``: s = 1, w = 0. No momentum encoder.
* **Schedule.** LARS 5.0, per-iteration warm-up over 10 epochs then cosine to 1e-6, with
  ``scheduler.step()`` *before* each update: update i runs at the factor of step i + 1 (acbench's
  ACL schedule, ``lr_schedule="iteration"``, runs update i at step i's).
* **Finetuned branch.** "pgd". Head: the releases' ``proj_head`` (second and third Linear without bias).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ConfigError, check_choice
from benchmark.models import ContrastiveModel
from methods import register_method
from methods.acl import ACL
from methods.base import AdversarialParams, Batch, Logs, Recipe
from methods.dynacl import (
    INTERPOLATIONS,
    LR_SCHEDULES,
    dynamic_strength,
    released_head,
    released_recipe,
)
from methods.losses import info_nce

KL_FORMS = ("released", "kl")


def _diag_softmax(a: torch.Tensor, b: torch.Tensor, temperature: float, log: bool = False) -> torch.Tensor:
    """softmax over the batch index m of <a_m, b_m> / T (the diagonal of a b^T / T)."""
    s = (a * b).sum(-1) / temperature
    return F.log_softmax(s, -1) if log else F.softmax(s, -1)


def invariance_regularisers(
    zi: torch.Tensor,
    zj: torch.Tensor,
    zo: torch.Tensor,
    zi_adv: torch.Tensor,
    zj_adv: torch.Tensor,
    temperature: float = 0.5,
    form: str = "released",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(SIR, AIR) of L2-normalised [N, D] embeddings: views i, j (clean, "normal" BN), x_o
    ("normal") and the adversarial views (``"pgd"``). With p_v(m) = softmax_m(<z_v^m, z_o^m> / T)
    and q_v(m) = softmax_m(<z~_v^m, z_v^m> / T) softmax_m(<z~_v^m, z_o^m> / T) (not renormalised):

    * ``form="released"`` (``AIR.py``: ``F.kl_div(p_i, log p_j, log_target=True, reduction="sum")``,
      whose first argument is a probability where kl_div expects a log-probability):
      SIR = sum_m p_j (log p_j - p_i), AIR = sum_m q_j (log q_j - q_i);
    * ``form="kl"``: the divergences the paper writes, SIR = KL(p_j || p_i) = sum_m p_j (log p_j -
      log p_i), AIR = sum_m q_j (log q_j - log q_i).
    """
    check_choice("form", form, KL_FORMS)
    T = temperature
    log_pj = _diag_softmax(zj, zo, T, log=True)
    qi = _diag_softmax(zi_adv, zo, T) * _diag_softmax(zi_adv, zi, T)
    qj = _diag_softmax(zj_adv, zo, T) * _diag_softmax(zj_adv, zj, T)
    if form == "released":
        pi_term, qi_term = _diag_softmax(zi, zo, T), qi
    else:
        pi_term, qi_term = _diag_softmax(zi, zo, T, log=True), qi.log()
    sir = (log_pj.exp() * (log_pj - pi_term)).sum()
    log_qj = qj.log()
    air = (log_qj.exp() * (log_qj - qi_term)).sum()
    return sir, air


class DynAugACL(ACL):  # ACL's branches, attack objective (contrast) and joint PGD on both views
    """ACL as the AIR and RCS releases build it: their projection head, crops of scale (0.1, 1)
    (``interpolation``), and with :attr:`dynamic` (the releases' ``--DynAug``) DynACL's annealed view
    strength s and adversarial weight w = reweight (1 - s). A subclass's ``Params`` has ``stages``,
    ``reweight`` and ``interpolation``."""

    dynamic: ClassVar[bool] = False

    def build_head(self, feature_dim: int) -> nn.Module:
        return released_head(feature_dim, self.branches)

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        self.views = self.simclr_views(
            image_size, scale=(0.1, 1.0), interpolation=self.params.interpolation
        ).to(device)

    def strength(self, epoch: int, epochs: int) -> float:
        return dynamic_strength(epoch, epochs, self.params.stages) if self.dynamic else 1.0

    def adv_weight(self, epoch: int, epochs: int) -> float:
        """w = reweight (1 - s) with DynAug, else 0 (AIR ``pretraining.py:343-346``)."""
        return self.params.reweight * (1.0 - self.strength(epoch, epochs)) if self.dynamic else 0.0

    def on_epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        return {"strength": self.strength(epoch, epochs), "adv_weight": self.adv_weight(epoch, epochs)}


@register_method("acl-air")
class ACLAIR(DynAugACL):
    paper = "Xu et al., NeurIPS 2023"
    summary = "ACL + standard and adversarial invariance regularisers (SIR + AIR) on the un-augmented image"
    dynamic: ClassVar[bool] = False  # the release's --DynAug
    loss_scale: ClassVar[float] = 2.0  # (1 - w) NT + (1 + w) NT against ACL's (NT + NT) / 2

    @dataclass(frozen=True)
    class Params(AdversarialParams):  # temperature 0.5; PGD-5, eps 8/255, step eps/4 = 2/255
        init: str = "kaiming-fan-out"  # the release's ResNet: Kaiming-normal (fan-out) convolutions
        lambda1: float = 0.5  # SIR weight
        lambda2: float = 0.5  # AIR weight
        stages: int = 20  # DynAug stages: K = E / stages epochs each (the release: K = 50 of 1000)
        reweight: float = 2 / 3  # DynAug: w = reweight (1 - s)
        kl_form: str = "released"  # "released": AIR.py's kl_div convention; "kl": KL divergences
        lr_schedule: str = "released"  # "released": scheduler stepped before each update; "iteration": ACL's
        interpolation: str = "bicubic"

        def __post_init__(self) -> None:
            super().__post_init__()
            for name in ("lambda1", "lambda2", "reweight"):
                if not getattr(self, name) >= 0:
                    raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
            if self.stages < 1:
                raise ConfigError(f"stages must be >= 1, got {self.stages}")
            check_choice("kl_form", self.kl_form, KL_FORMS)
            check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
            check_choice("interpolation", self.interpolation, INTERPOLATIONS)

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        return released_recipe("AIR paper and GodXuxilie/Enhancing_ACL_via_AIR pretraining.py (LARS 5.0, "
                               "10 warm-up epochs per iteration, stepped before each update, cosine to 1e-6)")

    # ---- the schedule ----------------------------------------------------------------------
    def lr_lambda(self, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
        base = super().lr_lambda(recipe, steps_per_epoch, total_steps)
        if self.params.lr_schedule == "iteration":
            return base
        return lambda step: base(step + 1)  # scheduler.step() before optimizer.step()

    # ---- the loss --------------------------------------------------------------------------
    def loss(
        self, z: torch.Tensor, z_adv: torch.Tensor, z_orig: torch.Tensor, w: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``AIR_Loss``: z, z_adv are [2n, D] stacks (view 1 rows, then view 2), z_orig [n, D]; all
        L2-normalised. Returns (loss, its terms)."""
        p = self.params
        n = z_orig.shape[0]
        g = self.gather(torch.stack([z[:n], z[n:], z_orig, z_adv[:n], z_adv[n:]]))
        nat = info_nce(g[0:2], p.temperature)
        adv = info_nce(g[3:5], p.temperature)
        sir, air = invariance_regularisers(g[0], g[1], g[2], g[3], g[4], p.temperature, p.kl_form)
        loss = (1.0 - w) * nat + (1.0 + w) * adv + p.lambda1 * sir + p.lambda2 * air
        return loss, {"clean": nat, "adv": adv, "sir": sir, "air": air}

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        x = batch.images
        n = x.shape[0]
        self.views.strength = self.strength(batch.epoch, batch.epochs)
        t = torch.cat([self.views(x), self.views(x)])
        adv = self.adversarial_views(model, t, n)
        z_adv = model(adv, "pgd")  # the release's order: adversarial, clean, original
        z = model(t, "normal")
        z_orig = model(x, "normal")
        loss, terms = self.loss(z, z_adv, z_orig, self.adv_weight(batch.epoch, batch.epochs))
        return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


@register_method("dynacl-air")
class DynACLAIR(ACLAIR):
    paper = "Xu et al., NeurIPS 2023 (DynACL: Luo et al., ICLR 2023)"
    summary = ("the AIR release's DynACL (annealed augmentations, (1-w)/(1+w) weights, no momentum encoder) "
               "+ SIR + AIR")
    dynamic = True
