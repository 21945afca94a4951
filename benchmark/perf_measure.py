"""What ``acbench perf`` measures in a step: time, FLOPs, encoder passes per image, CPU memory.

Everything here uses public torch APIs only: module hooks, autograd graph-node hooks,
:class:`torch.utils.flop_counter.FlopCounterMode` and :mod:`torch.profiler`'s events.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

Step = Callable[[], Any]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class Bench(Protocol):
    """What :func:`time_steps` runs: :class:`benchmark.perf.PerfBench`."""

    device: torch.device

    def harness_step(self) -> None: ...

    def next_batch(self) -> Any: ...

    def bare_step(self, batch: Any) -> Any: ...


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Step, device: torch.device, clock: str) -> float:
    now = CLOCKS[clock]
    sync(device)
    t0 = now()
    step()
    sync(device)
    return now() - t0


@dataclass
class Timings:
    """Step times of interleaved harness/bare pairs, and each round's median pair ratio."""

    harness: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    round_ratios: list[float] = field(default_factory=list)


def time_steps(bench: Bench, steps: int, rounds: int, warmup: int, clock: str = "wall") -> Timings:
    """``warmup`` untimed pairs, then ``rounds`` rounds of ``steps`` timed (harness, bare) pairs.

    The order inside a pair alternates (H B, B H, ...) so that neither kind always runs first.
    """
    for _ in range(warmup):
        bench.harness_step()
        bench.bare_step(bench.next_batch())
    t = Timings()
    for r in range(rounds):
        pairs = []
        for k in range(steps):
            times = {}
            for kind in (("harness", "bare") if (r * steps + k) % 2 == 0 else ("bare", "harness")):
                step = (
                    bench.harness_step if kind == "harness"
                    else functools.partial(bench.bare_step, bench.next_batch())  # built untimed
                )
                times[kind] = _timed(step, bench.device, clock)
            t.harness.append(times["harness"])
            t.bare.append(times["bare"])
            pairs.append(times["bare"] / times["harness"])
        t.round_ratios.append(statistics.median(pairs))
    return t




def _alias_leaf_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Hand ``module`` a view of each leaf input that requires grad (same values, same gradient).

    FlopCounterMode's module tracker hooks every module input that requires grad, and those hooks
    fail inside ``torch.autograd.grad`` when the input is a leaf (pytorch/pytorch#131753): exactly
    what an attack does with its adversarial images. A view is not a leaf, so the attack runs.
    """
    if not any(isinstance(a, torch.Tensor) and a.is_leaf and a.requires_grad for a in args):
        return None
    return tuple(
        a.view_as(a) if isinstance(a, torch.Tensor) and a.is_leaf and a.requires_grad else a for a in args
    )


class FlopCounter:
    """FLOPs of every op run inside the block, forward and backward (:class:`FlopCounterMode`).

    Usable through attacks (:func:`_alias_leaf_inputs`). FlopCounterMode counts a convolution's
    or linear layer's backward as its forward's FLOPs for each gradient it computes: an input-only
    backward (an attack) costs one forward, a training backward two (one for the stem, whose input
    needs no gradient).
    """

    def __init__(self) -> None:
        self.mode = FlopCounterMode(display=False)
        self._hook: Any = None

    def __enter__(self) -> FlopCounter:
        # registered before the mode's own module hooks, so they see the views
        self._hook = register_module_forward_pre_hook(_alias_leaf_inputs)
        try:
            self.mode.__enter__()
        except BaseException:
            self._hook.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.mode.__exit__(*exc)
        finally:
            self._hook.remove()

    def total(self) -> int:
        return self.mode.get_total_flops()

    def by_op(self) -> dict[str, int]:
        """FLOPs per aten op name, e.g. ``"aten.convolution_backward"``."""
        return {str(op): n for op, n in self.mode.get_flop_counts().get("Global", {}).items()}


class PassCounter:
    """Counts the images passing through a model's stem convolution, per kind of pass.

    The stem runs once per encoder forward. Its backward computes the weight gradient in a
    training backward and only the input gradient in an attack (``torch.autograd.grad`` with
    respect to the images), so ``forward``, ``input_backward`` and ``weight_backward`` count
    images per kind of pass. The backward is seen through a hook on the stem output's graph node,
    which receives the gradients of the stem's inputs (None for those not computed).
    """

    def __init__(self, *stems: nn.Module):
        self.stems = stems  # every encoder of the model (e.g. DynACL's online and momentum copies)
        self.forward = self.input_backward = self.weight_backward = 0
        self._handles: list[Any] = []
        self._active = False

    def __enter__(self) -> PassCounter:
        self._handles = [stem.register_forward_hook(self._on_forward) for stem in self.stems]
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._active = False
        for handle in self._handles:
            handle.remove()

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        n = args[0].shape[0]
        self.forward += n
        if out.grad_fn is not None:
            out.grad_fn.register_hook(lambda grad_inputs, grad_outputs: self._on_backward(n, grad_inputs))

    def _on_backward(self, n: int, grad_inputs: tuple[torch.Tensor | None, ...]) -> None:
        if not self._active:
            return
        if len(grad_inputs) > 1 and grad_inputs[1] is not None:  # (input, weight, bias)
            self.weight_backward += n
        elif grad_inputs[0] is not None:
            self.input_backward += n

    def per_image(self, batch_size: int) -> dict[str, float]:
        return {
            "forward": self.forward / batch_size,
            "input_backward": self.input_backward / batch_size,
            "weight_backward": self.weight_backward / batch_size,
        }


def forward_equivalents(passes: dict[str, float]) -> float:
    """forward + input-only backward + 2 x weight backward (per image)."""
    return passes["forward"] + passes["input_backward"] + 2 * passes["weight_backward"]


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (non-tensors are skipped)."""
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
    """Silence file descriptor 2: the profiler writes start/stop lines there from C++."""
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
    """The peak, during ``step()``, of the CPU tensor bytes allocated minus freed since it began.

    Read from the profiler's events (``profile_memory=True``): each op's own allocations minus
    frees (``self_cpu_memory_usage``) and the frees outside any op, summed in start-time order.
    The resolution is one op: memory an op allocates and frees before it returns is not seen, so
    this is a lower bound (within ~10% of the allocator-level peak on the smoke preset).
    """
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(prof.events(), key=lambda e: (e.time_range.start, -e.time_range.end))
    held = peak = 0
    for e in events:
        held += e.self_cpu_memory_usage
        peak = max(peak, held)
    return peak
