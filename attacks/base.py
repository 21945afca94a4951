"""Shared pieces of every attack: the registry, input checks, model mode handling, projection.

An attack is a callable ``(model, x, y) -> x_adv`` on float images in [0, 1] (the model maps
them to logits and normalises inside). It is built by a factory registered in :data:`ATTACKS`::

    @ATTACKS.register("fgsm", label="FGSM", threat_model="Linf",
                      eval_options=lambda cfg: {"eps": cfg.eps})
    def fgsm(**options) -> Attack: ...

Registry metadata (all optional except ``label``):

- ``label``: the column label in tables ("PGD-20", "AutoAttack", ...);
- ``threat_model``: ``"Linf"``, ``"L2"``, ... or ``None`` (no perturbation budget);
- ``eval_options``: ``cfg -> dict``, the factory options taken from the evaluation config
  (anything with ``eps``, ``seed`` and ``batch_size``, e.g. ``benchmark.config.EvalConfig``);
- ``order``: where the attack comes in :func:`attacks.attack_names` (weakest first);
- ``metric``: True for a metric that is not an attack on the test images (``corruption``): the
  object's ``measure(model, sets)`` gives its accuracy (see ``benchmark.evaluate``);
- ``argument``: set for a family of attacks (``ta`` = torchattacks): a spec names a member,
  ``NAME:MEMBER[:key=value...]``, and the factory is called as ``factory(MEMBER, **options)``.

An attack object may also have ``whole_set = True`` (evaluation hands it the whole test set at
once instead of batches, e.g. AutoAttack, which batches internally and attacks only the points
still classified correctly), ``last_warnings`` (reliability warnings of its last call, written into
the record) and ``settings() -> dict`` (every parameter it runs with, JSON-serialisable).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from benchmark.errors import AcbenchError, ConfigError, unknown
from benchmark.registry import Registry

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_factory(obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"an attack factory must be callable, got {obj!r}")


ATTACKS: Registry[Callable[..., Attack]] = Registry(
    "attack",
    builtins=("attacks.clean", "attacks.pgd", "attacks.autoattack", "attacks.zoo", "attacks.corruption"),
    entry_points="acbench.attacks",
    check=_check_factory,
)


class AttackInputError(AcbenchError, ValueError):
    """Images handed to an attack are not what every attack assumes (float, in [0, 1])."""


def check_images(x: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise AttackInputError(f"attacks take float images in [0, 1], got dtype {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise AttackInputError(
            f"attacks take images in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]"
        )


def check_options(attack: str, options: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    """``options`` if every key is in ``allowed``, else an "unknown <attack> option" error."""
    for key in options:
        if key not in allowed:
            if not allowed:
                raise ConfigError(f"attack {attack!r} takes no options, got {sorted(options)}")
            raise unknown(f"{attack} option", key, allowed)
    return options


def dataclass_options(cls: type, exclude: tuple[str, ...] = ()) -> list[str]:
    """The constructor arguments of dataclass ``cls`` (the options its factory accepts)."""
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in exclude]


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


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters not requiring gradients for the duration (then restored), model in eval mode.

    For attack libraries that call ``loss.backward()`` (pyautoattack's FAB): the input gradient is
    the same, the weight gradients are no longer computed, nor accumulated into ``p.grad``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        try:
            for p in params:
                p.requires_grad_(False)
            yield
        finally:
            for p in params:
                p.requires_grad_(True)


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf eps-ball around x and onto the image box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(-eps, eps), clipped to [0, 1]."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return (x + eps * noise).clamp_(0.0, 1.0)
