"""The base class every method extends, and the pretraining recipe it carries.

A method says only what makes it different: its views, its adversarial views, its loss, its BN
branches, its head and its published recipe. The training loop, optimiser, schedule, checkpoints
and logging live once in :mod:`benchmark.pretrain`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

import benchmark.ddp as distributed
from benchmark.augment import CropFlip, SimCLRViews, ViewAdaptation
from benchmark.errors import ConfigError, check_choice, did_you_mean
from benchmark.models import INITS, BackboneConfig, ContrastiveModel, ResNet, init_backbone
from benchmark.optim import warmup_cosine_lambda

OPTIMIZERS = ("sgd", "lars", "adam")
Logs = dict[str, torch.Tensor | float]  # a step's logs: 0-d tensors (no host sync) or plain numbers


@dataclass(frozen=True)
class Recipe:
    """A pretraining recipe. ``lr`` is the peak learning rate reached after warm-up.

    Warm-up is linear per iteration from ``lr * warmup_start`` to ``lr`` over ``warmup_epochs``,
    then cosine to ``lr * min_lr_ratio``.
    """

    epochs: int
    batch_size: int
    optimizer: str  # "sgd" | "lars" | "adam"
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float = 10.0
    warmup_start: float = 0.0
    min_lr_ratio: float = 0.0
    optimizer_options: tuple[tuple[str, Any], ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (contrastive losses need negatives), got {self.batch_size}")
        if not (self.lr > 0 and self.lr < 1e3):
            raise ConfigError(f"learning rate must be in (0, 1000), got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}{did_you_mean(self.optimizer, OPTIMIZERS)}; "
                f"use {', '.join(OPTIMIZERS)}"
            )
        if self.warmup_epochs < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("warmup_epochs must be >= 0 and min_lr_ratio in [0, 1]")

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optimizer_options"] = dict(self.optimizer_options)
        return d


@dataclass
class Batch:
    """What the training loop hands a method each step."""

    images: torch.Tensor  # float [B, C, H, W] in [0, 1], un-augmented, on the training device
    indices: torch.Tensor  # dataset indices of the images (pseudo-labels are looked up with these)
    epoch: int  # 1-based
    epochs: int
    step: int  # global step, 0-based
    extras: dict[str, Any] = field(default_factory=dict)  # stage inputs, e.g. pseudo-labels


@dataclass
class EpochContext:
    """What :meth:`Method.epoch_indices` sees at the start of an epoch (built by the loop)."""

    model: ContrastiveModel  # in train mode; the method restores any mode it changes
    images: torch.Tensor  # the uint8 pretraining images [N, C, H, W], on the training device
    device: torch.device
    batch_size: int  # the training batch (global under torchrun)
    seed: int  # the run's seed: a method's own random choices derive from it
    step: int  # optimiser updates done before this epoch (the scheduler's count)
    autocast: contextlib.AbstractContextManager[Any]  # the training's precision (bf16 autocast or nothing)
    logs: dict[str, float] = field(default_factory=dict)  # the method's values for this epoch's history entry


def subset_steps(images: int, batch_size: int) -> int:
    """The steps of an epoch on a method's subset of ``images``: every full batch, and the last
    partial one if it holds at least two images (a contrastive loss needs a negative)."""
    return images // batch_size + (1 if images % batch_size >= 2 else 0)


@dataclass(frozen=True)
class ContrastiveParams:
    """The parameters every built-in method has (checked here, so a bad value is refused when the
    method is made): the NT-Xent temperature, and ``init``, the backbone's weight initialisation
    (:data:`benchmark.models.INITS`; a method whose release initialises otherwise than PyTorch
    overrides the default). Both are part of the pretraining stage's key."""

    temperature: float = 0.5
    init: str = "default"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        check_choice("init", self.init, INITS)


@dataclass(frozen=True)
class AdversarialParams(ContrastiveParams):
    """:class:`ContrastiveParams` plus the L-inf PGD of a method's adversarial views: radius
    ``eps``, step ``attack_step`` (both on [0, 1] images) and ``attack_steps`` steps. A method
    with an attack derives its ``Params`` from this class and overrides the defaults it needs."""

    eps: float = 8 / 255
    attack_step: float = 2 / 255
    attack_steps: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, v in (("eps", self.eps), ("attack_step", self.attack_step)):
            if not 0 < v < 1:
                raise ConfigError(f"{name} must be in (0, 1), got {v}")
        if self.attack_steps < 1:
            raise ConfigError(f"attack_steps must be >= 1, got {self.attack_steps}")


_SIMPLE_TYPES = {"None", "bool", "int", "float", "str"}


def _checked_param(method: str, f: dataclasses.Field, value: Any) -> Any:
    """``value`` if it fits parameter ``f``'s annotation (int for float is fine), else ConfigError."""
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    allowed = {a.strip() for a in ann.split("|")}
    if not allowed <= _SIMPLE_TYPES:
        return value  # an annotation this check does not know: left to the Params' own checks
    if isinstance(value, float) and "float" in allowed and not math.isfinite(value):
        raise ConfigError(f"method {method!r}: parameter {f.name!r} must be finite, got {value!r}")
    ok = (
        (value is None and "None" in allowed)
        or (isinstance(value, bool) and "bool" in allowed)
        or (isinstance(value, int) and not isinstance(value, bool) and allowed & {"int", "float"})
        or (isinstance(value, float) and "float" in allowed)
        or (isinstance(value, str) and "str" in allowed)
    )
    if not ok:
        raise ConfigError(
            f"method {method!r}: parameter {f.name!r} must be {' or '.join(sorted(allowed))}, got {value!r}"
        )
    return value


class Method(abc.ABC):
    """Base class of a pretraining method.

    A subclass sets the class attributes (constants: never changed on an instance), defines a
    frozen dataclass ``Params`` of its hyper-parameters that validates itself (derive it from
    :class:`ContrastiveParams` or :class:`AdversarialParams`), and implements
    :meth:`paper_recipe`, :meth:`build_head` and :meth:`training_step` (usually :meth:`setup`
    too). Register it with ``methods.register_method(name)``.
    """

    name: ClassVar[str] = ""  # set by register_method
    paper: ClassVar[str] = ""  # "Author et al., Venue Year"
    summary: ClassVar[str] = ""  # one line: what the method changes
    branches: ClassVar[tuple[str, ...]] = ("normal",)  # BN branches of the encoder
    finetune_branch: ClassVar[str] = "normal"  # the branch turned into the classifier
    normalize_input: ClassVar[bool] = True  # RoCL feeds raw [0, 1] images to the network
    # upstream stages whose outputs arrive in setup's and Batch's extras, e.g. ("pseudo_labels",)
    requires: ClassVar[tuple[str, ...]] = ()
    # per pretraining dataset: parameter defaults that differ from ``Params()``'s
    dataset_params: ClassVar[dict[str, dict[str, Any]]] = {}
    Params: ClassVar[type] = ContrastiveParams
    # how many times ACL's (NT + NT) / 2 the released loss is, for losses of that form (AIR's
    # (1 - w) NT + (1 + w) NT: 2); the CPU presets' SGD divides its step by it (Preset.recipe)
    loss_scale: ClassVar[float] = 1.0

    def __init__(self, dataset: str | None = None, **overrides: Any):
        by_name = {f.name: f for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(overrides) - set(by_name))
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no parameter {unknown[0]!r}{did_you_mean(unknown[0], by_name)}; "
                f"its parameters: {', '.join(sorted(by_name))}"
            )
        overrides = {k: _checked_param(self.name, by_name[k], v) for k, v in overrides.items()}
        self.dataset = dataset
        # the preset's scaling of the published augmentations (identity unless a preset sets it
        # before setup: benchmark.pretrain does); views are built through simclr_views / crop_flip
        self.augmentation = ViewAdaptation()
        self.params = self.Params(**{**self.dataset_params.get(dataset or "", {}), **overrides})

    # ---- description -------------------------------------------------------------------
    @abc.abstractmethod
    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        """The published pretraining recipe on ``dataset`` (presets scale it down)."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paper": self.paper,
            "summary": self.summary,
            "branches": list(self.branches),
            "finetune_branch": self.finetune_branch,
            "params": dataclasses.asdict(self.params),
            "paper_recipe": self.paper_recipe(self.dataset).to_dict(),
            "loss_scale": self.loss_scale,
        }

    # ---- model ---------------------------------------------------------------------------
    @abc.abstractmethod
    def build_head(self, feature_dim: int) -> nn.Module:
        """The projection head on the backbone's ``feature_dim`` features."""

    def build_extra_heads(self, feature_dim: int) -> nn.ModuleDict:
        return nn.ModuleDict()

    def build_model(self, backbone: BackboneConfig) -> ContrastiveModel:
        if not self.normalize_input:
            backbone = dataclasses.replace(
                backbone, mean=(0.0,) * backbone.in_channels, std=(1.0,) * backbone.in_channels
            )
        encoder = ResNet(backbone, branches=self.branches)
        init_backbone(encoder, self.params.init)  # before the heads are built, as released
        return ContrastiveModel(
            encoder,
            self.build_head(encoder.feature_dim),
            self.build_extra_heads(encoder.feature_dim),
        )

    # ---- training ------------------------------------------------------------------------
    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Build augmentation modules etc. before the first step. ``extras`` holds the outputs of
        the :attr:`requires` stages and ``n_images`` (the number of pretraining images)."""

    def simclr_views(self, image_size: int, **published: Any) -> SimCLRViews:
        """The method's published SimCLR views (``SimCLRViews`` arguments) under the preset's
        :attr:`augmentation`: every built-in method builds its views here, so a preset adapts
        all of them alike."""
        return self.augmentation.simclr_views(image_size, **published)

    def crop_flip(self, image_size: int, padding: int = 4) -> CropFlip:
        """The published RandomCrop + flip view under the preset's :attr:`augmentation`."""
        return self.augmentation.crop_flip(image_size, padding)

    def lr_lambda(self, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
        """The learning-rate factor of the loop's step ``i`` (0-based; the update of step ``i``
        runs at ``recipe.lr * lr_lambda(i)``), for :class:`torch.optim.lr_scheduler.LambdaLR`
        stepped once per iteration. Default: :func:`benchmark.optim.warmup_cosine_lambda`, per
        iteration (ACL's schedule). A method whose release steps its schedule otherwise (per
        epoch, or before the update) overrides this."""
        return warmup_cosine_lambda(
            total_steps, round(recipe.warmup_epochs * steps_per_epoch), recipe.min_lr_ratio,
            start_ratio=recipe.warmup_start,
        )

    def export_state_dict(self, model: ContrastiveModel) -> dict[str, torch.Tensor]:
        """The state written to the pretraining stage's ``encoder.pt``: its ``encoder.*`` tensors are
        the encoder that finetuning loads. Default: the trained model's whole state. A method that
        finetunes another copy (DynACL's momentum encoder) returns that copy under ``encoder.``."""
        return model.state_dict()

    def on_epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        """Per-epoch hook; returns values to log (e.g. an adaptive weight)."""
        return {}

    def recipe_notes(self, recipe: Recipe) -> list[str]:
        """How the method's own schedule under ``recipe`` differs from its published one (a record's
        recipe deviations beyond :func:`benchmark.config.recipe_deviations`); default: none."""
        return []

    def epoch_indices(self, epoch: int, epochs: int, context: EpochContext) -> torch.Tensor | None:
        """The pretraining images (a 1-d tensor of indices into ``context.images``) that ``epoch``
        trains on; None: all of them (the default: ``N // batch_size`` steps, the last partial batch
        dropped). Called after :meth:`on_epoch_start`, before the epoch's first step. The loop
        shuffles the indices with the epoch's seeded permutation, runs :func:`subset_steps` steps
        (the last batch may be partial, as a DataLoader without ``drop_last`` gives it) and
        refreshes the learning rate of the epoch's first update after the call (a method whose
        schedule follows the epoch's length updates the state its :meth:`lr_lambda` reads here).
        Values put in ``context.logs`` go into the epoch's history entry and, with the epoch and
        the number of images, into the summary's ``subsets`` (RCS: its coreset selections). A
        method that draws random numbers here draws them from generators seeded from
        ``context.seed`` so that a run (and a resumed run) is reproducible."""
        return None

    @abc.abstractmethod
    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        """One step: make views (and adversarial views), return (loss, logs). No backward.

        Logs are detached 0-d tensors (summed on the device: no host sync) or plain numbers.
        """

    def gather(self, z: torch.Tensor) -> torch.Tensor:
        """The global batch's embeddings: [V, B_local, D] -> [V, B_global, D], gradient-carrying.

        Under torchrun (:mod:`benchmark.distributed`) a method calls this on the stack it hands
        to the contrastive loss, and in attack objectives whose negatives are global (ACL, AdvCL;
        RoCL attacks with per-GPU negatives). In one process it returns ``z`` itself.
        """
        return distributed.gather_views(z)

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a resume (e.g. running means)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`state_dict` returned."""
