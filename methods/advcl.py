"""AdvCL (Fan et al., NeurIPS 2021) and its A-InfoNCE variants (Yu et al., ECCV 2022).

AdvCL contrasts four views of each image: an adversarial example ``x_cl`` of the weak view
``x_org`` (RandomCrop + flip), two SimCLR views ``t1``, ``t2`` and the high-frequency part
``HFC(x_org)``, and adds a cross-entropy on k-means pseudo-labels ``y_h`` (h in 2, 10, 50, 100,
500) of a second adversarial example ``x_ce``. The backbone has three BN branches: "normal" (clean
views), "pgd" (``x_cl``) and "pgd_ce" (``x_ce``); the projection head has one shared BN. Both
adversarial examples start from ``x_org + U(-eps, eps)`` and are made jointly, as in the released
code (LijieFan/AdvCL, ``pretraining_advCL.py``)::

    x_cl maximises info_nce([z_pgd(x_cl), z(t1), z(t2), z(HFC)])
    x_ce maximises mean_h CE(fc_h(f_pgd_ce(x_ce)), y_h)
    loss = (T / 0.07) info_nce([z_pgd(x_cl), z(t1), z(t2), z(HFC)])
           + 0.2 mean_h CE(fc_h(f_pgd_ce(x_ce)), y_h)

The clean views go through the "normal" branch, in the attack and in the loss (as released). The
released attack runs with the model in train mode, so the "pgd" and "pgd_ce" running statistics
are updated at every attack step: ``attack_bn_mode="train"`` (default) keeps that, ``"eval"``
attacks with running statistics instead. The clean views' embeddings do not depend on the
perturbation, so the attack computes them once per step (the released code recomputes them at
every attack step: same gradients, only the "normal" running statistics move 5 times more).

Input normalisation: the released model takes raw [0, 1] images; here, as for ACL, the model
normalises its input (docs/design.md), HFC included. The backbone's convolutions are initialised as
released (``init="kaiming-fan-out"``).

Scaling with the image size (the released values are for 32 x 32): the HFC radius is
``8 * size / 32`` and the crop padding ``size // 8`` unless set (digits at 16 px: radius 4,
padding 2). HFC values are not clamped to [0, 1]; the model normalises HFC like any input.

Pseudo-labels always come from the ``pseudo_labels`` stage (:attr:`AdvCL.requires`), in
``extras["pseudo_labels"]`` (nominal k -> LongTensor aligned with the dataset indices): k-means on
the features of a SimCLR encoder pretrained on the same data, or, with ``pseudo_labels_file`` set,
the user's ``.npz`` file (one integer array per k, keys ``k2`` ... ``k500``; see
:mod:`benchmark.labels`), which the stage reads instead of running k-means. The heads keep their
nominal sizes (``fc_h: feature_dim -> h``) on every dataset; on small data the stage caps the
number of clusters, so a head can have more outputs than clusters.

The A-InfoNCE variants (``advcl-ip``, ``advcl-hn``, ``advcl-iphn``) keep views and the CE term
and, as A-InfoNCE's release does (yqy2001/A-InfoNCE, ``Asym-AdvCL``), replace the contrastive term
by ``(T / 0.07) a_info_nce_advcl(z, adv=0, ip=lam, adv_weight, hn)`` (``SupConLoss`` /
``ori_SupConLoss``) and attack with ``a_info_nce_advcl(z, adv=0, adv_weight)``
(``ori_SupConLoss(stop_grad=False)``), with its settings per dataset (docs/methods.md).
``loss_form="clean"`` and ``attack_form="clean"`` give the formulas of docs/methods.md instead
(``a_info_nce`` with HCL's hard negatives; the plain ``info_nce`` attack of ``advcl``). The IP
variants adapt lam per batch (:class:`AdaptiveIPWeight`); with K = 30 (or 20) warm-up epochs, runs
shorter than K epochs (the CPU presets) keep lam = lam0. d_min (0.4 / 0.5) is an absolute distance
tuned for ResNet-18 features on CIFAR.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import benchmark.ddp as distributed
from attacks import contrastive_pgd, eval_mode
from benchmark.errors import ConfigError, check_choice
from benchmark.labels import check_pseudo_labels
from benchmark.models import ContrastiveModel, MLPHead
from methods import register_method
from methods.base import AdversarialParams, Batch, Logs, Method, Recipe
from methods.losses import a_info_nce, a_info_nce_advcl, info_nce

CLUSTERS = (2, 10, 50, 100, 500)  # pseudo-label granularities h (one head fc_h each)
ADV = 0  # index of x_cl in the stack [x_cl, t1, t2, HFC]
FORMS = ("released", "clean")  # the A-InfoNCE variants' loss_form and attack_form


# ---- views ------------------------------------------------------------------------------------


def high_frequency(x: torch.Tensor, radius: float) -> torch.Tensor:
    """AdvCL's HFC view: per image and channel, 2-D FFT, shift the zero frequency to the centre
    (h/2, w/2), zero every frequency at distance < ``radius`` from it, inverse FFT, real part.

    The result is not clamped (it has negative values). Equals the released ``generate_high``.
    """
    h, w = x.shape[-2:]
    i = torch.arange(h, device=x.device, dtype=torch.float32)[:, None] - h / 2
    j = torch.arange(w, device=x.device, dtype=torch.float32)[None, :] - w / 2
    keep = (i.square() + j.square()).sqrt() >= radius
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1)) * keep
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real.to(x.dtype)


# ---- adaptive inferior-positive weight --------------------------------------------------------


class AdaptiveIPWeight:
    """A-InfoNCE's adaptive inferior-positive weight lam, per batch (docs/methods.md, "Adaptive lam").

    For the first ``warmup_epochs`` epochs lam = lam0 while d_bar accumulates the running mean of
    the distances d_t (weighted by batch size, like the released ``AverageMeter``). After them,
    against that frozen d_bar: lam0 if d_t > d_bar; 0.5 if d_t < d_min; else
    lam0 + (d_bar - d_t) / (d_bar - d_min) (0.5 - lam0) (lam0 when d_bar <= d_min: no 0/0).

    ``d_t`` is a 0-d tensor on the training device; the running sum and lam stay there (float64),
    so a training step never waits for the host. lam is the number lam0 during the warm-up and a
    0-d tensor after it.
    """

    def __init__(self, lam0: float, warmup_epochs: int, d_min: float):
        self.lam0, self.warmup_epochs, self.d_min = lam0, warmup_epochs, d_min
        self.total: float | torch.Tensor = 0.0  # a float64 tensor on d_t's device after the first call
        self.count = 0

    @property
    def d_bar(self) -> float:
        return float(self.total) / self.count if self.count else math.nan

    def __call__(self, d_t: torch.Tensor, n: int, epoch: int) -> float | torch.Tensor:
        d_t = d_t.detach().double()
        if not isinstance(self.total, torch.Tensor):  # once per run (or after a resume)
            self.total = torch.full((), float(self.total), dtype=torch.float64, device=d_t.device)
        if epoch <= self.warmup_epochs:
            self.total = self.total + d_t * n
            self.count += n
            return self.lam0
        if not self.count:  # no warm-up: the released AverageMeter's mean stays 0 -> lam0
            return self.lam0
        d_bar, lam0 = self.total / self.count, self.lam0
        inner = lam0 + (d_bar - d_t) / (d_bar - self.d_min) * (0.5 - lam0)
        inner = torch.where(d_bar <= self.d_min, lam0, inner)
        return torch.where(d_t > d_bar, lam0, torch.where(d_t < self.d_min, 0.5, inner))

    def state_dict(self) -> dict[str, float]:
        return {"total": float(self.total), "count": self.count}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])


# ---- methods ----------------------------------------------------------------------------------


@register_method("advcl")
class AdvCL(Method):
    paper = "Fan et al., NeurIPS 2021"
    summary = "4-view contrast [adv(x_org), t1, t2, HFC] x T/0.07 + 0.2 CE on k-means pseudo-labels; triple BN"
    branches = ("normal", "pgd", "pgd_ce")
    finetune_branch = "pgd"
    requires = ("pseudo_labels",)  # k-means labels, or the user's pseudo_labels_file, from the stage

    @dataclass(frozen=True)
    class Params(AdversarialParams):  # temperature 0.5; PGD-5, eps 8/255, step 2/255
        base_temperature: float = 0.07  # SupCon's: the contrastive term is scaled by T / 0.07
        ce_weight: float = 0.2
        crop_scale_min: float = 0.2  # t1, t2: RandomResizedCrop scale (0.2, 1)
        crop_padding: int | None = None  # x_org: RandomCrop padding; None: size // 8 (4 at 32 px)
        hfc_radius: float | None = None  # None: 8 * size / 32 (8 at 32 px)
        attack_bn_mode: str = "train"  # "train": as released (BN statistics update); "eval"
        # an .npz of k2..k500 arrays that the pseudo_labels stage loads instead of running k-means
        pseudo_labels_file: str | None = None
        lr: float = 0.5  # the paper recipe's peak learning rate
        init: str = "kaiming-fan-out"  # the release's ResNet: Kaiming-normal (fan-out) convolutions

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.attack_bn_mode not in ("train", "eval"):
                raise ConfigError(f"attack_bn_mode must be 'train' or 'eval', got {self.attack_bn_mode!r}")
            if self.ce_weight < 0 or self.base_temperature <= 0 or self.lr <= 0:
                raise ConfigError("ce_weight must be >= 0, base_temperature and lr > 0")
            if not 0 < self.crop_scale_min <= 1:
                raise ConfigError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
            if (self.crop_padding is not None and self.crop_padding < 0) or (
                self.hfc_radius is not None and self.hfc_radius < 0
            ):
                raise ConfigError("crop_padding and hfc_radius must be >= 0")
            if self.pseudo_labels_file == "":
                raise ConfigError("pseudo_labels_file must be a path to an .npz file (or None)")

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        lr = self.params.lr
        return Recipe(
            epochs=1000, batch_size=512, optimizer="sgd", lr=lr, momentum=0.9, weight_decay=1e-4,
            warmup_epochs=10, warmup_start=0.01 / lr, min_lr_ratio=1e-3,
            source="AdvCL paper and LijieFan/AdvCL (SGD, warm-up from 0.01 over 10 epochs, cosine to "
            "lr x 1e-3; released cosine per epoch, here per iteration); A-InfoNCE (yqy2001/A-InfoNCE) "
            "for the variants' learning rates (released at 400 epochs; acbench keeps 1000 for all)",
        )

    def build_head(self, feature_dim: int) -> nn.Module:
        # feature-feature-BN-ReLU-128 with one BN shared by every branch (plain BN, not branch BN)
        return MLPHead([feature_dim, feature_dim, 128], bn=True, branches=None)

    def build_extra_heads(self, feature_dim: int) -> nn.ModuleDict:
        return nn.ModuleDict({f"fc{h}": nn.Linear(feature_dim, h) for h in CLUSTERS})

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        p = self.params
        self.views = self.simclr_views(image_size, scale=(p.crop_scale_min, 1.0)).to(device)
        padding = image_size // 8 if p.crop_padding is None else p.crop_padding
        self.weak = self.crop_flip(image_size, padding).to(device)
        self.radius = 8 * image_size / 32 if p.hfc_radius is None else p.hfc_radius
        if "pseudo_labels" not in extras:
            raise ConfigError(
                f"{self.name} needs pseudo-labels: run it through the pipeline, whose pseudo_labels "
                "stage makes them (or loads pseudo_labels_file)"
            )
        labels = check_pseudo_labels(
            extras["pseudo_labels"], extras.get("n_images"), "the pseudo_labels stage", CLUSTERS
        )
        self.labels = torch.stack([labels[h] for h in CLUSTERS]).to(device)  # [H, n], moved once

    def _aux_mode(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return eval_mode(model) if self.params.attack_bn_mode == "eval" else contextlib.nullcontext()

    def pseudo_label_loss(self, model: ContrastiveModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """mean_h CE(fc_h(f_pgd_ce(x)), y_h); ``y`` is [H, B]."""
        f = model.features(x, "pgd_ce")
        ce = [F.cross_entropy(model.extra_heads[f"fc{h}"](f), y[i]) for i, h in enumerate(CLUSTERS)]
        return torch.stack(ce).mean()

    def adversarial_views(
        self, model: ContrastiveModel, x_org: torch.Tensor, clean: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_cl ("pgd") and x_ce ("pgd_ce"), made jointly; ``clean`` = [t1, t2, HFC] ([3n, ...])."""
        p = self.params
        n = x_org.shape[0]
        with self._aux_mode(model):
            with torch.no_grad():  # independent of the perturbation: once per step
                # global negatives under torchrun (Method.gather), in the attack as in the loss
                z_clean = self.gather(torch.stack([model(v, "normal") for v in clean.split(n)]))

            def objective(adv: list[torch.Tensor]) -> torch.Tensor:
                x_cl, x_ce = adv
                contrast = self.attack_contrast(torch.cat([self.gather(model(x_cl, "pgd")[None]), z_clean]))
                return contrast + p.ce_weight * self.pseudo_label_loss(model, x_ce, y)

            x_cl, x_ce = contrastive_pgd(objective, [x_org, x_org], p.eps, p.attack_step, p.attack_steps)
        return x_cl, x_ce

    def attack_contrast(self, z: torch.Tensor) -> torch.Tensor:
        """The contrastive part of the attack objective on z = [x_cl, t1, t2, HFC] ([4, B, D]).

        The release's criterion is this times T / 0.07; the attack steps along the gradient's
        sign, which no positive factor changes, so the factor is left out.
        """
        return info_nce(z, self.params.temperature)

    def contrast(self, z: torch.Tensor, lam: float | torch.Tensor | None = None) -> torch.Tensor:
        """The contrastive term on z = [x_cl, t1, t2, HFC] ([4, B, D])."""
        p = self.params
        return p.temperature / p.base_temperature * info_nce(z, p.temperature)

    def inferior_positive_weight(
        self, model: ContrastiveModel, x_org: torch.Tensor, x_cl: torch.Tensor, batch: Batch
    ) -> tuple[float | torch.Tensor | None, Logs]:
        """lam for :meth:`contrast` and its logs; plain AdvCL has none."""
        return None, {}

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        p = self.params
        x = batch.images
        t1, t2, x_org = self.views(x), self.views(x), self.weak(x)
        x_hfc = high_frequency(x_org, self.radius)
        y = self.labels[:, batch.indices]
        x_cl, x_ce = self.adversarial_views(model, x_org, torch.cat([t1, t2, x_hfc]), y)
        lam, logs = self.inferior_positive_weight(model, x_org, x_cl, batch)
        # separate calls: each view is normalised with its own batch statistics, as released
        z = torch.stack([model(x_cl, "pgd"), model(t1, "normal"), model(t2, "normal"), model(x_hfc, "normal")])
        contrast = self.contrast(self.gather(z), lam)
        ce = self.pseudo_label_loss(model, x_ce, y)  # per process: the mean over ranks is the global mean
        loss = contrast + p.ce_weight * ce
        return loss, {"loss": loss.detach(), "contrast": contrast.detach(), "ce": ce.detach(), **logs}


class _AdvCLAInfoNCE(AdvCL):
    """AdvCL with A-InfoNCE's contrastive term (x_cl is the adversarial view).

    ``loss_form``: "released" is ``a_info_nce_advcl`` (the release's ``SupConLoss`` with hard
    negatives, ``ori_SupConLoss`` without), "clean" is ``a_info_nce`` (HCL's hard negatives).
    ``attack_form``: "released" attacks with ``a_info_nce_advcl(ip=None, adv_weight)`` (the
    release's ``ori_SupConLoss(stop_grad=False)``), "clean" with ``info_nce`` as ``advcl`` does.
    ``ip`` is lam0; with ``adaptive_epochs`` = K set, lam adapts per batch after K epochs from the
    distance d_t = mean_i ||f(x_org_i) - f(x_cl_i)||_2 of backbone features ("normal" branch, no
    gradient, computed in the attack's BN mode: train mode as released).
    """

    @dataclass(frozen=True)
    class Params(AdvCL.Params):
        ip: float | None = None  # lam0
        adv_weight: float = 1.0
        adaptive_epochs: int | None = None  # K; None: lam = lam0 throughout
        d_min: float = 0.4
        hn_beta: float | None = None
        hn_tau_plus: float = 0.1
        loss_form: str = "released"
        attack_form: str = "released"

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("loss_form", self.loss_form, FORMS)
            check_choice("attack_form", self.attack_form, FORMS)
            if self.ip is not None and not 0 <= self.ip <= 1:
                raise ConfigError(f"ip (lambda) must be in [0, 1], got {self.ip}")
            if self.adv_weight < 0:
                raise ConfigError(f"adv_weight must be >= 0, got {self.adv_weight}")
            if not 0 <= self.hn_tau_plus < 1:
                raise ConfigError(f"hn_tau_plus must be in [0, 1), got {self.hn_tau_plus}")
            if self.adaptive_epochs is not None and self.adaptive_epochs < 0:
                raise ConfigError(f"adaptive_epochs must be >= 0, got {self.adaptive_epochs}")

    def __init__(self, dataset: str | None = None, **overrides: Any):
        super().__init__(dataset, **overrides)
        p = self.params
        self.adaptive = (
            AdaptiveIPWeight(p.ip, p.adaptive_epochs, p.d_min)
            if p.ip is not None and p.adaptive_epochs is not None else None
        )

    def attack_contrast(self, z: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.attack_form == "clean":
            return info_nce(z, p.temperature)
        return a_info_nce_advcl(z, adv=ADV, temperature=p.temperature, adv_weight=p.adv_weight)

    def contrast(self, z: torch.Tensor, lam: float | torch.Tensor | None = None) -> torch.Tensor:
        p = self.params
        hn = (p.hn_beta, p.hn_tau_plus) if p.hn_beta is not None else None
        ip = lam if lam is not None else p.ip
        if p.loss_form == "released":
            loss = a_info_nce_advcl(z, adv=ADV, temperature=p.temperature, ip=ip, adv_weight=p.adv_weight, hn=hn)
        else:
            loss = a_info_nce(z, adv=(ADV,), temperature=p.temperature, ip=ip, adv_weight=p.adv_weight, hn=hn)
        return p.temperature / p.base_temperature * loss

    def inferior_positive_weight(
        self, model: ContrastiveModel, x_org: torch.Tensor, x_cl: torch.Tensor, batch: Batch
    ) -> tuple[float | torch.Tensor | None, Logs]:
        if self.adaptive is None:
            return self.params.ip, {}
        with self._aux_mode(model), torch.no_grad():
            d_t = (model.features(x_org, "normal") - model.features(x_cl, "normal")).norm(dim=1).mean()
        d_t = distributed.reduce_mean(d_t)  # stays on the device: lam is a 0-d tensor after warm-up
        lam = self.adaptive(d_t, x_org.shape[0] * distributed.world_size(), batch.epoch)
        return lam, {"lam": lam, "d_t": d_t}

    def on_epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        if self.adaptive is None or not self.adaptive.count:
            return {}
        return {"d_bar": round(self.adaptive.d_bar, 6)}

    def state_dict(self) -> dict[str, Any]:
        return {"adaptive_ip": self.adaptive.state_dict()} if self.adaptive is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adaptive is not None and "adaptive_ip" in state:
            self.adaptive.load_state_dict(state["adaptive_ip"])


_PAPER = "Yu et al., ECCV 2022 (A-InfoNCE, AdvCL)"


@register_method("advcl-ip")
class AdvCLIP(_AdvCLAInfoNCE):
    paper = _PAPER
    summary = "AdvCL with x_cl as an inferior positive (adaptive lambda from 0.2, pair weight 1.2)"
    dataset_params = {"cifar100": {"ip": 0.3, "adv_weight": 1.5, "adaptive_epochs": 20, "d_min": 0.5, "lr": 2.0}}

    @dataclass(frozen=True)
    class Params(_AdvCLAInfoNCE.Params):
        ip: float | None = 0.2
        adv_weight: float = 1.2
        adaptive_epochs: int | None = 30
        d_min: float = 0.4
        lr: float = 1.0


@register_method("advcl-hn")
class AdvCLHN(_AdvCLAInfoNCE):
    paper = _PAPER
    summary = "AdvCL with hard-negative reweighting (A-InfoNCE's released form, beta 1, tau+ 0.12 / 0.01)"
    dataset_params = {"cifar100": {"hn_tau_plus": 0.01, "lr": 2.0}}

    @dataclass(frozen=True)
    class Params(_AdvCLAInfoNCE.Params):
        hn_beta: float | None = 1.0
        hn_tau_plus: float = 0.12
        lr: float = 1.2


@register_method("advcl-iphn")
class AdvCLIPHN(_AdvCLAInfoNCE):
    paper = _PAPER
    summary = "AdvCL with inferior positives (adaptive lambda from 0.2, weight 0.7) and hard negatives"
    dataset_params = {
        "cifar100": {"ip": 0.3, "adv_weight": 1.5, "adaptive_epochs": 20, "d_min": 0.5,
                     "hn_tau_plus": 0.01, "lr": 2.0},
    }

    @dataclass(frozen=True)
    class Params(_AdvCLAInfoNCE.Params):
        ip: float | None = 0.2
        adv_weight: float = 0.7
        adaptive_epochs: int | None = 30
        d_min: float = 0.4
        hn_beta: float | None = 1.0
        hn_tau_plus: float = 0.1
        lr: float = 2.0
