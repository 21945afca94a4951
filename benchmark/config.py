"""Presets and stage configurations: frozen dataclasses validated at construction.

A preset fixes the data, the backbone, and how each stage is scaled:

| preset | data | backbone | pretraining | where |
|---|---|---|---|---|
| ``smoke`` | digits (16x16, 128-image subset) | resnet10-tiny | 1 epoch | tests, seconds per stage |
| ``quick`` | digits (native 8x8) | resnet10-tiny | 20 epochs, CPU recipe (``QUICK_RECIPE``), eps 2/16, adapted views, all 360 test images | the README's main command, 2 CPU cores |
| ``paper`` | CIFAR-10/100, STL-10 | resnet18 (STL-10: resnet18-imagenet) | each method's published recipe | GPU |

Every record stores its preset; leaderboards never mix presets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from benchmark.augment import ViewAdaptation
from benchmark.errors import ConfigError, unknown
from benchmark.protocols import UNIFORM
from benchmark.protocols import finetune_config as protocol_finetune_config
from benchmark.schemes import EPS, FinetuneConfig
from methods import method_class
from methods.base import Recipe


@dataclass(frozen=True)
class EvalConfig:
    n_test: int | None = None  # None: the whole test set
    batch_size: int = 500
    seed: int = 0
    eps: float = EPS


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str
    image_size: int | None
    backbone: str
    pretrain_epochs: int | None  # None: the method's paper recipe
    pretrain_batch_size: int | None
    recipe_override: dict[str, Any] = field(default_factory=dict)
    train_limit: int | None = None  # use only the first n pretraining/finetuning images
    finetune: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-scheme overrides
    eval: EvalConfig = EvalConfig()
    description: str = ""
    backbones: dict[str, str] = field(default_factory=dict)  # per pretraining dataset: another backbone
    # every method's published augmentations, scaled to the data (identity: as published)
    augmentation: ViewAdaptation = ViewAdaptation()
    # the preset's one L-inf radius, for evaluation (``eval.eps``), the finetuning attacks and every
    # method's pretraining attack (step scaled with it); None: each one's published radius
    eps: float | None = None

    def __post_init__(self) -> None:
        if self.eps is None:
            return
        if not 0 < self.eps < 1:
            raise ConfigError(f"preset {self.name!r}: eps must be in (0, 1), got {self.eps}")
        if self.eval.eps != self.eps:
            raise ConfigError(f"preset {self.name!r}: eval.eps {self.eval.eps} is not the preset's eps {self.eps}")
        for scheme, over in self.finetune.items():
            if over.get("eps", self.eps) != self.eps:
                raise ConfigError(f"preset {self.name!r}: {scheme} finetunes at eps {over['eps']}, not {self.eps}")

    def backbone_for(self, dataset: str) -> str:
        """The backbone this preset pretrains on ``dataset`` (``backbone`` unless ``backbones``
        names another, e.g. the ImageNet-stem ResNet-18 that the STL-10 releases train at 96 px)."""
        return self.backbones.get(dataset, self.backbone)

    def recipe(self, paper: Recipe, loss_scale: float = 1.0) -> Recipe:
        """The recipe a method runs under this preset (its paper recipe, scaled).

        ``loss_scale``: how many times ACL's ``(NT + NT) / 2`` the method's released loss is (the
        method's ``loss_scale``; AIR: 2). The paper recipes' LARS step does not depend on it; a
        preset that replaces LARS by SGD runs at ``lr / scale`` and ``weight_decay * scale``, which
        takes exactly the steps of SGD at ``lr``, ``weight_decay`` on the loss divided by the scale
        (momentum included), so that every ACL-form loss trains at the step the preset was chosen with.
        """
        if self.name == "paper":
            return paper
        changes = dict(self.recipe_override)
        if self.pretrain_epochs is not None:
            changes["epochs"] = self.pretrain_epochs
        if self.pretrain_batch_size is not None:
            changes["batch_size"] = self.pretrain_batch_size
        if self._rescales(paper, loss_scale):
            changes["lr"] = changes.get("lr", paper.lr) / loss_scale
            changes["weight_decay"] = changes.get("weight_decay", paper.weight_decay) * loss_scale
        return paper.replace(**changes, source=f"{self.name} preset (scaled from: {paper.source})")

    def _rescales(self, paper: Recipe, loss_scale: float) -> bool:
        return loss_scale != 1.0 and self.name != "paper" and paper.optimizer == "lars" and \
            self.recipe_override.get("optimizer", paper.optimizer) == "sgd"

    def loss_scale_notes(self, paper: Recipe, loss_scale: float) -> list[str]:
        """The record's note on :meth:`recipe`'s loss-scale rule, where it applied."""
        if not self._rescales(paper, loss_scale):
            return []
        return [f"loss scale {loss_scale:g}: the released loss is {loss_scale:g}x ACL's (NT + NT) / 2, which the "
                f"paper's LARS ignores; this preset's SGD runs at lr / {loss_scale:g} and weight decay x "
                f"{loss_scale:g}, the steps of SGD on the loss / {loss_scale:g}"]

    def finetune_config(self, scheme: str, dataset: str, selection: str = "last", *, protocol: str = UNIFORM,
                        method: str = "", finetune_dataset: str | None = None) -> FinetuneConfig:
        """The finetuning recipe of ``scheme`` under ``protocol``, scaled by this preset's overrides
        (and attacking at the preset's ``eps`` when it has one)."""
        # the view adaptation's ``flip`` applies to finetuning's crop-and-flip too
        overrides = {**({"eps": self.eps} if self.eps is not None else {}),
                     **({} if self.augmentation.flip else {"flip": False}), **self.finetune.get(scheme, {})}
        return protocol_finetune_config(protocol, method, scheme, dataset, finetune_dataset or dataset,
                                        selection=selection, overrides=overrides)

    def method_params(self, method: str, dataset: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """``params`` (a run's overrides of method ``method``'s parameters) with this preset's attack
        radius: with a preset ``eps``, a method with an attack (``eps`` and ``attack_step``
        parameters) attacks at that radius with its published step-to-radius ratio. The run's own
        ``params`` win."""
        params = dict(params or {})
        if self.eps is None:
            return params
        published = method_class(method)(dataset=dataset).params
        names = {f.name for f in dataclasses.fields(published)}
        if not {"eps", "attack_step"} <= names:
            return params
        ratio = published.attack_step / published.eps
        return {"eps": self.eps, "attack_step": round(self.eps * ratio, 7), **params}

    def deviations(self) -> list[str]:
        """What this preset changes beyond the recipe, for every method alike (in every record)."""
        aug, out = self.augmentation, []
        if aug.min_crop_scale > 0:
            out.append(f"augmentation: random-resized-crop scale at least {aug.min_crop_scale:g} (published 0.08-0.2)")
        if not aug.flip:
            out.append("augmentation: no horizontal flips in the pretraining views nor in finetuning (published: p 0.5)")
        if self.eps is not None:
            out.append(f"eps {self.eps:.6g} for evaluation, finetuning and pretraining attacks "
                       "(pretraining attack step scaled with it)")
        return out


# The CPU presets use one shared SGD recipe: the paper recipes' LARS learning rates assume batch
# 512 and 1000 epochs. Every record lists the resulting deviations from the paper recipe.
QUICK_RECIPE = {"optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 5e-4,
                "warmup_epochs": 1, "warmup_start": 0.1, "min_lr_ratio": 0.01, "optimizer_options": ()}

# Digits have 17 grey levels (steps of 1/16): 8/255 is half a step. The quick preset attacks at two
# steps, and adapts the published augmentations to 8x8 digits. Chosen on the validation split
# (docs/design.md).
QUICK_EPS = 2 / 16
QUICK_EPOCHS = 20

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", dataset="digits", image_size=16, backbone="resnet10-tiny",
        pretrain_epochs=1, pretrain_batch_size=32, recipe_override=dict(QUICK_RECIPE, warmup_epochs=0),
        train_limit=128,
        finetune={
            "slf": dict(epochs=2, batch_size=32, lr=0.5, milestones=()),
            "alf": dict(epochs=2, batch_size=32, lr=0.5, milestones=(), attack_steps=2, attack_step=4 / 255),
            "aff": dict(epochs=2, batch_size=32, lr=0.05, milestones=(), attack_steps=2, attack_step=4 / 255),
        },
        eval=EvalConfig(n_test=64, batch_size=64),
        description="seconds per stage, for tests",
    ),
    "quick": Preset(
        name="quick", dataset="digits", image_size=8, backbone="resnet10-tiny",
        pretrain_epochs=QUICK_EPOCHS, pretrain_batch_size=128, recipe_override=QUICK_RECIPE,
        augmentation=ViewAdaptation(min_crop_scale=0.3, flip=False), eps=QUICK_EPS,
        finetune={  # no RandomCrop shift: 1 px of 8 costs the linear probe 5 points (validation)
            "slf": dict(epochs=20, batch_size=128, lr=0.1, milestones=(12, 16), crop_padding=0),
            "alf": dict(epochs=8, batch_size=128, lr=0.1, milestones=(5, 7), attack_steps=3,
                        attack_step=QUICK_EPS / 2, crop_padding=0),
            "aff": dict(epochs=15, batch_size=128, lr=0.1, milestones=(10, 13), attack_steps=3,
                        attack_step=QUICK_EPS / 2, crop_padding=0),
        },
        eval=EvalConfig(n_test=None, batch_size=500, eps=QUICK_EPS),
        description="the whole digits pipeline in minutes on 2 CPU cores",
    ),
    "paper": Preset(
        name="paper", dataset="cifar10", image_size=None, backbone="resnet18",
        pretrain_epochs=None, pretrain_batch_size=None,
        eval=EvalConfig(n_test=None, batch_size=500),
        description="each method's published recipe, ResNet-18, full test sets (GPU)",
        backbones={"stl10": "resnet18-imagenet"},  # 96 px: the released 7x7 stride-2 stem + max-pool
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise unknown("preset", name, PRESETS) from None


def recipe_deviations(used: Recipe, paper: Recipe) -> list[str]:
    """Human-readable differences between the recipe that ran and the published one."""
    out = []
    a, b = used.to_dict(), paper.to_dict()
    for k in a:
        if k != "source" and a[k] != b[k]:
            out.append(f"{k} {a[k]} (paper {b[k]})")
    return out
