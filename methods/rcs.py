"""RCS, robustness-aware coreset selection (Xu et al., NeurIPS 2023): DynACL-RCS and ACL-RCS as
released (GodXuxilie/Efficient_ACL_via_RCS, ``ACL_RCS/small_scale_datasets/``: ``DynACL_RCS.py``,
``ACL_RCS.py``, ``RCS.py``; WAVE2.md section 5).

Released behaviour, the defaults here:

* **Objective** (``DynACL_RCS.py:339-367``): the AIR release's DynACL at half scale, without
  regularisers and without momentum encoder: L = 1/2 [(1 - w) NT_nat + (1 + w) NT_adv], w = (2/3)(1 - s),
  s = 1 - floor((e - 1) / K) K / E with K = E / 20 (50 of 1000). Views: bicubic RandomResizedCrop
  scale (1 - 0.9 s, 1), rebuilt every epoch. Attack: PGD-5, eps 8/255, step 2/255, uniform start,
  eval mode, "pgd" BN, ascent on NT of the jointly attacked pair. ``acl-rcs``: s = 1, w = 0
  (``ACL_RCS.py:332``). Finetuned branch: "pgd"; head: the releases' ``proj_head``.
* **Split** (``:220-224``): 99 % train / 1 % validation, ``np.random.choice`` under the seed (the
  release: ``setup_seed(1)``; here a ``RandomState`` seeded with the run's seed, the same draws at
  seed 1), then the coreset's initial random indices (``RCS.py:170``, used only if a reuse epoch
  comes before the first selection). DynACL_RCS rebuilds the *full* training set each epoch
  (``:296-298``), so the validation images are trained on too (``train_on_validation=True``, its
  default); ACL_RCS keeps the 99 % (``train_on_validation=False``, its default).
* **Schedule** (``:299-311``, ``--warmup 100 --fre 20``): with W = round(``warmup`` E) and
  F = max(1, round(``fre`` E)), epoch e selects a new subset if e >= W and (e - 1) % F == 0,
  reuses the last one if e > W, else trains on the full set (E = 1000: epochs 1-100 full,
  selections at 101, 121, ..., 981).
* **Budget**: int(0.99 N f) images, selected in whole minibatches of the selection batch:
  int(budget / batch) batches (``RCS.py:169,307``; CIFAR: 19 / 9 / 4 at f = 0.2 / 0.1 / 0.05),
  at least one (the release would train on nothing and crash in its scheduler).
* **Selection** (``RCS.py:213-369``), everything in eval mode, only the head's Linear weights
  (fc1.weight, fc1.bias, fc2.weight, fc3.weight) differentiated:
  1. validation objective: the validation images, fed per loader batch as ``view(2B)[:B]`` of a
     two-copy stack, i.e. the batch's first half, each image twice (``validation_rows="released"``;
     ``"all"``: each image once); x~ = PGD-3 (eps, step 1.25 eps / 3 = (10/255)/3, uniform start)
     ascending :func:`coreset_kl` (g_pgd(x~), g_normal(x)) through the whole model; then
     L_val = KLd(head_pgd(h_pgd(x~)), head_normal(h_normal(x))) on the backbone features h, and
     G_val = :func:`sketch` of its gradient (1,537-d for a 512-d head);
  2. one shuffled pass over the training pool in batches of the selection batch (the last one
     partial): two views, PGD-K on NT with step attack_step 5 / K (``RCS.py:132``), then the full
     head gradient of mean(1/2 [NT(head_normal(h(x))) + NT(head_pgd(h(x~)))]) and its sketch G_b;
  3. greedy: b* = argmax_b <G_b, G_val> over the remaining batches; head <- head - lr g_b*, applied
     ``coreset_lr_steps`` times (the release applies it twice: ``linear_layer`` *is* ``model.fc``,
     lines 321-329, so 0.02 effective at ``--Coreset_lr 0.01``); G_val recomputed with a fresh PGD;
  4. the head restored.
  ``Coreset_bs`` is defined nowhere in the release (it crashes at epoch 101); the selection batch
  here is ``selection_batch`` (0: the pretraining batch, 512 in the paper recipe, the batch the
  budget arithmetic divides by).
* **Learning rate** (``:313-323``): from epoch 2 the release rebuilds its cosine schedule (10
  warm-up epochs, per iteration, stepped before each update) from the epoch's loader length L and
  fast-forwards (e - 1) L steps: update j of epoch e runs at the factor of epoch progress
  e - 1 + (j + 1) / L, whatever the subset's size.

Subset epochs keep their last partial batch (the loop's :func:`methods.base.subset_steps`), as
the release's subset loader does: the pool's last batch is partial and may be picked.

Not reproduced: the release's per-image PIL augmentation stream, its unclamped PGD start (acbench's
attacks clamp the start to [0, 1], as for ACL), the last partial batch of its full-set epochs
(dropped, as for every method), epoch 1's schedule length taken from the 99 % loader, and STL-10's
augmented validation images (here: un-augmented for every dataset, CIFAR's ``ToTensor``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks import contrastive_pgd, eval_mode
from benchmark.errors import ConfigError, check_choice
from benchmark.models import ContrastiveModel
from methods import register_method
from methods.air import DynAugACL
from methods.base import AdversarialParams, Batch, EpochContext, Logs, Recipe, subset_steps
from methods.dynacl import INTERPOLATIONS, released_recipe
from methods.losses import info_nce

VALIDATION_ROWS = ("released", "all")
KL_EPS = 1e-8  # RCS.py's kl_loss: normalize(x) + 1e-8


# ---- the released formulas -------------------------------------------------------------------------


def minmax_rows(a: torch.Tensor) -> torch.Tensor:
    """``RCS.py``'s ``normalize``: each row shifted by its minimum and divided by its new maximum
    (the release does it in place; the value and the gradient, through min and max, are the same)."""
    shifted = a - a.min(1, keepdim=True)[0]
    return shifted / shifted.max(1, keepdim=True)[0]


def coreset_kl(adv: torch.Tensor, nat: torch.Tensor) -> torch.Tensor:
    """``RCS.py``'s ``kl_loss(nat=adv, adv=nat)`` as the selection calls it: ``KLDivLoss(mean)`` of
    input log P and target Q, i.e. mean over all elements of Q (log Q - log P), with
    Q = minmax(adv) + 1e-8 and P = minmax(nat) + 1e-8 (rows min-max scaled, not a softmax)."""
    q = minmax_rows(adv) + KL_EPS
    log_p = torch.log(minmax_rows(nat) + KL_EPS)
    return (q * (q.log() - log_p)).mean()  # F.kl_div(log_p, q, reduction="mean")


def validation_loss(head: nn.Module, h_nat: torch.Tensor, h_adv: torch.Tensor) -> torch.Tensor:
    """``RCS.py:250-252``: KLd(head_pgd(h_adv), head_normal(h_nat)) on backbone features, the head
    in eval mode; both sides carry gradient to the head."""
    return coreset_kl(head(h_adv, "pgd"), head(h_nat, "normal"))


def pool_loss(head: nn.Module, h: torch.Tensor, h_adv: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """``RCS.py:286-289``: mean(1/2 [NT(head_normal(h)) + NT(head_pgd(h_adv))]) on the backbone
    features of a [2k, ...] stack of two views (view 1 rows, then view 2), the plain ACL loss."""
    k = h.shape[0] // 2
    z = F.normalize(head(h, "normal"), dim=-1).view(2, k, -1)
    z_adv = F.normalize(head(h_adv, "pgd"), dim=-1).view(2, k, -1)
    return 0.5 * (info_nce(z, temperature) + info_nce(z_adv, temperature))


def head_weights(head: nn.Module) -> list[torch.Tensor]:
    """The released ``proj_head``'s parameters named ``fc*``: fc1.weight, fc1.bias, fc2.weight,
    fc3.weight (the selection's only differentiated tensors)."""
    linears = head.linears
    if len(linears) != 3 or linears[0].bias is None or linears[1].bias is not None:
        raise ConfigError("RCS needs the releases' 3-layer projection head (fc1 with bias, fc2 and fc3 without)")
    return [linears[0].weight, linears[0].bias, linears[1].weight, linears[2].weight]


def sketch(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``g.mean(dim=0).view(1, -1)`` of each head gradient, concatenated: 512 + 1 + 512 + 512 = 1,537
    values for a 512-d head (the mean runs over the output rows; the bias's over its only axis)."""
    return torch.cat([g.mean(dim=0).reshape(-1) for g in grads])


def validation_rows(n: int, chunk: int, form: str = "released") -> torch.Tensor:
    """Which validation images feed the validation objective, in order (positions in the
    validation set). The release loads batches of ``chunk`` images as two-copy stacks and keeps
    ``view(2B)[:B]``: the batch's first ceil(B / 2) images, each twice (the last once if B is odd).
    ``form="all"``: every image once."""
    check_choice("validation_rows", form, VALIDATION_ROWS)
    if form == "all":
        return torch.arange(n)
    out = [torch.arange(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    return torch.cat([c[torch.arange(len(c)) // 2] for c in out])


def greedy_batches(
    batch_sketches: torch.Tensor,
    count: int,
    val_sketch: torch.Tensor,
    step: Callable[[int], torch.Tensor],
) -> list[int]:
    """``RCS.py:310-366``: ``count`` times, pick b* = argmax over the remaining batches of
    <G_b, G_val> (the first on ties), then (but not after the last pick) ``step(b*)`` takes the
    simulated head step and returns the new validation sketch. Returns the picked batch numbers."""
    remaining = list(range(batch_sketches.shape[0]))
    picked: list[int] = []
    for j in range(count):
        gain = batch_sketches[remaining] @ val_sketch
        r = int(torch.argmax(gain))
        picked.append(remaining[r])
        if j == count - 1:
            break
        val_sketch = step(remaining[r])
        del remaining[r]
    return picked


def selection_budget(n: int, fraction: float, batch: int, validation: float = 0.01) -> tuple[int, int]:
    """(images, batches): the release's budget int(int(N (1 - validation)) f) and its whole
    batches int(budget / batch), at least one (CIFAR-10, batch 512: 19 / 9 / 4 at f = 0.2 / 0.1 / 0.05)."""
    budget = int(int(n * (1 - validation)) * fraction)
    return budget, max(1, budget // batch)


def schedule_epochs(epochs: int, warmup: float, fre: float) -> tuple[int, int]:
    """(W, F): the warm-up epochs round(warmup E) and the selection period max(1, round(fre E))
    (the release's --warmup 100 --fre 20 at E = 1000)."""
    return round(warmup * epochs), max(1, round(fre * epochs))


def epoch_kind(epoch: int, warmup_epochs: int, period: int) -> str:
    """``DynACL_RCS.py:299-311``: "select" if e >= W and (e - 1) % F == 0, "reuse" if e > W, else "full"."""
    if epoch >= warmup_epochs and (epoch - 1) % period == 0:
        return "select"
    return "reuse" if epoch > warmup_epochs else "full"


def progress_cosine(progress: float, epochs: int, warmup: float, min_ratio: float) -> float:
    """The release's ``cosine_annealing`` (lr_max 1) at epoch progress p = step / L:
    p / W in the warm-up, else min + (1 - min) (1 + cos(pi (p - W) / (E - W))) / 2."""
    if progress < warmup:
        return progress / warmup
    if epochs <= warmup:
        return 1.0
    t = (progress - warmup) / (epochs - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


# ---- the method ----------------------------------------------------------------------------------------


@register_method("dynacl-rcs")
class DynACLRCS(DynAugACL):  # the AIR release's views, head and DynAug schedule; ACL's attack
    paper = "Xu et al., NeurIPS 2023 (RCS)"
    summary = ("the RCS release's DynACL (half scale, no momentum encoder) trained on a robustness-aware "
               "coreset, reselected every few epochs by a greedy gradient match on a validation split")
    dynamic: ClassVar[bool] = True  # DynACL's annealed views and weights (ACL_RCS: False)

    @dataclass(frozen=True)
    class Params(AdversarialParams):  # temperature 0.5; PGD-5, eps 8/255, step eps/4 = 2/255
        init: str = "kaiming-fan-out"  # the release's ResNet: Kaiming-normal (fan-out) convolutions
        fraction: float = 0.2  # the coreset's share of the training images (the README recipe)
        warmup: float = 0.1  # epochs on the full set, a share of E (the release: 100 of 1000)
        fre: float = 0.02  # epochs between selections, a share of E, at least 1 (the release: 20 of 1000)
        selection_batch: int = 0  # 0: the pretraining batch (Coreset_bs is undefined in the release)
        validation: float = 0.01  # the held-out share of the training images (the release: 1 %)
        validation_rows: str = "released"  # "released": the half-used, duplicated batch; "all": each once
        train_on_validation: bool = True  # DynACL_RCS trains on the validation images too
        coreset_lr: float = 0.01  # --Coreset_lr
        coreset_lr_steps: int = 2  # the simulated head step applied twice, as released (1: once)
        coreset_attack_steps: int = 3  # --Coreset_pgd_iter
        coreset_attack_ratio: float = 1.25  # the validation PGD's total step over eps: (10/255) / (8/255)
        stages: int = 20  # DynAug stages: K = E / stages epochs each (the release: K = 50 of 1000)
        reweight: float = 2 / 3  # w = reweight (1 - s)
        interpolation: str = "bicubic"

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0 < self.fraction <= 1:
                raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
            if not 0 <= self.warmup <= 1 or not 0 < self.fre <= 1:
                raise ConfigError(f"warmup must be in [0, 1] and fre in (0, 1] (shares of the epochs), "
                                  f"got {self.warmup} and {self.fre}")
            if not 0 < self.validation < 1:
                raise ConfigError(f"validation must be in (0, 1), got {self.validation}")
            if self.selection_batch < 0 or self.coreset_lr_steps < 0 or self.coreset_attack_steps < 1:
                raise ConfigError("selection_batch and coreset_lr_steps must be >= 0, coreset_attack_steps >= 1")
            if not (self.coreset_lr >= 0 and self.coreset_attack_ratio > 0 and self.reweight >= 0):
                raise ConfigError("coreset_lr and reweight must be >= 0, coreset_attack_ratio > 0")
            if self.stages < 1:
                raise ConfigError(f"stages must be >= 1, got {self.stages}")
            check_choice("validation_rows", self.validation_rows, VALIDATION_ROWS)
            check_choice("interpolation", self.interpolation, INTERPOLATIONS)

    def __init__(self, dataset: str | None = None, **overrides: Any):
        super().__init__(dataset, **overrides)
        self.subset: torch.Tensor | None = None  # the last selected training indices
        self._split: tuple[int, int, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._plan = (1, 0, 1)  # the schedule's (epoch, updates before it, its steps)

    def paper_recipe(self, dataset: str | None = None) -> Recipe:
        return released_recipe("RCS paper and GodXuxilie/Efficient_ACL_via_RCS DynACL_RCS.py / ACL_RCS.py "
                               "(LARS 5.0, cosine with 10 warm-up epochs following epoch progress, to 1e-6)")

    # ---- the schedules ---------------------------------------------------------------------
    def lr_lambda(self, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
        """Update k (the scheduler's count) of epoch e, which began after ``start`` updates and runs
        L steps, at the factor of epoch progress e - 1 + (k - start + 1) / L (:func:`progress_cosine`)."""
        self._plan = (1, 0, steps_per_epoch)
        epochs, warmup, floor = recipe.epochs, recipe.warmup_epochs, recipe.min_lr_ratio

        def factor(k: int) -> float:
            epoch, start, steps = self._plan
            return progress_cosine(epoch - 1 + (k - start + 1) / steps, epochs, warmup, floor)

        return factor

    def schedule(self, epochs: int) -> tuple[int, int]:
        return schedule_epochs(epochs, self.params.warmup, self.params.fre)

    def recipe_notes(self, recipe: Recipe) -> list[str]:
        """The coreset schedule and selection batch a (scaled) recipe gives, where not the release's."""
        (w, f), batch = self.schedule(recipe.epochs), self.params.selection_batch or recipe.batch_size
        out = []
        if (w, f) != (100, 20):
            out.append(f"RCS schedule: selections from epoch {w} every {f} epochs (paper: 100, every 20)")
        if batch != 512:
            out.append(f"RCS selection batch {batch} (paper 512)")
        return out

    # ---- the step ----------------------------------------------------------------------------
    def loss(self, z: torch.Tensor, z_adv: torch.Tensor, n: int, w: float) -> tuple[torch.Tensor, ...]:
        """(loss, clean NT, adversarial NT): 1/2 [(1 - w) NT(clean) + (1 + w) NT(adv)]."""
        clean_loss, adv_loss = self.contrast(z, n), self.contrast(z_adv, n)
        return 0.5 * ((1.0 - w) * clean_loss + (1.0 + w) * adv_loss), clean_loss, adv_loss

    def training_step(self, model: ContrastiveModel, batch: Batch) -> tuple[torch.Tensor, Logs]:
        x = batch.images
        n = x.shape[0]
        self.views.strength = self.strength(batch.epoch, batch.epochs)
        t = torch.cat([self.views(x), self.views(x)])  # both views attacked jointly
        adv = self.adversarial_views(model, t, n)
        z_adv = model(adv, "pgd")  # the release's order: adversarial, then clean
        z = model(t, "normal")
        loss, clean_loss, adv_loss = self.loss(z, z_adv, n, self.adv_weight(batch.epoch, batch.epochs))
        return loss, {"loss": loss.detach(), "clean": clean_loss.detach(), "adv": adv_loss.detach()}

    # ---- the coreset -------------------------------------------------------------------------
    def split(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, validation, initial subset) indices of ``n`` images: ``np.random.choice`` of
        int(n (1 - validation)) training images, the rest (sorted) for validation, then the
        coreset's initial random pick of the budget (``RCS.py:170``; positions in the 99 %, applied
        to the full set when it trains on the validation images too, as DynACL_RCS does)."""
        if self._split is None or self._split[:2] != (n, seed):
            p = self.params
            rs = np.random.RandomState(seed)
            train = rs.choice(n, size=int(n * (1 - p.validation)), replace=False)
            val = np.delete(np.arange(n), train)
            budget, _ = selection_budget(n, p.fraction, 1, p.validation)
            initial = rs.choice(len(train), size=budget, replace=False)
            if not p.train_on_validation:
                initial = train[initial]
            self._split = (n, seed, train, val, initial)
        return self._split[2:]

    def epoch_indices(self, epoch: int, epochs: int, context: EpochContext) -> torch.Tensor | None:
        n = context.images.shape[0]
        train, _, initial = self.split(n, context.seed)
        kind = epoch_kind(epoch, *self.schedule(epochs))
        if kind == "select":
            t0 = time.time()
            self.subset, info = self.select(epoch, epochs, context)
            context.logs.update(info, selection_seconds=round(time.time() - t0, 3))
        chosen: torch.Tensor | None
        if kind == "full":
            chosen = None if self.params.train_on_validation else torch.as_tensor(train)
        else:
            chosen = self.subset if self.subset is not None else torch.as_tensor(initial)
        steps = n // context.batch_size if chosen is None else subset_steps(len(chosen), context.batch_size)
        self._plan = (epoch, context.step, max(1, steps))
        return chosen

    def select(self, epoch: int, epochs: int, context: EpochContext) -> tuple[torch.Tensor, dict[str, float]]:
        """One selection (``RCS.py:213-369``) at the model's current weights: the chosen training
        indices and what to log. Its randomness (pool order, views, PGD starts) comes from a
        generator state seeded with (seed, epoch), so the training's random stream is untouched."""
        p, model, device = self.params, context.model, context.device
        n = context.images.shape[0]
        train, val, _ = self.split(n, context.seed)
        pool = np.arange(n) if p.train_on_validation else train
        batch = p.selection_batch or context.batch_size
        _, count = selection_budget(n, p.fraction, batch, p.validation)
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), eval_mode(model):
            torch.manual_seed(context.seed * 1_000_003 + epoch)
            self.views.strength = self.strength(epoch, epochs)
            order = torch.as_tensor(pool)[torch.randperm(len(pool))]
            batches = list(order.split(batch))
            grads = [self.batch_gradient(model, context.images[b.to(device)], context) for b in batches]
            sketches = torch.stack([sketch(g) for g in grads])
            x_val = context.images[torch.as_tensor(val)[validation_rows(len(val), batch, p.validation_rows)].to(device)]
            weights = head_weights(model.head)
            saved = [w.detach().clone() for w in weights]
            val_loss, val_grads = self.validation_gradient(model, x_val, batch, context)
            try:
                def step(b: int) -> torch.Tensor:
                    with torch.no_grad():
                        for _ in range(p.coreset_lr_steps):
                            for w, g in zip(weights, grads[b]):
                                w.sub_(p.coreset_lr * g)
                    return sketch(self.validation_gradient(model, x_val, batch, context)[1])

                picked = greedy_batches(sketches, count, sketch(val_grads), step)
            finally:
                with torch.no_grad():
                    for w, s in zip(weights, saved):
                        w.copy_(s)
        chosen = torch.cat([batches[b] for b in picked])
        return chosen, {"selected_batches": len(picked), "pool_batches": len(batches), "val_loss": float(val_loss)}

    def batch_gradient(self, model: ContrastiveModel, images: torch.Tensor, context: EpochContext) -> list[torch.Tensor]:
        """``RCS.py:274-303``: the full head gradients of mean(1/2 [NT(clean) + NT(adv)]) on one pool
        batch (two views, PGD-K on NT with step attack_step 5 / K, features without gradient)."""
        p = self.params
        x = images.float().div_(255)
        k = x.shape[0]
        if k < 2:  # a last pool batch of one image: the release's NT-Xent of one pair is 0, so is its gradient
            return [torch.zeros_like(w) for w in head_weights(model.head)]
        with context.autocast:
            t = torch.cat([self.views(x), self.views(x)])
            (adv,) = contrastive_pgd(
                lambda a: info_nce(model(a[0], "pgd").view(2, k, -1), p.temperature),
                [t], p.eps, p.attack_step * 5 / p.attack_steps, p.attack_steps,
            )
            with torch.no_grad():
                h_adv, h = model.encoder(adv, "pgd").float(), model.encoder(t, "normal").float()
        loss = pool_loss(model.head, h, h_adv, p.temperature)
        return [g.detach() for g in torch.autograd.grad(loss, head_weights(model.head))]

    def validation_gradient(
        self, model: ContrastiveModel, images: torch.Tensor, batch: int, context: EpochContext
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``RCS.py:232-261``: PGD on :func:`coreset_kl` through the whole model (per loader batch),
        then L_val = KLd(head_pgd(h_pgd(x~)), head_normal(h_normal(x))) and its head gradients."""
        p = self.params
        x = images.float().div_(255)
        alpha = p.coreset_attack_ratio * p.eps / p.coreset_attack_steps
        h_nat, h_adv = [], []
        with context.autocast:
            for xc in x.split(batch):
                with torch.no_grad():
                    hc = model.encoder(xc, "normal")
                    nat = model.head(hc, "normal").detach()
                (adv,) = contrastive_pgd(
                    lambda a, nat=nat: coreset_kl(model.head(model.encoder(a[0], "pgd"), "pgd"), nat),
                    [xc], p.eps, alpha, p.coreset_attack_steps,
                )
                with torch.no_grad():
                    h_adv.append(model.encoder(adv, "pgd").float())
                h_nat.append(hc.float())
        loss = validation_loss(model.head, torch.cat(h_nat), torch.cat(h_adv))
        grads = torch.autograd.grad(loss, head_weights(model.head))
        return loss.detach(), [g.detach() for g in grads]

    def state_dict(self) -> dict[str, Any]:
        return {"subset": None if self.subset is None else self.subset.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        subset = state.get("subset")
        self.subset = None if subset is None else torch.tensor(subset, dtype=torch.int64)


@register_method("acl-rcs")
class ACLRCS(DynACLRCS):
    paper = "Xu et al., NeurIPS 2023 (RCS)"
    summary = "ACL (half-scale loss as released) trained on a robustness-aware coreset, reselected every few epochs"
    dynamic = False

    @dataclass(frozen=True)
    class Params(DynACLRCS.Params):
        train_on_validation: bool = False  # ACL_RCS trains on the 99 % only
