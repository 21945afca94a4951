"""Presets and stage configurations: frozen dataclasses validated at construction.

A preset fixes the data, the backbone, and how each stage is scaled:

| preset | data | backbone | pretraining | where |
|---|---|---|---|---|
| ``smoke`` | digits (16x16, 128-image subset) | resnet10-tiny | 1 epoch | tests, seconds per stage |
| ``quick`` | digits (16x16) | resnet10-tiny | 10 epochs, CPU recipe (``QUICK_RECIPE``), first 64 test images | the README's main command, 2 CPU cores |
| ``paper`` | CIFAR-10/100, STL-10 | resnet18 (STL-10: resnet18-imagenet) | each method's published recipe | GPU |

Every record stores its preset; leaderboards never mix presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.errors import unknown
from benchmark.protocols import UNIFORM
from benchmark.protocols import finetune_config as protocol_finetune_config
from benchmark.schemes import EPS, FinetuneConfig
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

    def backbone_for(self, dataset: str) -> str:
        """The backbone this preset pretrains on ``dataset`` (``backbone`` unless ``backbones``
        names another, e.g. the ImageNet-stem ResNet-18 that the STL-10 releases train at 96 px)."""
        return self.backbones.get(dataset, self.backbone)

    def recipe(self, paper: Recipe) -> Recipe:
        """The recipe a method runs under this preset (its paper recipe, scaled)."""
        if self.name == "paper":
            return paper
        changes = dict(self.recipe_override)
        if self.pretrain_epochs is not None:
            changes["epochs"] = self.pretrain_epochs
        if self.pretrain_batch_size is not None:
            changes["batch_size"] = self.pretrain_batch_size
        return paper.replace(**changes, source=f"{self.name} preset (scaled from: {paper.source})")

    def finetune_config(self, scheme: str, dataset: str, selection: str = "last", *, protocol: str = UNIFORM,
                        method: str = "", finetune_dataset: str | None = None) -> FinetuneConfig:
        """The finetuning recipe of ``scheme`` under ``protocol``, scaled by this preset's overrides."""
        return protocol_finetune_config(protocol, method, scheme, dataset, finetune_dataset or dataset,
                                        selection=selection, overrides=self.finetune.get(scheme, {}))


# The CPU presets use one shared SGD recipe: the paper recipes' LARS learning rates assume batch
# 512 and 1000 epochs. Every record lists the resulting deviations from the paper recipe.
QUICK_RECIPE = {"optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 5e-4,
                "warmup_epochs": 1, "warmup_start": 0.1, "min_lr_ratio": 0.01, "optimizer_options": ()}

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
        name="quick", dataset="digits", image_size=16, backbone="resnet10-tiny",
        pretrain_epochs=10, pretrain_batch_size=128, recipe_override=QUICK_RECIPE,
        finetune={
            "slf": dict(epochs=10, batch_size=128, lr=0.1, milestones=(6, 8)),
            "alf": dict(epochs=8, batch_size=128, lr=0.1, milestones=(5, 7), attack_steps=3, attack_step=4 / 255),
            # chosen on the validation split (PGD-20): lr 0.1 as in the protocol, 15 epochs
            "aff": dict(epochs=15, batch_size=128, lr=0.1, milestones=(10, 13), attack_steps=3, attack_step=4 / 255),
        },
        eval=EvalConfig(n_test=64, batch_size=500),
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
