"""DeACL (Zhang et al., ECCV 2022): adversarial training by distillation from a SimCLR teacher.

Two stages, as released (pantheon5100/DeACL; WAVE2.md section 4):

1. ``deacl-teacher``: SimCLR as solo-learn trains it (vturrisi/solo-learn,
   ``bash_files/pretrain/cifar/simclr.sh``): NT-Xent at tau 0.2, projector
   feature -> 4 x feature -> 256 (512-2048-256 on ResNet-18) without BN, RandomResizedCrop
   (0.08, 1) bicubic, ColorJitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, flip, LARS
   (eta 0.02, clipped at the lr, biases and BN excluded), lr 0.4, wd 1e-5, 1000 epochs. The pipeline's ``teacher``
   stage (:mod:`benchmark.teacher`) pretrains it, or reads ``teacher_file``, and hands its backbone
   to ``deacl`` in ``extras["teacher"]``.
2. ``deacl``: the student, initialised from the teacher's backbone, trained on one weak view x
   (RandomCrop + flip) per image (``solo/methods/mocov2_distillation_AT.py``)::

       t      = f_T(x)                                  teacher: eval mode, never updated
       x_adv  = PGD-K maximising -sum_i cos(f_S(x_adv)_i, t_i)   student in eval mode;
                start x + U(-eps, eps), not clipped; after each step: eps-ball, then [0, 1]
       [f_S(x); f_S(x_adv)] = f_S([x; x_adv])          one train-mode forward: one BN sees both
       loss   = -mean cos(f_S(x), t) - k mean cos(f_S(x_adv), f_S(x))          (k = trades_k = 2)

   No projector: every representation is the backbone's pooled feature. Nothing is detached in the
   loss (f_S(x) carries gradient in both terms). The released teacher has ``requires_grad=True``
   and is not under ``no_grad``, so backward also runs through it, but its weights are in no
   optimiser: here it runs under ``no_grad`` (same student gradients, two units less per image).
   The release's online linear classifier (CE on detached eval-mode features, for monitoring) does
   not touch the encoder and is not built. The attack's sum (and its x256 fp16 factor) only scales
   the gradient, whose sign is taken.

Both stages step solo-learn's warm-up cosine once per epoch, as released
(:func:`solo_warmup_cosine_lambda`), and build solo-learn's CIFAR stem, conv1 3x3 stride 1 padding 2
(``stem_padding=1``: acbench's other methods' stem, and the one RobustSSL finetunes DeACL in). Named forms other than the release's:
``random_start="clipped"`` clips the attack's start to [0, 1] (acbench's PGD);
``student_init="scratch"`` (the release's ``--student_scratch``) starts the student from random
weights; ``lr_schedule="iteration"`` uses acbench's per-iteration schedule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attacks import eval_mode
from benchmark.devices import to_layout
from benchmark.errors import ConfigError, check_choice
from benchmark.models import (
    BACKBONES,
    BackboneConfig,
    ContrastiveModel,
    MLPHead,
    NoHead,
    ResNet,
    load_strict,
)
from methods import register_method
from methods.base import AdversarialParams, Batch, ContrastiveParams, Logs, Method, Recipe
from methods.losses import info_nce

LR_SCHEDULES = ("released", "iteration")  # per epoch as released (pl_bolts), or acbench's per iteration
STARTS = ("released", "clipped")  # the attack's random start: unclipped as released, or in [0, 1]
INITS = ("teacher", "scratch")  # the student's initial weights


# ---- the loss and the attack objective --------------------------------------------------------


def deacl_loss(
    f_clean: torch.Tensor, f_adv: torch.Tensor, target: torch.Tensor, k: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeACL's loss on student features ``f_clean`` = f_S(x), ``f_adv`` = f_S(x_adv) and the
    teacher's ``target`` = t(x) (each [B, D]): returns (loss, distillation, robustness) with

        distillation = -mean cos(f_clean, target),  robustness = -mean cos(f_adv, f_clean)
        loss = distillation + k robustness

    as released (``F.cosine_similarity``, nothing detached)."""
    distill = -F.cosine_similarity(f_clean, target).mean()
    robust = -F.cosine_similarity(f_adv, f_clean).mean()
    return distill + k * robust, distill, robust


def deacl_attack_objective(f_adv: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """What DeACL's PGD ascends: -sum_i cos(f_S(x_adv)_i, t_i) (the release's x256 fp16 factor,
    a positive scale, does not change the sign of the gradient and is left out)."""
    return -F.cosine_similarity(f_adv, target, dim=1).sum()


def deacl_pgd(
    objective, x: torch.Tensor, eps: float, alpha: float, steps: int, start: str = "released"
) -> torch.Tensor:
    """L-inf sign ascent on ``objective(x_adv)`` from x + U(-eps, eps) (clipped to [0, 1] only with
    ``start="clipped"``); after each step the eps-ball around x, then [0, 1]. Detached result."""
    x = x.detach()
    adv = x + torch.empty_like(x).uniform_(-eps, eps)
    if start == "clipped":
        adv = adv.clamp(0.0, 1.0)
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(adv), [adv])
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    return adv.detach()


# ---- the schedule --------------------------------------------------------------------------------


def solo_warmup_cosine_lambda(
    steps_per_epoch: int, epochs: int, warmup_epochs: float, min_ratio: float, start_ratio: float
) -> Callable[[int], float]:
    """solo-learn's ``warmup_cosine`` (pl_bolts ``LinearWarmupCosineAnnealingLR``, stepped once per
    epoch: Lightning's default interval) as a per-iteration factor of the peak lr. In 0-based epoch
    e = step // steps_per_epoch, with W warm-up epochs of E::

        e <  W:  start + (1 - start) e / max(1, W - 1)
        e >= W:  min + (1 - min) (1 + cos(pi (e - W) / (E - W))) / 2

    (DeACL's release: start 0.003 / 0.5, W = 10, min 0: epoch 1 at 0.003, epochs 10 and 11 at the
    peak). This is pl_bolts' closed form, which its chained ``get_lr`` follows for W >= 1."""
    w = int(round(warmup_epochs))

    def factor(step: int) -> float:
        e = step // steps_per_epoch
        if e < w:
            return start_ratio + (1.0 - start_ratio) * e / max(1, w - 1)
        if epochs <= w:
            return 1.0
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * (e - w) / (epochs - w)))

    return factor


class _SoloLearn:
    """What both stages take from solo-learn: ``lr_schedule="released"``, its per-epoch warm-up
    cosine ("iteration": acbench's); ``stem_padding``, its CIFAR ResNet's conv1 padding (released:
    2, ``solo/methods/base_for_adversarial_training.py:230-234,901-905``; 1: acbench's other methods,
    and the padding-1 ResNet into which RobustSSL loads DeACL, ``V/models/resnet.py:147``)."""

    params: Any

    def build_model(self, backbone: BackboneConfig) -> ContrastiveModel:
        if BACKBONES[backbone.name].stem == "cifar":  # the ImageNet stem (STL-10 at 96 px) has its own
            backbone = dataclasses.replace(backbone, stem_padding=self.params.stem_padding)
        return super().build_model(backbone)  # type: ignore[misc]

    def lr_lambda(self, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
        if self.params.lr_schedule == "iteration":
            return super().lr_lambda(recipe, steps_per_epoch, total_steps)  # type: ignore[misc]
        return solo_warmup_cosine_lambda(
            steps_per_epoch, recipe.epochs, recipe.warmup_epochs, recipe.min_lr_ratio, recipe.warmup_start
        )


# ---- the teacher's weights ---------------------------------------------------------------------


def branch_keys(plain: dict[str, torch.Tensor], branch: str) -> dict[str, torch.Tensor]:
    """A plain-BN encoder state dict renamed for a branch-BN encoder with the one branch ``branch``
    (``bn1.bn.weight`` -> ``bn1.bn.<branch>.weight``): the inverse of ``branch_state_dict``."""
    out = {}
    for key, value in plain.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] == "bn":
            key = ".".join(parts[:-1] + [branch, parts[-1]])
        out[key] = value
    return out


def build_teacher(teacher: dict[str, Any], backbone: BackboneConfig, device: torch.device) -> ResNet:
    """The frozen teacher encoder (plain BN, eval mode) from the ``teacher`` stage's output
    ``{"state_dict": plain-BN encoder weights, "source": where they came from}``, loaded strictly
    into the student's ``backbone``: a teacher of another shape is a one-line error naming its
    source and the first mismatches."""
    encoder = ResNet(backbone, branches=None)
    load_strict(encoder, teacher["state_dict"], f"teacher weights from {teacher.get('source', 'the teacher stage')}")
    encoder = to_layout(encoder.to(device), device).eval()
    encoder.requires_grad_(False)
    return encoder


def stand_in_teacher(backbone: BackboneConfig, seed: int = 0) -> dict[str, Any]:
    """A randomly initialised teacher of ``backbone``'s shape, for timing and unit tests (the
    shape of the ``teacher`` stage's output). ``extras["teacher"]`` may also be this function with
    its ``seed`` bound (``functools.partial``): setup calls it with the student's backbone."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = ResNet(backbone, branches=None)
    return {"state_dict": encoder.state_dict(), "source": "a random stand-in teacher"}


# ---- stage 1: the teacher ----------------------------------------------------------------------


@register_method("deacl-teacher")
class DeACLTeacher(_SoloLearn, Method):
    paper = "Zhang et al., ECCV 2022 (teacher: SimCLR as solo-learn trains it)"
    summary = "DeACL's stage 1: SimCLR, tau 0.2, 512-2048-256 projector, strong jitter, LARS; no attack"
    branches = ("normal",)
    finetune_branch = "normal"

    @dataclass(frozen=True)
    class Params(ContrastiveParams):
        temperature: float = 0.2
        init: str = "kaiming-fan-out"  # torchvision's ResNet, as solo-learn builds it
        crop_scale_min: float = 0.08
        proj_output_dim: int = 256
        lr_schedule: str = "released"  # "released": per epoch (solo-learn); "iteration": acbench's
        stem_padding: int = 2  # conv1 padding of solo-learn's CIFAR ResNet (1: acbench's other methods')

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
            if not 0 < self.crop_scale_min <= 1 or self.proj_output_dim < 1:
                raise ConfigError("crop_scale_min must be in (0, 1] and proj_output_dim >= 1")
            if self.stem_padding < 0:
                raise ConfigError("stem_padding must be >= 0")

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        lr = 0.4  # x batch / 256 = 0.4 at batch 256
        return Recipe(
            epochs=1000, batch_size=256, optimizer="lars", lr=lr, momentum=0.9, weight_decay=1e-5,
            warmup_epochs=10, warmup_start=0.003 / lr, min_lr_ratio=0.0,
            optimizer_options=(("eta", 0.02), ("eps", 1e-8), ("exclude_bias_and_bn", True),
                               ("lr_in_momentum", False), ("clip_lr", True)),
            source="solo-learn bash_files/pretrain/cifar/simclr.sh @f4a3279, DeACL's teacher (LARS eta 0.02, "
            "clipped at the lr, biases and BN excluded, lr 0.4, wd 1e-5, warm-up from 0.003 over 10 epochs, "
            "cosine to 0, per epoch; released: fp16)",
        )

    def build_head(self, feature_dim: int) -> nn.Module:
        return MLPHead([feature_dim, 4 * feature_dim, self.params.proj_output_dim])

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        self.views = self.simclr_views(
            image_size, scale=(self.params.crop_scale_min, 1.0), jitter=(0.8, 0.8, 0.8, 0.2),
            p_jitter=0.8, p_gray=0.2, interpolation="bicubic",
        ).to(device)

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        x = batch.images
        t = torch.cat([self.views(x), self.views(x)])
        z = model(t, "normal").view(2, x.shape[0], -1)
        loss = info_nce(self.gather(z), self.params.temperature)
        return loss, {"loss": loss.detach()}


# ---- stage 2: the student ----------------------------------------------------------------------


@register_method("deacl")
class DeACL(_SoloLearn, Method):
    paper = "Zhang et al., ECCV 2022"
    summary = ("distils a SimCLR teacher: -cos(f(x), t(x)) - 2 cos(f(x_adv), f(x)); weak crops, "
               "no projector, one BN; needs the teacher stage")
    branches = ("normal",)  # one BN, shared by clean and adversarial inputs
    finetune_branch = "normal"
    requires = ("teacher",)

    @dataclass(frozen=True)
    class Params(AdversarialParams):  # PGD-5, eps 8/255, step 2/255 (temperature: unused)
        trades_k: float = 2.0
        crop_padding: int | None = None  # RandomCrop padding; None: size // 8 (4 at 32 px)
        random_start: str = "released"  # "released": x + U(-eps, eps) unclipped; "clipped": in [0, 1]
        student_init: str = "teacher"  # "teacher" (released default) or "scratch"
        # an acbench encoder.pt whose backbone the teacher stage uses instead of training deacl-teacher
        teacher_file: str | None = None
        lr: float = 0.5  # the paper recipe's peak learning rate
        lr_schedule: str = "released"  # "released": per epoch (solo-learn); "iteration": acbench's
        stem_padding: int = 2  # conv1 padding of solo-learn's CIFAR ResNet (1: acbench's other methods')

        def __post_init__(self) -> None:
            super().__post_init__()
            check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
            check_choice("random_start", self.random_start, STARTS)
            check_choice("student_init", self.student_init, INITS)
            if self.trades_k < 0 or self.lr <= 0:
                raise ConfigError("trades_k must be >= 0 and lr > 0")
            if self.crop_padding is not None and self.crop_padding < 0:
                raise ConfigError("crop_padding must be >= 0")
            if self.stem_padding < 0:
                raise ConfigError("stem_padding must be >= 0")
            if self.teacher_file == "":
                raise ConfigError("teacher_file must be a path to an encoder checkpoint (or None)")

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        lr = self.params.lr
        return Recipe(
            epochs=100, batch_size=256, optimizer="sgd", lr=lr, momentum=0.9, weight_decay=5e-4,
            warmup_epochs=10, warmup_start=0.003 / lr, min_lr_ratio=0.0,
            source="pantheon5100/DeACL bash_files/DeACL_cifar10_resnet18.sh (SGD 0.5, wd 5e-4, warm-up from "
            "0.003 over 10 epochs, cosine to 0, per epoch). The release "
            "runs CIFAR-10 only (its CIFAR-100 script loads the CIFAR-10 teacher and fails); acbench "
            "uses the same recipe on every dataset, with a teacher trained on that dataset",
        )

    def build_head(self, feature_dim: int) -> nn.Module:
        return NoHead()  # no projector (the release's projector is nn.Identity)

    def build_model(self, backbone: BackboneConfig) -> ContrastiveModel:
        model = super().build_model(backbone)
        self._student = model  # setup loads the teacher's weights into it (student_init="teacher")
        return model

    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        p = self.params
        self.weak = self.crop_flip(image_size, image_size // 8 if p.crop_padding is None else p.crop_padding)
        self.weak = self.weak.to(device)
        if "teacher" not in extras:
            raise ConfigError(
                f"{self.name} needs its teacher: run it through the pipeline, whose teacher stage trains "
                "deacl-teacher (or loads teacher_file)"
            )
        student = getattr(self, "_student", None)
        if student is None:
            raise ConfigError(f"{self.name}: build_model must run before setup (the student starts from the teacher)")
        teacher = extras["teacher"]
        if callable(teacher):  # a stand-in made for the student's shape (stand_in_teacher, partially applied)
            teacher = teacher(student.encoder.config)
        self.teacher = build_teacher(teacher, student.encoder.config, device)
        if p.student_init == "teacher":
            state = branch_keys(self.teacher.state_dict(), "normal")
            load_strict(student.encoder, state, "the teacher's weights in the student")

    def attack(self, model: ContrastiveModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """x_adv: PGD on :func:`deacl_attack_objective` with the student in eval mode."""
        p = self.params
        with eval_mode(model):
            return deacl_pgd(
                lambda a: deacl_attack_objective(model.features(a, "normal"), target),
                x, p.eps, p.attack_step, p.attack_steps, p.random_start,
            )

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        x = self.weak(batch.images)
        with torch.no_grad():
            target = self.teacher(x)
        x_adv = self.attack(model, x, target)
        f = model.features(torch.cat([x, x_adv]), "normal")  # one train-mode forward, one BN
        f_clean, f_adv = f.chunk(2)
        loss, distill, robust = deacl_loss(f_clean, f_adv, target, self.params.trades_k)
        return loss, {"loss": loss.detach(), "distill": distill.detach(), "robust": robust.detach()}
