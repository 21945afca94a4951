"""Evaluation of a finetuned classifier: clean, PGD-20 and AutoAttack accuracy (fp32).

Attacks come from :func:`attacks.get_attack`, so a record's number is exactly what that callable
gives on ``load_classifier(checkpoint)``. Invariant autoattack <= pgd20 <= clean is checked and a
violation is flagged, never hidden.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from attacks import get_attack
from benchmark.config import EvalConfig

ORDER = ("autoattack", "aa-lite", "pgd20", "clean")  # stronger first


def attack_options(name: str, cfg: EvalConfig) -> dict[str, Any]:
    if name == "clean":
        return {}
    if name == "pgd20":
        return {"eps": cfg.eps, "seed": cfg.seed}
    return {"eps": cfg.eps, "seed": cfg.seed, "batch_size": cfg.batch_size}


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, cfg: EvalConfig
) -> tuple[float, list[str]]:
    """Accuracy (percent) of ``model`` on ``get_attack(name)`` examples, and the attack's warnings."""
    attack = get_attack(name, **attack_options(name, cfg))
    if name in ("autoattack", "aa-lite"):
        x_adv = attack(model, x, y)  # AutoAttack batches internally and only attacks robust points
        batches = [(x_adv, y)]
    else:
        batches = [
            (attack(model, x[i : i + cfg.batch_size], y[i : i + cfg.batch_size]), y[i : i + cfg.batch_size])
            for i in range(0, len(x), cfg.batch_size)
        ]
    correct = 0
    with torch.no_grad():
        for xa, yb in batches:
            for j in range(0, len(xa), cfg.batch_size):
                correct += (model(xa[j : j + cfg.batch_size]).argmax(1) == yb[j : j + cfg.batch_size]).sum().item()
    return 100.0 * correct / len(x), list(getattr(attack, "last_warnings", []))


def invariant_flags(metrics: dict[str, float | None]) -> list[str]:
    """Flags for violations of autoattack <= pgd20 <= clean among the metrics present."""
    present = [(k, metrics[k]) for k in ("autoattack", "pgd20", "clean") if metrics.get(k) is not None]
    return [
        f"invariant: {a} {va:.2f} > {b} {vb:.2f}"
        for (a, va), (b, vb) in zip(present, present[1:])
        if va > vb + 1e-9
    ]


def evaluate_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list[str],
    cfg: EvalConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics (percent) for each attack on float images ``x`` in [0, 1], with warnings and flags."""
    model.eval()
    t0 = time.time()
    metrics: dict[str, float | None] = {}
    warnings: list[str] = []
    for name in tqdm(attacks, desc="evaluate", disable=not progress, leave=False):
        acc, warns = robust_accuracy(model, x, y, name, cfg)
        metrics[name] = round(acc, 4)
        warnings += [f"{name}: {w}" for w in warns]
    flags = invariant_flags(metrics) + [f"autoattack-warning: {w}" for w in warnings]
    return {"metrics": metrics, "warnings": warnings, "flags": flags, "seconds": time.time() - t0}
