"""Finetuning schemes: a registry of what each scheme trains, on which loss, with which recipe.

A scheme is one file holding a :class:`Scheme` subclass registered by name; the finetuning loop
(``benchmark.finetune.run_finetune``: optimiser, schedule, augmentation, model selection,
checkpoint) is shared and asks the scheme for each batch's loss. Built in (``docs/protocol.md``):
``slf`` (standard linear), ``alf`` (adversarial linear), ``aff`` (adversarial full, TRADES).

A scheme also builds the model it trains from the pretrained encoder (:meth:`Scheme.build_model`)
and turns it into the single-BN :class:`~benchmark.models.Classifier` that is saved
(:meth:`Scheme.to_classifier`): AFF with ``FinetuneConfig.dual_bn`` trains a dual-BN model
(``benchmark.schemes.dual_bn``) and keeps its adversarial branch.

A new scheme needs no edit anywhere else: register it in a module and load that module with
``SCHEMES.load_plugin("my_pkg.my_scheme")`` (or ``acbench --plugin``), or declare it in the
``acbench.schemes`` entry-point group::

    from benchmark.schemes import SCHEMES
    from benchmark.schemes.slf import StandardLinear

    @SCHEMES.register("lf-noise", label="LF-noise", order=10)
    class NoisyLinear(StandardLinear):
        def inputs(self, model, x, y, cfg):
            return (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.errors import ConfigError, check_choice
from benchmark.models import Classifier, ResNet, classifier_from_encoder
from benchmark.registry import Registry

EPS = 8 / 255
SELECTIONS = ("last", "val")
DEFAULT_ORDER = 100  # registered schemes that give no order sort after the built-in ones
_UNKNOWN_ORDER = 10**9  # names no registry knows (e.g. in old records) sort last


class Scheme(abc.ABC):
    """What one finetuning scheme says: what it trains, its per-batch loss, its protocol recipe.

    ``name``, ``label`` (table header, e.g. "SLF") and ``order`` (table column order) come from
    the registration: ``@SCHEMES.register(name, label=..., order=...)``.
    """

    trains_encoder: bool = False  # False: the encoder is frozen and only the linear head trains
    supports_dual_bn: bool = False  # True: FinetuneConfig.dual_bn may ask for a dual-BN model

    def __init__(self, name: str, label: str, order: int) -> None:
        self.name = name
        self.label = label
        self.order = order

    @abc.abstractmethod
    def paper_config(self, dataset: str) -> FinetuneConfig:
        """The uniform protocol's recipe for this scheme on ``dataset`` (before preset scaling)."""

    @abc.abstractmethod
    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig
    ) -> torch.Tensor:
        """The loss of one augmented batch ``x`` in [0, 1] with labels ``y``.

        It sets the model's mode itself (train or eval: frozen encoders keep their BN statistics)
        and makes any adversarial examples it trains on; the loop only back-propagates the result.
        """

    def build_model(
        self, encoder: ResNet, branch: str, num_classes: int, cfg: FinetuneConfig
    ) -> nn.Module:
        """The model this scheme trains, from BN branch ``branch`` of the pretrained encoder.

        Here the single-BN classifier (strict key matching). It must have ``encoder`` and ``fc``
        (the loop freezes or trains them) and map [0, 1] images to logits when called on them.
        """
        return classifier_from_encoder(encoder, branch, num_classes)

    def to_classifier(self, model: nn.Module, cfg: FinetuneConfig) -> Classifier:
        """The trained model as the single-BN classifier that is saved and evaluated."""
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _check_scheme(obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Scheme)):
        raise TypeError(f"a finetuning scheme must be a Scheme subclass, got {obj!r}")


SCHEMES: Registry[type[Scheme]] = Registry(
    "scheme",
    builtins=("benchmark.schemes.slf", "benchmark.schemes.alf", "benchmark.schemes.aff"),
    entry_points="acbench.schemes",
    check=_check_scheme,
)


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name``; an unknown name raises ``UnknownName`` (did you mean...)."""
    cls = SCHEMES.get(name)
    meta = SCHEMES.meta(name)
    return cls(name, meta.get("label", name.upper()), int(meta.get("order", DEFAULT_ORDER)))


def scheme_names() -> list[str]:
    """Registered scheme names in table order (by ``order``, then name)."""
    return sorted(SCHEMES.names(), key=scheme_sort_key)


def scheme_label(name: str) -> str:
    """A scheme's table header ("SLF"); an unregistered name's is the name in capitals."""
    return SCHEMES.meta(name).get("label", name.upper()) if name in SCHEMES else name.upper()


def scheme_sort_key(name: str) -> tuple[int, str]:
    """Sort key putting registered schemes in their order and unknown names after, alphabetically."""
    if name in SCHEMES:
        return int(SCHEMES.meta(name).get("order", DEFAULT_ORDER)), name
    return _UNKNOWN_ORDER, name


@dataclass(frozen=True)
class FinetuneConfig:
    """One finetuning run: the scheme, the optimiser, the attack it trains against, selection.

    ``branch`` names the pretrained encoder's BN branch that is finetuned ("": the one its
    checkpoint names, ``finetune_branch``). ``dual_bn`` (schemes that support it: AFF) trains
    with two BN branches, "normal" for clean images and ``branch`` for adversarial ones, and
    keeps ``branch``. ``benchmark.protocols`` makes these for each protocol.
    """

    scheme: str
    epochs: int
    batch_size: int
    lr: float
    milestones: tuple[int, ...]
    momentum: float = 0.9
    weight_decay: float = 2e-4
    attack_steps: int = 10  # ALF's PGD / AFF's TRADES inner maximisation
    attack_step: float = 2 / 255
    eps: float = EPS
    trades_beta: float = 6.0
    selection: str = "last"
    crop_padding: int = 4
    branch: str = ""
    dual_bn: bool = False
    flip: bool = True  # the finetuning augmentation's horizontal flip (a preset may drop it)

    def __post_init__(self) -> None:
        cls = SCHEMES.get(self.scheme)  # UnknownName (did you mean ...) for an unregistered scheme
        if self.dual_bn and not cls.supports_dual_bn:
            raise ConfigError(f"scheme {self.scheme!r} has no dual-BN form (dual_bn=True)")
        check_choice("selection", self.selection, SELECTIONS)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("finetuning epochs and batch size must be >= 1")
        if not 0 < self.lr < 100:
            raise ConfigError(f"finetuning learning rate must be in (0, 100), got {self.lr}")
        if not 0 < self.eps < 1 or not 0 < self.attack_step < 1:
            raise ConfigError("eps and attack step must be in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.flip:  # the published augmentation: keys of existing runs unchanged
            del d["flip"]
        return d
