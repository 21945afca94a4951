"""``acbench perf``: how fast the harness runs a pretraining step, against a plain torch step.

For one method, :func:`perf_report` builds the model, optimiser and schedule exactly as
:func:`benchmark.pretrain.run_pretrain` does (:func:`~benchmark.pretrain.build_training`) and
times two steps on the same model, data and precision, interleaved:

* the **harness step**: :meth:`Training.step <benchmark.pretrain.Training.step>`, the body of
  the pretraining loop (Batch -> ``method.training_step`` -> zero_grad -> backward -> optimiser
  step -> scheduler step -> the epoch log);
* the **reference step**: the same views, attack, loss and update written directly with torch
  ops in this module (one function per method family: :func:`reference_simclr`,
  :func:`reference_acl`, :func:`reference_rocl`, :func:`reference_advcl`): no registry, no
  ``Batch``, no attack helper, no logging. It runs the same forward and backward passes (the tests
  check this, and that both give the same loss).

Reported per method (:func:`perf_report`):

* ``harness_images_per_s``, ``reference_images_per_s``: batch size / median step time over
  ``steps`` steps after ``warmup`` steps. Steps are timed one by one
  (``torch.cuda.synchronize`` before and after on CUDA), harness and reference alternating.
  ``ratio``: harness speed / reference speed (1.0: no overhead), the median over the pairs of
  adjacent steps of reference time / harness time, so that a busy patch of a shared machine,
  which slows both steps of a pair, cancels out. ``clock="cpu"`` (CPU device only) times the
  process's CPU time instead of elapsed time: steadier where other jobs share the cores.
* ``forward_equivalents_per_image``: the FLOPs of one harness step (matmuls and convolutions,
  counted by :class:`torch.utils.flop_counter.FlopCounterMode`, forward and backward, attack
  included; augmentation and loss matmuls included, < 1% at the paper scale) divided by
  ``batch_size`` x the FLOPs of one forward pass of the model (encoder + projection head) on
  one image. FlopCounterMode counts a convolution's or linear layer's backward as its forward's
  FLOPs for each gradient it computes: an input-only backward (the attack) costs 1 forward, a
  weight backward 2 (1 for the stem convolution, whose input needs no gradient). ACL with K
  attack steps: 2K view forwards + 2K input-only backwards, then 4 view forwards and their
  backward: 4K + 12 = 32 at K = 5.
* ``passes_per_image``: the same count made exactly, from the images passing through the
  encoder's stem convolution: ``forward``, ``input_backward`` (no weight gradient) and
  ``weight_backward`` passes per image; ``forward + input_backward + 2 weight_backward`` is the
  forward-equivalents formula of METHODS.md's methods (ACL 4K + 12, RoCL 2K + 10, AdvCL 4K + 18,
  adaptive AdvCL-IP variants 4K + 20).
* ``attack_steps`` (0 without an attack) and ``peak_memory_mb``: on CUDA
  ``torch.cuda.max_memory_allocated`` over one harness step (everything on the device: model,
  optimiser state, data, activations); on CPU the same quantity for tensors: the bytes of the
  persistent tensors (weights, gradients, buffers, optimiser state, data) plus the peak of the
  step's tensor allocations, from the profiler's memory events (``peak_memory_kind`` says which).

Timing does not depend on image content: perf uses random uint8 images of the preset dataset's
shape (no download) and random pseudo-labels for methods that need them; the AdvCL-IP reference
keeps lam = lam0, as the harness does during its warm-up epochs (perf runs epoch 1).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from benchmark.config import PRESETS, get_preset
from benchmark.data import Dataset
from benchmark.models import BACKBONES, ContrastiveModel
from benchmark.pretrain import EpochLog, PretrainConfig, Training, build_training
from methods import get_method, list_methods
from methods.base import Method
from methods.losses import a_info_nce, info_nce

KEYS = (
    "method", "harness_images_per_s", "reference_images_per_s", "ratio",
    "forward_equivalents_per_image", "attack_steps", "peak_memory_mb",
)
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "stl10": 96, "digits": 16, "synthetic": 16}
Step = Callable[[], None]


# ---- the reference steps: plain torch, same passes as the methods ---------------------------


def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


def reference_simclr(model, method, x, idx, optimizer, scheduler, autocast) -> torch.Tensor:
    """SimCLR: two views, one forward of both, NT-Xent."""
    p = method.params
    with autocast:
        t = torch.cat([method.views(x), method.views(x)])
        loss = info_nce(model(t, "normal").view(2, x.shape[0], -1), p.temperature)
    return _update(loss, optimizer, scheduler)


def reference_acl(model, method, x, idx, optimizer, scheduler, autocast) -> torch.Tensor:
    """ACL (DS): both views attacked jointly through "pgd" in eval mode; clean + adversarial NT-Xent."""
    p = method.params
    n = x.shape[0]
    with autocast:
        t = torch.cat([method.views(x), method.views(x)])
        model.eval()
        adv = (t + p.eps * (torch.rand(t.shape, device=t.device, dtype=t.dtype) * 2 - 1)).clamp_(0, 1)
        for _ in range(p.attack_steps):
            adv.requires_grad_(True)
            attack_loss = info_nce(model(adv, "pgd").view(2, n, -1), p.temperature)
            (g,) = torch.autograd.grad(attack_loss, [adv])
            adv = torch.min(torch.max(adv.detach() + p.attack_step * g.sign(), t - p.eps), t + p.eps).clamp_(0, 1)
        model.train()
        clean = info_nce(model(t, "normal").view(2, n, -1), p.temperature)
        robust = info_nce(model(adv.detach(), "pgd").view(2, n, -1), p.temperature)
        loss = 0.5 * (clean + robust)
    return _update(loss, optimizer, scheduler)


def reference_rocl(model, method, x, idx, optimizer, scheduler, autocast, a_infonce=False) -> torch.Tensor:
    """RoCL: t1 attacked towards a fixed embedding of t2 (eval mode); 3-view contrast + 1/256 NT-Xent.

    ``a_infonce``: the A-InfoNCE variants' contrast (adversarial view 2).
    """
    p = method.params
    n = x.shape[0]
    with autocast:
        t1, t2 = method.views(x), method.views(x)
        model.eval()
        with torch.no_grad():
            target = model(t2, "normal")
        adv = (t1 + p.eps * (torch.rand(t1.shape, device=t1.device, dtype=t1.dtype) * 2 - 1)).clamp_(0, 1)
        for _ in range(p.attack_steps):
            adv.requires_grad_(True)
            attack_loss = info_nce(torch.stack([model(adv, "normal"), target]), p.temperature)
            (g,) = torch.autograd.grad(attack_loss, [adv])
            adv = torch.min(torch.max(adv.detach() + p.attack_step * g.sign(), t1 - p.eps), t1 + p.eps).clamp_(0, 1)
        model.train()
        z = model(torch.cat([t1, t2, adv.detach()]), "normal").view(3, n, -1)
        if a_infonce:
            hn = (p.hn_beta, p.hn_tau_plus) if p.hn_beta is not None else None
            contrast = a_info_nce(z, adv=(2,), temperature=p.temperature, ip=p.ip, adv_weight=p.adv_weight, hn=hn)
        else:
            contrast = info_nce(z, p.temperature, detach_contrast=p.detach_contrast)
        if p.sum_positives:
            contrast = contrast * 2
        reg = info_nce(torch.stack([z[2], z[1]]), p.temperature)
        loss = contrast + p.reg_weight * reg
    return _update(loss, optimizer, scheduler)


def reference_advcl(model, method, x, idx, optimizer, scheduler, autocast, a_infonce=False) -> torch.Tensor:
    """AdvCL: x_cl ("pgd") and x_ce ("pgd_ce") attacked jointly from x_org; 4-view contrast + pseudo-label CE.

    ``a_infonce``: the A-InfoNCE variants' contrast (adversarial view 0), with the adaptive
    variants' distance d_t (lam stays lam0: perf runs inside the warm-up epochs).
    """
    from methods.advcl import CLUSTERS, high_frequency

    p = method.params
    heads = [model.extra_heads[f"fc{h}"] for h in CLUSTERS]
    attack_eval = p.attack_bn_mode == "eval"
    with autocast:
        t1, t2, x_org = method.views(x), method.views(x), method.weak(x)
        x_hfc = high_frequency(x_org, method.radius)
        y = method.labels[:, idx]
        if attack_eval:
            model.eval()
        with torch.no_grad():
            z_clean = torch.stack([model(t1, "normal"), model(t2, "normal"), model(x_hfc, "normal")])
        x_cl = (x_org + p.eps * (torch.rand(x_org.shape, device=x.device, dtype=x_org.dtype) * 2 - 1)).clamp_(0, 1)
        x_ce = (x_org + p.eps * (torch.rand(x_org.shape, device=x.device, dtype=x_org.dtype) * 2 - 1)).clamp_(0, 1)
        for _ in range(p.attack_steps):
            x_cl.requires_grad_(True)
            x_ce.requires_grad_(True)
            contrast = info_nce(torch.cat([model(x_cl, "pgd")[None], z_clean]), p.temperature)
            f = model.encoder(x_ce, "pgd_ce")
            ce = torch.stack([F.cross_entropy(fc(f), y[i]) for i, fc in enumerate(heads)]).mean()
            g_cl, g_ce = torch.autograd.grad(contrast + p.ce_weight * ce, [x_cl, x_ce])
            x_cl = torch.min(torch.max(x_cl.detach() + p.attack_step * g_cl.sign(), x_org - p.eps), x_org + p.eps)
            x_ce = torch.min(torch.max(x_ce.detach() + p.attack_step * g_ce.sign(), x_org - p.eps), x_org + p.eps)
            x_cl, x_ce = x_cl.clamp_(0, 1), x_ce.clamp_(0, 1)
        lam = p.ip if a_infonce else None
        if a_infonce and p.ip is not None and p.adaptive_epochs is not None:
            with torch.no_grad():
                d_t = (model.encoder(x_org, "normal") - model.encoder(x_cl, "normal")).norm(dim=1).mean()
            float(d_t)  # a_info_nce takes lam as a number: the same host sync as the method
        if attack_eval:
            model.train()
        z = torch.stack([model(x_cl, "pgd"), model(t1, "normal"), model(t2, "normal"), model(x_hfc, "normal")])
        if a_infonce:
            hn = (p.hn_beta, p.hn_tau_plus) if p.hn_beta is not None else None
            contrast = a_info_nce(z, adv=(0,), temperature=p.temperature, ip=lam, adv_weight=p.adv_weight, hn=hn)
        else:
            contrast = info_nce(z, p.temperature)
        contrast = p.temperature / p.base_temperature * contrast
        f = model.encoder(x_ce, "pgd_ce")
        ce = torch.stack([F.cross_entropy(fc(f), y[i]) for i, fc in enumerate(heads)]).mean()
        loss = contrast + p.ce_weight * ce
    return _update(loss, optimizer, scheduler)


REFERENCES: dict[str, Callable[..., torch.Tensor]] = {
    "simclr": reference_simclr,
    "acl": reference_acl,
    "rocl": reference_rocl,
    **{f"rocl-{v}": functools.partial(reference_rocl, a_infonce=True) for v in ("ip", "hn", "iphn")},
    "advcl": reference_advcl,
    **{f"advcl-{v}": functools.partial(reference_advcl, a_infonce=True) for v in ("ip", "hn", "iphn")},
}


# ---- counting: FLOPs and encoder passes ------------------------------------------------------


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose hooks break ``torch.autograd.grad``
    on leaf inputs (the attacks); every FLOP is counted under "Global"."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class FlopCounter(FlopCounterMode):
    """:class:`FlopCounterMode` without the per-module breakdown (works through attacks)."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


class PassCounter(TorchDispatchMode):
    """Counts the images passing through the encoder's stem convolution, per kind of pass.

    The stem runs once per encoder forward; its backward computes the weight gradient in a
    training backward and only the input gradient in an attack, so ``forward``,
    ``input_backward`` and ``weight_backward`` count images per kind of pass. The stem is found
    by its weight shape (its bf16 copy under autocast is another tensor).
    """

    def __init__(self, stem_weight_shape: torch.Size):
        super().__init__()
        self.shape = tuple(stem_weight_shape)
        self.forward = self.input_backward = self.weight_backward = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.convolution.default and tuple(args[1].shape) == self.shape:
            self.forward += args[0].shape[0]
        elif func is torch.ops.aten.convolution_backward.default and tuple(args[2].shape) == self.shape:
            output_mask = kwargs.get("output_mask", args[-1])
            if output_mask[1]:
                self.weight_backward += args[1].shape[0]
            else:
                self.input_backward += args[1].shape[0]
        return func(*args, **kwargs)

    def per_image(self, batch_size: int) -> dict[str, float]:
        return {
            "forward": self.forward / batch_size,
            "input_backward": self.input_backward / batch_size,
            "weight_backward": self.weight_backward / batch_size,
        }


def forward_equivalents(passes: dict[str, float]) -> float:
    """forward + input-only backward + 2 x weight backward (per image)."""
    return passes["forward"] + passes["input_backward"] + 2 * passes["weight_backward"]


# ---- memory --------------------------------------------------------------------------------------


def _tensor_bytes(tensors: Iterator[Any]) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            key = (str(s.device), s.data_ptr())
            if key not in seen:
                seen.add(key)
                total += s.nbytes()
    return total


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_step_peak_bytes(step: Step) -> int:
    """The peak, during ``step()``, of the bytes of CPU tensors allocated minus freed since it began."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


# ---- the benchmark -----------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {str(device)!r}; use auto, cpu or cuda[:N]")
    return device


def precisions_for(precision: str | None, device: torch.device) -> list[str]:
    """``auto``/None: fp32 on CPU, fp32 and bf16 on CUDA; ``both``: fp32 and bf16."""
    if precision in (None, "auto"):
        return ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    if precision == "both":
        return ["fp32", "bf16"]
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or both, got {precision!r}")
    return [precision]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _check_clock(clock: str, device: str | torch.device | None) -> torch.device:
    device = resolve_device(device)
    if clock not in CLOCKS:
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and device.type != "cpu":
        raise ValueError("the cpu clock measures CPU work: use it with the CPU device")
    return device


def _timed(step: Step, device: torch.device, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    _sync(device)
    t0 = now()
    step()
    _sync(device)
    return now() - t0


def _random_data(dataset: str, image_size: int, n: int, seed: int) -> Dataset:
    """Random uint8 images shaped like ``dataset``'s (3 channels), no download."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    y = torch.zeros(n, dtype=torch.int64)
    return Dataset(dataset, x, y, x[:1], y[:1], x[:1], y[:1], pretrain_x=x, num_classes=10,
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _fake_extras(method: Method, n: int, seed: int) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    for need in method.requires:
        if need != "pseudo_labels":
            raise ValueError(f"perf cannot stand in for the upstream stage {need!r} of {method.name!r}")
        from methods.advcl import CLUSTERS

        g = torch.Generator().manual_seed(seed)
        extras["pseudo_labels"] = {f"k{h}": torch.randint(0, h, (n,), generator=g) for h in CLUSTERS}
    return extras


def _eager(compiled: bool) -> contextlib.AbstractContextManager:
    """Counting needs eager execution: compiled graphs do not dispatch op by op."""
    return torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()


class PerfBench:
    """One method set up as the pretraining loop sets it up, with its harness and reference steps.

    ``harness_step()`` runs :meth:`Training.step` (the loop's body) on the next batch;
    ``reference_step()`` runs the method family's plain torch step on the next batch and returns
    its loss (``reference`` is None when the method has no entry in :data:`REFERENCES`). Both
    share the model, optimiser, schedule and precision. ``params`` override the method's.
    """

    def __init__(
        self,
        method: str,
        preset: str = "smoke",
        backbone: str | None = None,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        seed: int = 0,
        params: dict[str, Any] | None = None,
        compile: bool = False,
    ):
        p = get_preset(preset)
        self.device = resolve_device(device)
        params = dict(params or {})
        m = get_method(method, dataset=p.dataset, **params)
        recipe = p.recipe(m.paper_recipe(p.dataset))
        self.batch_size = batch_size or recipe.batch_size
        n = 2 * self.batch_size  # two steps per epoch: the loop's slicing of a permutation
        data = _random_data(p.dataset, p.image_size or NATIVE_SIZE[p.dataset], n, seed)
        cfg = PretrainConfig(
            method=method, method_params=params, dataset=p.dataset, image_size=data.image_size,
            backbone=backbone or p.backbone, seed=seed, recipe=recipe.replace(batch_size=self.batch_size),
            precision=precision, compile=compile,
        )
        self.preset, self.backbone, self.precision = preset, cfg.backbone, precision
        self.compiled = compile
        self.tr: Training = build_training(cfg, data, self.device, _fake_extras(m, n, seed))
        self.model: ContrastiveModel = self.tr.model
        self.method = self.tr.method
        self.model.train()
        self.method.on_epoch_start(1, self.tr.epochs)
        self.perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device)
        self.log = EpochLog(self.tr.steps_per_epoch, self.device)
        self.reference = REFERENCES.get(method)
        self.i = 0

    def _next(self) -> tuple[int, torch.Tensor]:
        i = self.i % self.tr.steps_per_epoch
        self.i += 1
        return i, self.perm[i * self.batch_size : (i + 1) * self.batch_size]

    def harness_step(self) -> None:
        i, idx = self._next()
        self.tr.step(idx, 1, i, self.log)

    def reference_step(self) -> torch.Tensor:
        if self.reference is None:
            raise ValueError(f"no reference step for method {self.method.name!r}")
        _, idx = self._next()
        x = self.tr.images[idx].float().div_(255)
        tr = self.tr
        return self.reference(tr.model, tr.method, x, idx, tr.optimizer, tr.scheduler, tr.autocast)

    @property
    def attack_steps(self) -> int:
        return int(getattr(self.method.params, "attack_steps", 0) or 0)

    def forward_flops_per_image(self) -> float:
        """FLOPs of one forward of the model (encoder + projection head) per clean image."""
        x = self.tr.images[self.perm[: self.batch_size]].float().div_(255)
        was = self.model.training
        self.model.eval()  # no BN statistics update
        try:
            with torch.no_grad(), self.tr.autocast, _eager(self.compiled), FlopCounter() as fc:
                self.model(x, self.method.branches[0])
        finally:
            self.model.train(was)
        return fc.get_total_flops() / self.batch_size

    def count(self, step: Step) -> tuple[float, dict[str, float]]:
        """(FLOPs per image, encoder passes per image) of one ``step()``."""
        passes = PassCounter(self.model.encoder.conv1.weight.shape)
        with _eager(self.compiled), passes, FlopCounter() as fc:
            step()
        return fc.get_total_flops() / self.batch_size, passes.per_image(self.batch_size)

    def peak_memory(self) -> tuple[float, str]:
        """(MiB, how it was measured) over one harness step."""
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.harness_step()
            _sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda max_memory_allocated"
        tr = self.tr
        state = [v for s in tr.optimizer.state.values() for v in s.values()]
        persistent = _tensor_bytes(iter([
            *self.model.parameters(), *(q.grad for q in self.model.parameters()), *self.model.buffers(),
            *state, tr.images, self.perm, *vars(self.method).values(),
        ]))
        return (persistent + cpu_step_peak_bytes(self.harness_step)) / 2**20, (
            "cpu tensors: persistent + step peak (profiler memory events)"
        )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def time_harness_step(
    method_name: str,
    preset: str = "smoke",
    backbone: str | None = None,
    batch_size: int | None = None,
    steps: int = 10,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    warmup: int = 2,
    params: dict[str, Any] | None = None,
    clock: str = "wall",
    compile: bool = False,
) -> dict[str, Any]:
    """Median seconds and images/s of the harness step over ``steps`` steps after ``warmup``."""
    device = _check_clock(clock, device)
    bench = PerfBench(method_name, preset, backbone, batch_size, device, precision, params=params, compile=compile)
    for _ in range(warmup):
        bench.harness_step()
    times = [_timed(bench.harness_step, bench.device, clock) for _ in range(steps)]
    seconds = statistics.median(times)
    return {"seconds": seconds, "images_per_s": bench.batch_size / seconds, "times": times}


def perf_report(
    method_name: str,
    preset: str = "smoke",
    backbone: str | None = None,
    batch_size: int | None = None,
    steps: int = 10,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    warmup: int = 2,
    params: dict[str, Any] | None = None,
    clock: str = "wall",
    compile: bool = False,
) -> dict[str, Any]:
    """Harness vs reference throughput, forward-equivalents, attack steps and peak memory.

    Harness and reference steps alternate (H R, R H, ...); each rate is the median over
    ``steps`` steps and ``ratio`` the median of the pairs' time ratios (module docstring).
    Keys: :data:`KEYS` plus ``passes_per_image``, ``reference_passes_per_image``, ``device``,
    ``precision``, ``backbone``, ``batch_size``, ``steps``, ``preset``, ``clock``, ``peak_memory_kind``.
    ``reference_images_per_s`` and ``ratio`` are None for a method without a reference step.
    """
    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    device = _check_clock(clock, device)
    bench = PerfBench(method_name, preset, backbone, batch_size, device, precision, params=params, compile=compile)
    has_ref = bench.reference is not None
    for _ in range(warmup):
        bench.harness_step()
        if has_ref:
            bench.reference_step()
    harness, reference = [], []
    for k in range(steps):
        if has_ref and k % 2:
            reference.append(_timed(bench.reference_step, bench.device, clock))
        harness.append(_timed(bench.harness_step, bench.device, clock))
        if has_ref and not k % 2:
            reference.append(_timed(bench.reference_step, bench.device, clock))
    h_rate = bench.batch_size / statistics.median(harness)
    r_rate = bench.batch_size / statistics.median(reference) if has_ref else None
    # the ratio of adjacent steps (same machine load), median over the pairs
    ratio = statistics.median(r / h for h, r in zip(harness, reference)) if has_ref else None

    step_flops, passes = bench.count(bench.harness_step)
    ref_passes = bench.count(bench.reference_step)[1] if has_ref else None
    memory, memory_kind = bench.peak_memory()
    return {
        "method": method_name,
        "harness_images_per_s": round(h_rate, 2),
        "reference_images_per_s": round(r_rate, 2) if r_rate is not None else None,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "forward_equivalents_per_image": round(step_flops / bench.forward_flops_per_image(), 2),
        "attack_steps": bench.attack_steps,
        "peak_memory_mb": round(memory, 1),
        "passes_per_image": passes,
        "reference_passes_per_image": ref_passes,
        "device": _device_name(bench.device),
        "precision": precision + (" + channels_last" if bench.device.type == "cuda" else "")
        + (" + compile" if compile else ""),
        "preset": preset,
        "backbone": bench.backbone,
        "batch_size": bench.batch_size,
        "steps": steps,
        "clock": clock,
        "peak_memory_kind": memory_kind,
    }


# ---- the command ---------------------------------------------------------------------------------

COLUMNS = (
    ("method", "method"), ("precision", "precision"), ("harness_images_per_s", "harness img/s"),
    ("reference_images_per_s", "reference img/s"), ("ratio", "ratio"),
    ("forward_equivalents_per_image", "fwd-equiv/img"), ("attack_steps", "attack steps"),
    ("peak_memory_mb", "peak MiB"),
)


def render_table(reports: list[dict[str, Any]]) -> str:
    """A github-markdown table of reports (tabulate)."""
    from tabulate import tabulate

    rows = [[r[k] if r[k] is not None else "-" for k, _ in COLUMNS] for r in reports]
    return tabulate(rows, headers=[h for _, h in COLUMNS], tablefmt="github")


def _title(reports: list[dict[str, Any]]) -> str:
    r = reports[0]
    return (
        f"acbench perf: {r['device']}, preset {r['preset']}, backbone {r['backbone']}, "
        f"batch {r['batch_size']}, median of {r['steps']} steps ({r['clock']} clock); "
        f"peak memory: {r['peak_memory_kind']}"
    )


def _perf(method, all_methods, preset, backbone, batch_size, steps, warmup, precision, compile_model, device,
          clock, out, as_json):
    if all_methods == (method is not None):
        raise click.UsageError("give --method NAME or --all (not both)")
    names = list_methods() if all_methods else [method]
    for name in names:
        get_method(name)  # unknown names fail before anything runs
    dev = _check_clock(clock, device)
    reports, failed = [], []
    for name in names:
        for prec in precisions_for(precision, dev):
            if not as_json:
                click.echo(f"perf {name} ({prec}) ...", err=True)
            try:
                reports.append(perf_report(name, preset, backbone, batch_size, steps, dev, prec, warmup, clock=clock,
                                           compile=compile_model))
            except (ValueError, RuntimeError) as e:  # RuntimeError: out of memory among others
                if not all_methods:
                    raise
                failed.append(f"{name} ({prec}): {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                click.echo(f"perf failed: {failed[-1]}", err=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if reports:
        text = f"{_title(reports)}\n\n{render_table(reports)}"
        if out is not None:
            from benchmark.io import atomic_write_text

            atomic_write_text(out, text + "\n")
            click.echo(f"wrote {out}", err=True)
        click.echo(json.dumps(reports, indent=2) if as_json else text)
    if failed:  # --all goes on past a failing method, then says which failed
        raise click.ClickException("perf failed for " + "; ".join(failed))


@click.command("perf")
@click.option("--method", default=None, help="Registered method name (see `acbench methods`).")
@click.option("--all", "all_methods", is_flag=True, help="Every registered method.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="smoke", show_default=True,
              help="Dataset shape, backbone and batch size (paper: ResNet-18, batch 512, 32x32).")
@click.option("--backbone", type=click.Choice(list(BACKBONES)), default=None, help="Default: the preset's.")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Default: the preset's recipe's.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed steps of each kind (median).")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Untimed steps of each kind first.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "both"]), default="auto",
              show_default=True, help="auto: fp32 on CPU; fp32 and bf16 autocast (+ channels_last) on CUDA.")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the model (both steps use it; warm-up steps include the compilation).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--clock", type=click.Choice(list(CLOCKS)), default="wall", show_default=True,
              help="wall: elapsed time; cpu: this process's CPU time (CPU device only; steadier on a "
              "machine shared with other jobs).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table to this markdown file (atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of reports (one per method and precision).")
def perf(**kwargs: Any) -> None:
    """Images/s of the harness's pretraining step against a plain torch step of the same method,
    their ratio, forward-equivalents per image, attack steps and peak memory.

    Example (GPU): acbench perf --all --preset paper --steps 5 --out results/perf/h200.md
    """
    from benchmark.cli import user_errors  # here: benchmark.cli imports this module

    user_errors(_perf)(**kwargs)
