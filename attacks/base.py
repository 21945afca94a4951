"""Shared pieces of every attack: input checks, model mode handling, projection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class AttackInputError(ValueError):
    """Images handed to an attack are not what every attack assumes (float, in [0, 1])."""


def check_images(x: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise AttackInputError(f"attacks take float images in [0, 1], got dtype {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise AttackInputError(
            f"attacks take images in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]"
        )


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the duration, then restore each one's previous mode."""
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, t in zip(modules, was):
            m.train(t)


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf eps-ball around x and onto the image box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(-eps, eps), clipped to [0, 1]."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return (x + eps * noise).clamp_(0.0, 1.0)
