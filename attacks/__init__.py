"""Attacks: ``get_attack(spec, **overrides)`` -> callable ``(model, x, y) -> x_adv``.

Images are float tensors in [0, 1]; the model maps them to logits. Evaluation uses exactly these
callables, so a number in a record is what ``get_attack(spec)(model, x, y)`` gives.

| spec | definition |
|---|---|
| ``clean`` | the images themselves |
| ``pgd20`` | L-inf PGD, eps 8/255, step 2/255, 20 steps, uniform random start, CE, eval mode, seed 0 |
| ``autoattack`` | AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), L-inf eps 8/255 (pyautoattack) |
| ``aa-lite`` | APGD-CE + APGD-T only: for development, never reported as AutoAttack |
| ``corruption`` | a metric: mean accuracy over 15 common corruptions x 5 severities (CIFAR-C), "CA" |
| ``ta:NAME[:k=v...]`` | the torchattacks class NAME, e.g. ``ta:CW``, ``ta:PGDL2:eps=0.5:steps=20`` |

A new attack is one module that registers a factory in :data:`ATTACKS` (see ``attacks/base.py``),
loaded as a built-in, through the ``acbench.attacks`` entry point or with ``acbench --plugin``.
"""

from __future__ import annotations

from attacks.autoattack import AutoAttackLinf
from attacks.base import ATTACKS, Attack, AttackInputError, check_images, eval_mode
from attacks.contrastive import contrastive_pgd
from attacks.pgd import PGD
from attacks.spec import (
    attack_label,
    attack_names,
    attack_settings,
    check_attack_spec,
    eval_options,
    get_attack,
    parse_spec,
)

__all__ = [
    "ATTACKS",
    "PGD",
    "Attack",
    "AttackInputError",
    "AutoAttackLinf",
    "attack_label",
    "attack_names",
    "attack_settings",
    "check_attack_spec",
    "check_images",
    "contrastive_pgd",
    "eval_mode",
    "eval_options",
    "get_attack",
    "parse_spec",
]
