"""Optimisers and learning-rate schedules for acbench pretraining (docs/methods.md).

* :class:`LARS`: layer-wise adaptive rate scaling (You, Gitman, Ginsburg, "Large Batch Training
  of Convolutional Networks", 2017) with the options needed to reproduce both ACL's LARS and
  RoCL's torchlars-over-SGD.
* :func:`warmup_cosine_lambda`: per-iteration linear warm-up then cosine decay, as a multiplier
  for :class:`torch.optim.lr_scheduler.LambdaLR`.
* :func:`build_optimizer`: "sgd" | "lars" | "adam" by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["LARS", "warmup_cosine_lambda", "build_optimizer", "OPTIMIZERS"]


class LARS(Optimizer):
    r"""SGD with momentum and layer-wise adaptive rate scaling (LARS).

    For every parameter tensor ``w`` with gradient ``g`` (one "layer"), each step computes

    .. code-block:: text

        trust = eta * ||w|| / (||g|| + weight_decay * ||w|| + eps)   if ||w|| > 0 and ||g|| > 0
              = 1                                                    otherwise
        d     = trust * (g + weight_decay * w)

    and then, with ``lr`` the group's current learning rate,

    * ``lr_in_momentum=True`` (ACL):        ``buf = momentum * buf + lr * d``;  ``w -= buf``
    * ``lr_in_momentum=False`` (torchlars): ``buf = momentum * buf + d``;       ``w -= lr * buf``

    (the buffer starts at zero, i.e. ``buf = lr * d`` / ``buf = d`` on the first step). The two
    forms coincide while ``lr`` is constant and differ only in how a changing learning rate
    (warm-up, cosine) acts on the momentum already accumulated. Note that ``||g||`` is the norm
    of the raw gradient, without the weight-decay term, in both originals.

    Mapping of the released optimisers:

    * ACL (VITA-Group/Adversarial-Contrastive-Learning, ``optimizer/lars.py``), used on all
      parameters: ``LARS(params, lr, momentum=0.9, weight_decay=1e-6, eta=1e-3, eps=0.0,
      lr_in_momentum=True)``. (ACL's guard sets trust 1 when a norm is below 1e-15 rather than
      exactly 0; the difference is immaterial.)
    * RoCL (Kim-Minseon/RoCL): ``torchlars.LARS(SGD(params, lr, momentum=0.9, weight_decay=wd),
      eps=1e-8, trust_coef=0.001)`` is ``LARS(params, lr, momentum=0.9, weight_decay=wd,
      eta=1e-3, eps=1e-8, lr_in_momentum=False)`` (SGD with dampening 0, no Nesterov; torchlars
      applies SGD's weight decay itself before the trust scaling, exactly as above).

    ``exclude_bias_and_bn=True`` (not used by ACL or RoCL; the SimCLR/BYOL convention) skips both
    weight decay and the trust scaling for parameters with ``ndim <= 1`` (biases, BN affine
    parameters): they get a plain momentum-SGD update. ``clip_lr=True`` caps the trust ratio at
    the learning rate, ``trust <- min(trust / lr, 1)``, so that a layer's step is ``lr * min(trust,
    lr) / lr`` of its gradient, never above plain SGD's. Every option is also a per-group setting.

    * solo-learn @f4a3279 (``solo/utils/lars.py``, PyTorch Lightning's ``LARSWrapper`` over
      ``SGD(momentum=0.9)``; DeACL's teacher, ``--lars --grad_clip_lars --eta_lars 0.02
      --exclude_bias_n_norm``): ``LARS(params, lr, momentum=0.9, weight_decay=wd, eta=0.02,
      eps=1e-8, exclude_bias_and_bn=True, lr_in_momentum=False, clip_lr=True)``. (The wrapper
      leaves a layer whose gradient is exactly zero without weight decay; here it gets
      ``wd * w``.)

    Args:
        params: parameters or parameter groups.
        lr: base learning rate (> 0 or 0); schedulers change ``group["lr"]`` as usual.
        momentum: momentum factor in ``[0, 1)``; 0 disables the buffer.
        weight_decay: L2 coefficient ``>= 0``.
        eta: trust coefficient ``> 0`` (ACL ``eta``, torchlars ``trust_coef``).
        eps: ``>= 0`` added to the trust-ratio denominator (torchlars ``eps``).
        exclude_bias_and_bn: see above.
        lr_in_momentum: see above; ``True`` follows ACL, ``False`` torchlars/SGD.
        clip_lr: see above (solo-learn's ``grad_clip_lars``).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = LARS(model.parameters(), lr=5.0, momentum=0.9, weight_decay=1e-6)
        >>> model(torch.randn(8, 4)).pow(2).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        eps: float = 0.0,
        exclude_bias_and_bn: bool = False,
        lr_in_momentum: bool = True,
        clip_lr: bool = False,
    ) -> None:
        if not (lr >= 0.0 and math.isfinite(lr)):
            raise ValueError(f"LARS: invalid learning rate {lr!r} (need a finite value >= 0)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: invalid momentum {momentum!r} (need 0 <= momentum < 1)")
        if not weight_decay >= 0.0:
            raise ValueError(f"LARS: invalid weight_decay {weight_decay!r} (need >= 0)")
        if not eta > 0.0:
            raise ValueError(f"LARS: invalid trust coefficient eta {eta!r} (need > 0)")
        if not eps >= 0.0:
            raise ValueError(f"LARS: invalid eps {eps!r} (need >= 0)")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            eps=eps,
            exclude_bias_and_bn=bool(exclude_bias_and_bn),
            lr_in_momentum=bool(lr_in_momentum),
            clip_lr=bool(clip_lr),
        )
        super().__init__(params, defaults)

    @staticmethod
    def trust_ratio(p: Tensor, g: Tensor, weight_decay: float, eta: float, eps: float) -> Tensor:
        """Layer-wise trust ratio (0-d tensor on ``p``'s device), 1 if ``||w||`` or ``||g||`` is 0."""
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        w_norm = torch.linalg.vector_norm(p.detach(), dtype=dtype)
        g_norm = torch.linalg.vector_norm(g, dtype=dtype)
        return LARS._trust(w_norm, g_norm, weight_decay, eta, eps)

    @staticmethod
    def _trust(w_norm: Tensor, g_norm: Tensor, weight_decay: float, eta: float, eps: float) -> Tensor:
        """The trust ratio from the norms (elementwise over stacked layers)."""
        ratio = eta * w_norm / (g_norm + weight_decay * w_norm + eps)
        return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the loss (optional).

        Multi-tensor (``torch._foreach_*``) over each group's parameters, with no host sync: a
        per-parameter loop of a dozen small ops cost ResNet-18 ~50 ms of launches per step on an
        H200 (results/perf/h200.md). Each element sees the same operations in the same order as
        the per-parameter rule above (on the CPU the values are bit-identical to such a loop).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("LARS does not support sparse gradients")
            if not params:
                continue
            lr, momentum = group["lr"], group["momentum"]
            exclude = group["exclude_bias_and_bn"]
            lr_in_momentum = group["lr_in_momentum"]
            plain = [p for p in params if exclude and p.ndim <= 1]
            d = dict(zip(plain, torch._foreach_mul([p.grad for p in plain], 1.0) if plain else []))  # copies
            scaled: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in params:  # norms are stacked per device and dtype
                if not (exclude and p.ndim <= 1):
                    scaled.setdefault((p.device, p.dtype), []).append(p)
            for ps in scaled.values():
                d.update(zip(ps, self._scaled_updates(ps, group)))
            ds = [d[p] for p in params]  # the group's order
            if lr_in_momentum:
                torch._foreach_mul_(ds, lr)
            if momentum != 0:
                bufs, fresh = [], []
                for p, dp in zip(params, ds):
                    buf = self.state[p].get("momentum_buffer")
                    (fresh if buf is None else bufs).append((p, dp))
                for p, dp in fresh:
                    self.state[p]["momentum_buffer"] = dp.clone()
                if bufs:
                    old = [self.state[p]["momentum_buffer"] for p, _ in bufs]
                    torch._foreach_mul_(old, momentum)
                    torch._foreach_add_(old, [dp for _, dp in bufs])
                ds = [self.state[p]["momentum_buffer"] for p in params]
            if lr_in_momentum:
                torch._foreach_sub_(params, ds)
            else:
                torch._foreach_add_(params, ds, alpha=-lr)
        return loss

    def _scaled_updates(self, ps: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
        """``trust * (g + wd * w)`` of parameters ``ps`` (one device and dtype), as new tensors."""
        lr, wd, eta, eps = group["lr"], group["weight_decay"], group["eta"], group["eps"]
        clip = group.get("clip_lr", False)  # optimiser states saved before the option: off
        gs = [p.grad for p in ps]
        # fp32 norms of half-precision parameters (as trust_ratio); no cast (a copy) otherwise
        dtype = None if ps[0].dtype in (torch.float32, torch.float64) else torch.float32
        w_norm = torch.stack(torch._foreach_norm([p.detach() for p in ps], 2, dtype=dtype))
        g_norm = torch.stack(torch._foreach_norm(gs, 2, dtype=dtype))
        trust = self._trust(w_norm, g_norm, wd, eta, eps).to(ps[0].dtype)  # every layer at once
        if clip and lr > 0:  # solo-learn: min(new_lr / lr, 1) (at lr 0 nothing moves)
            trust = torch.clamp(trust / lr, max=1.0)
        d = torch._foreach_add(gs, ps, alpha=wd) if wd != 0 else torch._foreach_mul(gs, 1.0)
        torch._foreach_mul_(d, list(trust.unbind()))
        return d


def warmup_cosine_lambda(
    total_steps: int,
    warmup_steps: int,
    min_ratio: float = 0.0,
    start_ratio: float = 0.0,
) -> Callable[[int], float]:
    """Learning-rate multiplier ``step -> factor`` for per-iteration warm-up + cosine decay.

    .. code-block:: text

        step <  warmup_steps:  start_ratio + (1 - start_ratio) * step / warmup_steps
        step >= warmup_steps:  min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2,
                               t = (step - warmup_steps) / (total_steps - warmup_steps)

    so the factor is ``start_ratio`` at step 0 (0 by default: ACL's schedule, whose first
    iteration has learning rate 0), 1 at ``step = warmup_steps``, ``(1 + min_ratio) / 2`` half-way
    through the cosine phase and ``min_ratio`` at ``step = total_steps`` (and after it). Use with
    :class:`torch.optim.lr_scheduler.LambdaLR` and call ``scheduler.step()`` once per iteration.

    ACL: ``warmup_cosine_lambda(E * n_iter, 10 * n_iter, min_ratio=1e-6 / lr)`` (docs/methods.md, cosine
    to an absolute 1e-6). A "warm-up x k" schedule such as RoCL's (from ``lr`` to ``k * lr``) is
    peak learning rate ``k * lr`` with ``start_ratio = 1 / k``.

    Args:
        total_steps: iterations in the whole run (``>= 1``).
        warmup_steps: warm-up iterations, ``0 <= warmup_steps <= total_steps``.
        min_ratio: final factor, in ``[0, 1]``.
        start_ratio: factor at step 0, in ``[0, 1]``.

    Example:
        >>> f = warmup_cosine_lambda(total_steps=100, warmup_steps=10, min_ratio=0.01)
        >>> f(0), f(10), round(f(55), 6), f(100)
        (0.0, 1.0, 0.505, 0.01)
    """
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be an integer in [0, total_steps={total_steps}], got {warmup_steps!r}"
        )
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio!r}")
    if not 0.0 <= start_ratio <= 1.0:
        raise ValueError(f"start_ratio must be in [0, 1], got {start_ratio!r}")
    total, warm = int(total_steps), int(warmup_steps)
    min_ratio, start_ratio = float(min_ratio), float(start_ratio)

    def factor(step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step!r}")
        if step < warm:
            return start_ratio + (1.0 - start_ratio) * step / warm
        if total == warm:  # no decay phase
            return 1.0 if step < total else min_ratio
        t = min((step - warm) / (total - warm), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def _sgd(params, lr, momentum, weight_decay, **kw):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)


def _lars(params, lr, momentum, weight_decay, **kw):
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)


def _adam(params, lr, momentum, weight_decay, **kw):
    betas = kw.pop("betas", (momentum, 0.999))
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, **kw)


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"sgd": _sgd, "lars": _lars, "adam": _adam}


def build_optimizer(
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    **kw: Any,
) -> Optimizer:
    """Build an optimiser by (case-insensitive) name.

    * ``"sgd"``: :class:`torch.optim.SGD` (``kw``: ``nesterov``, ``dampening``, ...).
    * ``"lars"``: :class:`LARS` (``kw``: ``eta``, ``eps``, ``exclude_bias_and_bn``,
      ``lr_in_momentum``, ``clip_lr``).
    * ``"adam"``: :class:`torch.optim.Adam` with ``betas=(momentum, 0.999)`` unless ``betas`` is
      given in ``kw``; ``weight_decay`` is Adam's L2 term.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).

    Example:
        >>> opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), "lars", lr=5.0,
        ...                       weight_decay=1e-6, eta=1e-3)
        >>> type(opt).__name__
        'LARS'
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; known optimizers: {', '.join(sorted(OPTIMIZERS))}"
        )
    return OPTIMIZERS[key](params, lr, momentum, weight_decay, **kw)
