"""``autoattack`` and ``aa-lite``: AutoAttack (Croce & Hein, ICML 2020) through ``pyautoattack``.

``pyautoattack`` is PyPI's packaging of the reference AutoAttack code. Its reliability checks
(randomised defence, logits range, dynamic model, too few classes, Square more successful than
the gradient attacks) emit warnings; they are captured and exposed as ``last_warnings`` so that
evaluation writes them into the record. The model runs in eval mode with its parameters frozen:
FAB calls ``backward()``, which would otherwise compute (and leave behind) weight gradients that
nothing uses. ``aa-lite`` (APGD-CE + APGD-T) is for development and is
never labelled AutoAttack.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attacks.base import ATTACKS, check_images, check_options, dataclass_options, frozen
from benchmark.errors import ConfigError

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
LITE = ("apgd-ce", "apgd-t")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class AutoAttackLinf:
    """AutoAttack L-inf; ``version="standard"`` is the full ensemble, ``"lite"`` APGD-CE + APGD-T."""

    eps: float = 8 / 255
    version: str = "standard"
    seed: int = 0
    batch_size: int = 500
    last_warnings: list[str] = field(default_factory=list)

    whole_set = True  # batches internally and attacks only the points still classified correctly

    def __post_init__(self) -> None:
        if not 0 < self.eps < 1:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps}")
        if self.version not in ("standard", "lite"):
            raise ConfigError(f"AutoAttack version must be 'standard' or 'lite', got {self.version!r}")

    def settings(self) -> dict[str, Any]:
        return {
            "eps": self.eps, "norm": "Linf", "version": self.version, "seed": self.seed,
            "batch_size": self.batch_size, "attacks": list(STANDARD if self.version == "standard" else LITE),
            "package": "pyautoattack",
        }

    def build(self, model: nn.Module, device: torch.device | str):
        from pyautoattack import AutoAttack

        if self.version == "standard":
            return AutoAttack(model, norm="Linf", eps=self.eps, version="standard", seed=self.seed, device=device)
        return AutoAttack(
            model, norm="Linf", eps=self.eps, version="custom", attacks=list(LITE), seed=self.seed, device=device
        )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x)
        handler = _Collect()
        logger = logging.getLogger("auto-attack")
        logger.addHandler(handler)
        old_level = logger.level
        if logger.level == logging.NOTSET or logger.level > logging.WARNING:
            logger.setLevel(logging.WARNING)
        try:
            with frozen(model), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                adversary = self.build(model, x.device)
                x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=self.batch_size)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
        msgs = [str(w.message) for w in caught] + handler.messages
        self.last_warnings = list(dict.fromkeys(m.strip() for m in msgs if m.strip()))
        return x_adv.detach()


def _eval_options(cfg: Any) -> dict[str, Any]:
    return {"eps": cfg.eps, "seed": cfg.seed, "batch_size": cfg.batch_size}


_OPTIONS = dataclass_options(AutoAttackLinf, exclude=("version", "last_warnings"))


@ATTACKS.register("autoattack", label="AutoAttack", threat_model="Linf", order=2, eval_options=_eval_options)
def autoattack(**options: Any) -> AutoAttackLinf:
    """AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), L-inf eps 8/255."""
    return AutoAttackLinf(version="standard", **check_options("autoattack", options, _OPTIONS))


@ATTACKS.register("aa-lite", label="AA-lite", threat_model="Linf", order=3, eval_options=_eval_options)
def aa_lite(**options: Any) -> AutoAttackLinf:
    """APGD-CE + APGD-T only: for development, never reported as AutoAttack."""
    return AutoAttackLinf(version="lite", **check_options("aa-lite", options, _OPTIONS))
