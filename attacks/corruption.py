"""``corruption``: common-corruption accuracy (RobustSSL's "CA"), a metric rather than an attack.

It measures accuracy on 75 corrupted copies of the test set (15 corruptions x severities 1-5,
:mod:`benchmark.corruptions`): the CIFAR-10-C / CIFAR-100-C files for cifar10 / cifar100, the test
images corrupted here for the embedded datasets. The metric is the mean over the 75 sets (equal
sizes, so it equals RobustSSL's mean over severities of the mean over corruptions); the record keeps
every set's accuracy. Evaluation hands it the sets (:func:`benchmark.corruptions.corrupted_sets`)
through :meth:`CorruptionAccuracy.measure`; it has no perturbation of the given images to offer, so
calling it as an attack is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks.base import ATTACKS, eval_mode
from benchmark.corruptions import CORRUPTIONS, SEVERITIES, CorruptedSets
from benchmark.errors import ConfigError


@dataclass
class CorruptionAccuracy:
    """Accuracy on each corrupted set, model in eval mode, batches of ``batch_size``; ``seed`` seeds
    the sets this module's caller generates (embedded datasets)."""

    seed: int = 0
    batch_size: int = 500
    whole_set = True  # it never sees per-batch slices of the test set

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise ConfigError("corruption is a metric over corrupted test sets, not an attack on given images: "
                          "benchmark.evaluate.evaluate_classifier measures it")

    def measure(self, model: nn.Module, sets: CorruptedSets,
                device: torch.device | None = None) -> tuple[float, dict[str, list[float]]]:
        """(mean accuracy over the 75 sets, {corruption: [accuracy at severity 1..5]}), in percent."""
        device = device or next(model.parameters()).device
        per: dict[str, list[float]] = {}
        with eval_mode(model), torch.no_grad():
            for name in CORRUPTIONS:
                per[name] = []
                for severity in SEVERITIES:
                    x, y = sets.get(name, severity)
                    correct = 0
                    for i in range(0, len(x), self.batch_size):
                        xb = x[i : i + self.batch_size].to(device).float() / 255
                        correct += (model(xb).argmax(1).cpu() == y[i : i + self.batch_size]).sum().item()
                    per[name].append(round(100.0 * correct / len(x), 4))
        mean = sum(sum(v) for v in per.values()) / (len(CORRUPTIONS) * len(SEVERITIES))
        return mean, per

    def settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "seed": self.seed}


@ATTACKS.register("corruption", label="CA", threat_model=None, order=50, metric=True,
                  eval_options=lambda cfg: {"seed": cfg.seed, "batch_size": cfg.batch_size})
def corruption(**options: Any) -> CorruptionAccuracy:
    allowed = {"seed", "batch_size"}
    bad = sorted(set(options) - allowed)
    if bad:
        raise TypeError(f"unexpected option(s) {', '.join(bad)} (corruption takes seed, batch_size)")
    return CorruptionAccuracy(**options)
