"""``ta:NAME[:key=value...]``: any attack of torchattacks (Harry24k/adversarial-attacks-pytorch).

``ta:CW``, ``ta:FGSM``, ``ta:PGDL2:eps=0.5:steps=20``, ``ta:Square:n_queries=1000``, ... The
class's own constructor defaults apply, with three exceptions that keep evaluations comparable
and reproducible:

- an L-inf attack's budget (``eps``; ``max_epsilon`` for PI-FGSM) defaults to the evaluation's
  eps (8/255 in the protocol), not to torchattacks' value;
- ``seed`` (default 0, the evaluation's seed) seeds torch's and numpy's global generators for the
  duration of every call (their previous states are restored after) and is passed to the classes
  that take a ``seed`` (APGD, APGDT, FAB, Square, AutoAttack, whose own default is the clock);
- APGD, APGDT, FAB, Square and AutoAttack with a norm other than L-inf need an explicit ``eps``
  (torchattacks' default, 8/255, is an L-inf budget).

Other attacks keep torchattacks' defaults, e.g. PGDL2 eps 1.0, CW c 1 and 50 steps (CW and
DeepFool are minimal-perturbation L2 attacks with no budget). Every constructor argument,
defaults included, is in :meth:`TorchAttack.settings` and so in the record. The model takes [0, 1]
images and normalises inside, so torchattacks runs on it directly; it runs in eval mode with its
parameters frozen (no weight gradients).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.base import ATTACKS, check_images, frozen
from benchmark.errors import ConfigError, unknown

# torchattacks classes without a `norm` argument that are not L-inf attacks
THREAT_MODELS: dict[str, str | None] = {
    "VANILA": None, "GN": None,
    "CW": "L2", "PGDL2": "L2", "PGDRSL2": "L2", "DeepFool": "L2", "EADEN": "L2",
    "EADL1": "L1",
    "SparseFool": "L0", "OnePixel": "L0", "Pixle": "L0", "JSMA": "L0",
}
EPS_ARGUMENT = {"PIFGSM": "max_epsilon", "PIFGSMPP": "max_epsilon"}  # the others call it `eps`
LINF_EPS = 8 / 255


def _torchattacks():
    import torchattacks  # heavy (scipy); only a `ta:` spec needs it

    return torchattacks


def torchattacks_classes() -> dict[str, type]:
    """The usable torchattacks attack classes by name (its wrappers need other attacks)."""
    ta = _torchattacks()
    wrappers = set(getattr(ta, "__wrapper__", ()))
    return {n: getattr(ta, n) for n in ta.__all__ if n not in wrappers}


def _coerce(where: str, key: str, default: Any, value: Any) -> Any:
    """``value`` as the type of the argument's default (int -> float allowed), or a ConfigError."""
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) or isinstance(value, float)  # c=1 and c=0.5 are both fine for CW
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{where} option {key}={value!r}: expected {type(default).__name__} like the default {default!r}"
        )
    return value


@dataclass(frozen=True)
class TorchAttack:
    """One torchattacks attack with all its constructor arguments, run in eval mode with a seed."""

    name: str  # class name in torchattacks
    arguments: dict[str, Any] = field(default_factory=dict)  # every constructor argument but model
    seed: int = 0
    threat_model: str | None = "Linf"

    @classmethod
    def create(cls, name: str, seed: int = 0, default_eps: float = LINF_EPS, **options: Any) -> TorchAttack:
        """Resolve ``name`` (any case) and validate ``options`` against the class signature."""
        classes = torchattacks_classes()
        match = [n for n in classes if n.lower() == name.lower()]
        if not match:
            raise unknown("torchattacks attack", name, classes)
        name = match[0]
        params = list(inspect.signature(classes[name].__init__).parameters.values())[2:]  # self, model
        defaults = {p.name: p.default for p in params}
        where = f"ta:{name}"
        arguments = dict(defaults)
        for key, value in options.items():
            if key not in defaults:
                raise unknown(f"{where} option", key, dict.fromkeys([*defaults, "seed"]))
            arguments[key] = _coerce(where, key, defaults[key], value)
        if "seed" in defaults:
            arguments["seed"] = seed
        norm = arguments.get("norm")
        threat = norm if norm is not None else THREAT_MODELS.get(name, "Linf")
        eps_key = EPS_ARGUMENT.get(name, "eps")
        if eps_key in defaults and eps_key not in options:
            if threat == "Linf":
                arguments[eps_key] = float(default_eps)
            elif norm is not None:  # torchattacks' default 8/255 is an L-inf budget
                raise ConfigError(f"{where}:norm={norm} needs an explicit eps, e.g. {where}:norm={norm}:eps=0.5")
        return cls(name, arguments, int(seed), threat)

    @property
    def eps(self) -> float | None:
        return self.arguments.get(EPS_ARGUMENT.get(self.name, "eps"))

    def settings(self) -> dict[str, Any]:
        return {
            "class": f"torchattacks.{self.name}",
            "arguments": {k: list(v) if isinstance(v, tuple) else v for k, v in self.arguments.items()},
            "eps": self.eps,
            "norm": self.threat_model,
            "seed": self.seed,
            "model_mode": "eval",
            "torchattacks": _torchattacks().__version__,
        }

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x)
        with frozen(model), _seeded(self.seed, x.device):
            attack = torchattacks_classes()[self.name](model, **self.arguments)
            x_adv = attack(x, y)
        return x_adv.detach()


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's (CPU and ``device``) and numpy's global generators seeded, then restored."""
    np_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)


def _eval_options(cfg: Any) -> dict[str, Any]:
    return {"default_eps": cfg.eps, "seed": cfg.seed}


@ATTACKS.register("ta", label="torchattacks", threat_model=None, argument="torchattacks class",
                  eval_options=_eval_options)
def torchattacks_attack(name: str, **options: Any) -> TorchAttack:
    """``ta:NAME[:key=value...]``: the torchattacks class ``NAME`` with these constructor options."""
    return TorchAttack.create(name, **options)
