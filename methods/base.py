"""The base class every method extends, and the pretraining recipe it carries.

A method says only what makes it different: its views, its adversarial views, its loss, its BN
branches, its head and its published recipe. The training loop, optimiser, schedule, checkpoints
and logging live once in :mod:`benchmark.pretrain`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

import benchmark.ddp as distributed
from benchmark.models import BackboneConfig, ContrastiveModel, ResNet


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
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (contrastive losses need negatives), got {self.batch_size}")
        if not (self.lr > 0 and self.lr < 1e3):
            raise ValueError(f"learning rate must be in (0, 1000), got {self.lr}")
        if self.optimizer not in ("sgd", "lars", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use sgd, lars or adam")
        if self.warmup_epochs < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("warmup_epochs must be >= 0 and min_lr_ratio in [0, 1]")

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


_SIMPLE_TYPES = {"None", "bool", "int", "float", "str"}


def _checked_param(method: str, f: dataclasses.Field, value: Any) -> Any:
    """``value`` if it fits parameter ``f``'s annotation (int for float is fine), else ValueError."""
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    allowed = {a.strip() for a in ann.split("|")}
    if not allowed <= _SIMPLE_TYPES:
        return value  # an annotation this check does not know: left to validate()
    if isinstance(value, float) and "float" in allowed and not math.isfinite(value):
        raise ValueError(f"method {method!r}: parameter {f.name!r} must be finite, got {value!r}")
    ok = (
        (value is None and "None" in allowed)
        or (isinstance(value, bool) and "bool" in allowed)
        or (isinstance(value, int) and not isinstance(value, bool) and allowed & {"int", "float"})
        or (isinstance(value, float) and "float" in allowed)
        or (isinstance(value, str) and "str" in allowed)
    )
    if not ok:
        raise ValueError(
            f"method {method!r}: parameter {f.name!r} must be {' or '.join(sorted(allowed))}, got {value!r}"
        )
    return value


class Method:
    """Base class of a pretraining method.

    Subclasses set the class attributes, define a frozen dataclass ``Params`` of their
    hyper-parameters, and implement :meth:`build_head`, :meth:`setup` and :meth:`training_step`.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # "Author et al., Venue Year"
    summary: ClassVar[str] = ""  # one line: what the method changes
    branches: ClassVar[tuple[str, ...]] = ("normal",)  # BN branches of the encoder
    finetune_branch: ClassVar[str] = "normal"  # the branch turned into the classifier
    normalize_input: ClassVar[bool] = True  # RoCL feeds raw [0, 1] images to the network
    requires: ClassVar[tuple[str, ...]] = ()  # upstream stages, e.g. ("pseudo_labels",)
    # per pretraining dataset: parameter defaults that differ from ``Params()``'s
    dataset_params: ClassVar[dict[str, dict[str, Any]]] = {}

    @dataclass(frozen=True)
    class Params:
        temperature: float = 0.5

    def __init__(self, dataset: str | None = None, **overrides: Any):
        defaults = dict(self.dataset_params.get(dataset or "", {}))
        fields = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no parameter {unknown[0]!r}; its parameters: "
                + ", ".join(sorted(fields))
            )
        by_name = {f.name: f for f in dataclasses.fields(self.Params)}
        overrides = {k: _checked_param(self.name, by_name[k], v) for k, v in overrides.items()}
        self.dataset = dataset
        self.params = self.Params(**{**defaults, **overrides})
        self.validate()

    # ---- description -------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError on invalid parameters (called at construction)."""
        p = self.params
        if getattr(p, "temperature", 1.0) <= 0:
            raise ValueError("temperature must be > 0")
        for name in ("eps", "attack_step"):
            v = getattr(p, name, None)
            if v is not None and not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        steps = getattr(p, "attack_steps", None)
        if steps is not None and steps < 1:
            raise ValueError(f"attack_steps must be >= 1, got {steps}")

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paper": self.paper,
            "summary": self.summary,
            "branches": list(self.branches),
            "finetune_branch": self.finetune_branch,
            "params": dataclasses.asdict(self.params),
            "paper_recipe": self.paper_recipe(self.dataset).to_dict(),
        }

    # ---- model ---------------------------------------------------------------------------
    def build_head(self, feature_dim: int) -> nn.Module:
        raise NotImplementedError

    def build_extra_heads(self, feature_dim: int) -> nn.ModuleDict:
        return nn.ModuleDict()

    def build_model(self, backbone: BackboneConfig) -> ContrastiveModel:
        if not self.normalize_input:
            backbone = dataclasses.replace(
                backbone, mean=(0.0,) * backbone.in_channels, std=(1.0,) * backbone.in_channels
            )
        encoder = ResNet(backbone, branches=self.branches)
        return ContrastiveModel(
            encoder,
            self.build_head(encoder.feature_dim),
            self.build_extra_heads(encoder.feature_dim),
        )

    # ---- training ------------------------------------------------------------------------
    def setup(self, image_size: int, device: torch.device, extras: dict[str, Any]) -> None:
        """Build augmentation modules etc. before the first step."""

    def on_epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        """Per-epoch hook; returns values to log (e.g. an adaptive weight)."""
        return {}

    def training_step(
        self, model: ContrastiveModel, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One step: make views (and adversarial views), return (loss, logs). No backward."""
        raise NotImplementedError

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
