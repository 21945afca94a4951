"""Attack registry: ``get_attack(name, **overrides)`` -> callable ``(model, x, y) -> x_adv``.

Images are float tensors in [0, 1]; the model maps them to logits. Evaluation uses exactly these
callables, so a number in a record is what ``get_attack(name)(model, x, y)`` gives.

| name | definition |
|---|---|
| ``clean`` | the images themselves |
| ``pgd20`` | L-inf PGD, eps 8/255, step 2/255, 20 steps, uniform random start, CE, eval mode, seed 0 |
| ``autoattack`` | AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), L-inf eps 8/255 (pyautoattack) |
| ``aa-lite`` | APGD-CE + APGD-T only: for development, never reported as AutoAttack |
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attacks.autoattack import AutoAttackLinf
from attacks.base import AttackInputError, check_images, eval_mode
from attacks.contrastive import contrastive_pgd
from attacks.pgd import PGD

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _clean(**kw: Any) -> Attack:
    if kw:
        raise ValueError(f"attack 'clean' takes no options, got {sorted(kw)}")

    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return x

    return attack


ATTACKS: dict[str, Callable[..., Attack]] = {
    "clean": _clean,
    "pgd20": lambda **kw: PGD(**{"eps": 8 / 255, "alpha": 2 / 255, "steps": 20, **kw}),
    "autoattack": lambda **kw: AutoAttackLinf(**{"version": "standard", **kw}),
    "aa-lite": lambda **kw: AutoAttackLinf(**{"version": "lite", **kw}),
}


class UnknownAttack(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def attack_names() -> list[str]:
    return list(ATTACKS)


def get_attack(name: str, **overrides: Any) -> Attack:
    """The attack ``name`` with its defaults updated by ``overrides`` (e.g. ``eps=4/255``)."""
    if name not in ATTACKS:
        close = difflib.get_close_matches(name, list(ATTACKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownAttack(f"unknown attack {name!r}{hint}; available: {', '.join(ATTACKS)}")
    try:
        return ATTACKS[name](**overrides)
    except TypeError as e:
        raise ValueError(f"bad option for attack {name!r}: {e}") from None


__all__ = [
    "ATTACKS",
    "PGD",
    "Attack",
    "AttackInputError",
    "AutoAttackLinf",
    "UnknownAttack",
    "attack_names",
    "check_images",
    "contrastive_pgd",
    "eval_mode",
    "get_attack",
]
