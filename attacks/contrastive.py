"""PGD on a contrastive objective: the adversarial views of pretraining.

ACL, RoCL and AdvCL all perturb one or more views jointly to maximise a loss that is a function
of the perturbed views only. The attack never computes weight gradients: the loss is
differentiated with respect to the perturbed inputs alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attacks.base import project_linf, random_start


def contrastive_pgd(
    loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
    inputs: Sequence[torch.Tensor],
    eps: float,
    alpha: float,
    steps: int,
    start: bool = True,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Jointly perturb ``inputs`` within an L-inf eps-ball (and [0, 1]) to maximise ``loss_fn``.

    ``loss_fn`` receives the list of perturbed inputs and returns a scalar. The caller chooses the
    model mode and BN branch inside ``loss_fn``. Returns detached adversarial inputs.
    """
    clean = [x.detach() for x in inputs]
    adv = [random_start(x, eps, generator) if start else x.clone() for x in clean]
    for _ in range(steps):
        for a in adv:
            a.requires_grad_(True)
        loss = loss_fn(adv)
        grads = torch.autograd.grad(loss, adv)
        adv = [project_linf(a.detach() + alpha * g.sign(), x, eps) for a, g, x in zip(adv, grads, clean)]
    return [a.detach() for a in adv]
