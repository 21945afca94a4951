"""Evaluation of a finetuned classifier: accuracy under each attack spec (fp32).

Attacks come from :func:`attacks.get_attack` with the options their registry entry takes from the
:class:`EvalConfig` (eps, seed, batch size), so a record's number is exactly what that callable
gives on the model handed in (the evaluate stage hands in
``fold_batchnorm(load_classifier(checkpoint))``), and the settings it ran with are recorded beside it.
Invariant autoattack <= pgd20 <= clean is checked and a violation is flagged, never hidden.
A metric such as ``corruption`` (registered with ``metric=True``) is measured on the
corrupted sets handed in, not by attacking ``x``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from attacks import (
    ATTACKS,
    attack_settings,
    check_attack_spec,
    eval_options,
    get_attack,
    parse_spec,
)
from benchmark.config import EvalConfig
from benchmark.corruptions import CorruptedSets
from benchmark.errors import ConfigError
from benchmark.records import ATTACK_WARNING, Flag, invariant_flags


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: str, cfg: EvalConfig
) -> tuple[float, list[str]]:
    """Accuracy (percent) of ``model`` on ``get_attack(spec)`` examples, and the attack's warnings."""
    attack = get_attack(spec, **eval_options(spec, cfg))
    bs = cfg.batch_size
    if getattr(attack, "whole_set", False):
        batches = [(attack(model, x, y), y)]  # e.g. AutoAttack: batches itself, attacks robust points only
    else:
        batches = [(attack(model, x[i : i + bs], y[i : i + bs]), y[i : i + bs]) for i in range(0, len(x), bs)]
    correct = 0
    with torch.no_grad():
        for xa, yb in batches:
            for j in range(0, len(xa), bs):
                correct += (model(xa[j : j + bs]).argmax(1) == yb[j : j + bs]).sum().item()
    return 100.0 * correct / len(x), list(getattr(attack, "last_warnings", []))


def evaluate_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list[str],
    cfg: EvalConfig,
    progress: bool = True,
    corrupted: CorruptedSets | None = None,
) -> dict[str, Any]:
    """Accuracy (percent) under each attack spec on float images ``x`` in [0, 1].

    Returns ``{"metrics": {spec: percent}, "warnings": [...], "flags": [Flag JSON],
    "attacks": {spec: settings}, "seconds": float}``, plus ``"corruption": {corruption: [percent
    at severity 1..5]}`` when ``corruption`` is among the specs (measured on ``corrupted``). Every
    spec is checked before any attack runs and keyed in its canonical form (``"PGD20"`` ->
    ``"pgd20"``, ``"ta:cw"`` -> ``"ta:CW"``).
    """
    specs = list(dict.fromkeys(check_attack_spec(spec) for spec in attacks))
    model.eval()
    t0 = time.time()
    metrics: dict[str, float | None] = {}
    settings: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    breakdown: dict[str, Any] = {}
    for spec in tqdm(specs, desc="evaluate", disable=not progress, leave=False):
        settings[spec] = attack_settings(spec, **eval_options(spec, cfg))
        if ATTACKS.meta(parse_spec(spec).name).get("metric"):
            attack = get_attack(spec, **eval_options(spec, cfg))
            if corrupted is None:
                raise ConfigError(f"{spec} needs the corrupted test sets (benchmark.corruptions.corrupted_sets)")
            metrics[spec], breakdown[spec] = attack.measure(model, corrupted, x.device)
            metrics[spec] = round(metrics[spec], 4)
            settings[spec] |= corrupted.settings()
            continue
        acc, warns = robust_accuracy(model, x, y, spec, cfg)
        metrics[spec] = round(acc, 4)
        warnings += [f"{spec}: {w}" for w in warns]
    flags = invariant_flags(metrics) + [Flag(ATTACK_WARNING, w) for w in warnings]
    return {
        "metrics": metrics,
        "warnings": warnings,
        "flags": [f.to_json() for f in flags],
        "attacks": settings,
        **breakdown,  # per-set accuracies of a metric (``corruption``), only when it ran
        "seconds": time.time() - t0,
    }
