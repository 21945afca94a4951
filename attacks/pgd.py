"""``pgd20``: L-inf PGD against a classifier (Madry et al., ICLR 2018)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import (
    ATTACKS,
    check_images,
    check_options,
    dataclass_options,
    eval_mode,
    project_linf,
    random_start,
)
from benchmark.errors import ConfigError


@dataclass(frozen=True)
class PGD:
    """L-inf PGD with cross-entropy loss and a uniform random start.

    The model is put in eval mode for the attack (and restored after). Only the input gets a
    gradient: ``torch.autograd.grad`` with the input alone skips every weight gradient.
    ``seed`` fixes the random start so an evaluation is reproducible.
    """

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 20
    random_start: bool = True
    seed: int | None = 0

    def __post_init__(self) -> None:
        if not 0 < self.eps < 1:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"step size must be in (0, 1), got {self.alpha}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x)
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=x.device).manual_seed(self.seed)
        with eval_mode(model):
            return perturb_ce(model, x, y, self.eps, self.alpha, self.steps, self.random_start, gen)

    def settings(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "norm": "Linf", "loss": "cross-entropy", "model_mode": "eval"}


@ATTACKS.register(
    "pgd20", label="PGD-20", threat_model="Linf", order=1, eval_options=lambda cfg: {"eps": cfg.eps, "seed": cfg.seed}
)
def pgd20(**options: Any) -> PGD:
    """PGD-20 of the protocol: eps 8/255, step 2/255, 20 steps, random start, seed 0."""
    return PGD(**check_options("pgd20", options, dataclass_options(PGD)))


def perturb_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD steps maximising cross-entropy, in the model's current mode (used by ALF too)."""
    x = x.detach()
    x_adv = random_start(x, eps, generator) if start else x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = project_linf(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()
