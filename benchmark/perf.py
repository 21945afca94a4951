"""``acbench perf``: what the harness costs on top of a method's own pretraining step.

For one method, :class:`PerfBench` builds the model, optimiser and schedule exactly as the
pretraining loop does (:func:`benchmark.pretrain.build_training`) on random images of the
preset's shape (no download; random pseudo-labels for the methods that need them) and runs two
steps on the same model, data and precision:

* the **harness step**: :meth:`Training.step <benchmark.pretrain.Training.step>`, the body of the
  pretraining loop (the ``Batch`` -> ``method.training_step`` -> zero_grad -> backward ->
  optimiser step -> scheduler step -> the epoch log);
* the **bare step**: the same calls and nothing else, on a ``Batch`` built beforehand::

      loss, logs = method.training_step(model, batch)
      optimizer.zero_grad(); loss.backward(); optimizer.step()

Both run the method's own code, so perf needs no copy of any method and measures every
registered one. The ratio is the harness's overhead (1.0: none): building the ``Batch`` from the
uint8 images, the scheduler step and the epoch log.

:func:`perf_report` returns, per method:

* ``harness_images_per_s``, ``bare_images_per_s``: batch size / median step time.
* ``ratio``: bare step time / harness step time. Steps alternate (harness, bare, bare,
  harness, ...) in ``rounds`` rounds of ``steps`` pairs after ``warmup`` untimed pairs; a round's
  ratio is the median of its pairs' ratios (a busy patch of a shared machine slows both steps of
  a pair and cancels out); ``ratio`` is the median over rounds, ``ratio_q1``/``ratio_q3`` the
  quartiles and ``ratio_min``/``ratio_max`` the extremes over rounds: the spread says how far
  two runs may differ. ``clock="cpu"`` (CPU device only) times the process's CPU time instead of
  elapsed time, steadier where other jobs share the cores.
* ``forward_equivalents_per_image``: the FLOPs of one harness step (``FlopCounterMode``: forward
  and backward, attack, augmentation and loss included) over ``batch_size`` x the FLOPs of one
  forward of the model (encoder + projection head) on one image.
* ``passes_per_image``: images through the encoder's stem per kind of pass (``forward``,
  ``input_backward``: attack, ``weight_backward``: training), exact; ``forward +
  input_backward + 2 weight_backward`` is the cost formula of docs/methods.md (ACL 4K + 12,
  RoCL 2K + 16, AdvCL 4K + 18, adaptive AdvCL-IP variants 4K + 20, SimCLR 6).
* ``attack_steps`` and ``peak_memory_mb`` over one harness step: on CUDA
  ``torch.cuda.max_memory_allocated`` (everything on the device); on CPU the bytes of the
  persistent tensors (weights, gradients, buffers, optimiser state, images, stage inputs) plus
  the step's peak from the profiler's memory events, at op granularity (``peak_memory_kind``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

from benchmark.config import PRESETS
from benchmark.data import Dataset
from benchmark.devices import resolve_device, resolve_precision, uses_channels_last
from benchmark.errors import ConfigError, check_choice
from benchmark.models import BACKBONES, ResNet
from benchmark.perf_measure import (
    CLOCKS,
    FlopCounter,
    PassCounter,
    Step,
    cpu_step_peak_bytes,
    sync,
    tensor_bytes,
    time_steps,
)
from benchmark.pretrain import EpochLog, PretrainConfig, Training, build_training
from methods import get_method, list_methods
from methods.advcl import CLUSTERS
from methods.base import Batch, Method
from methods.deacl import stand_in_teacher

KEYS = (
    "method", "precision", "harness_images_per_s", "bare_images_per_s", "ratio", "ratio_q1",
    "ratio_q3", "ratio_min", "ratio_max", "round_ratios", "forward_equivalents_per_image",
    "passes_per_image", "attack_steps", "peak_memory_mb", "peak_memory_kind", "device",
    "channels_last", "preset", "backbone", "batch_size", "steps", "rounds", "warmup", "clock",
    "compile",
)
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "stl10": 96, "digits": 16, "synthetic": 16}
PRECISIONS = ("auto", "fp32", "bf16", "both")


def precisions_for(precision: str, device: torch.device) -> list[str]:
    """``auto``: fp32 on CPU, fp32 and bf16 on CUDA; ``both``: fp32 and bf16; else that one."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        return ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    return ["fp32", "bf16"] if precision == "both" else [precision]


def _device(device: str | torch.device | None, clock: str) -> torch.device:
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"perf runs on cpu or cuda, not {dev.type!r}")
    check_choice("clock", clock, CLOCKS)
    if clock == "cpu" and dev.type != "cpu":
        raise ConfigError("the cpu clock measures CPU work: use it with the CPU device")
    return dev


def random_data(dataset: str, image_size: int, n: int, seed: int) -> Dataset:
    """Random uint8 images shaped like ``dataset``'s (3 channels), no download."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    y = torch.zeros(n, dtype=torch.int64)
    return Dataset(dataset, x, y, x[:1], y[:1], x[:1], y[:1], pretrain_x=x, num_classes=10,
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def stand_in_inputs(method: type[Method] | Method, n: int, seed: int = 0) -> dict[str, Any]:
    """Random stand-ins for the method's upstream stage outputs on ``n`` images (random
    pseudo-labels): timing ignores their values, and tests set up a step with them."""
    extras: dict[str, Any] = {}
    for need in method.requires:
        if need == "pseudo_labels":
            g = torch.Generator().manual_seed(seed)
            extras["pseudo_labels"] = {f"k{h}": torch.randint(0, h, (n,), generator=g) for h in CLUSTERS}
        elif need == "teacher":  # a random teacher of the student's shape, built at setup
            extras["teacher"] = functools.partial(stand_in_teacher, seed=seed)
        else:
            raise ConfigError(f"no stand-in for the upstream stage {need!r} of {method.name!r}")
    return extras


def _eager(compiled: bool) -> contextlib.AbstractContextManager:
    """Counting needs eager execution: compiled graphs do not run op by op."""
    return torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()


class PerfBench:
    """One method set up as the pretraining loop sets it up, with its harness and bare steps.

    ``harness_step()`` runs :meth:`Training.step` on the next batch; ``bare_step(batch)`` runs
    the method's step, zero_grad, backward and optimiser step on ``batch`` (from
    :meth:`next_batch`, the ``Batch`` the harness would build) and returns the loss. Both share
    the model, optimiser and precision and walk the same batches of epoch 1. ``params`` override
    the method's parameters.
    """

    def __init__(
        self,
        method: str,
        preset: str = "smoke",
        backbone: str | None = None,
        batch_size: int | None = None,
        device: str | torch.device | None = "auto",
        precision: str = "fp32",
        seed: int = 0,
        params: dict[str, Any] | None = None,
        compile: bool = False,
    ):
        p = PRESETS[check_choice("preset", preset, PRESETS)]
        if backbone is not None:
            check_choice("backbone", backbone, BACKBONES)
        if batch_size is not None and batch_size < 2:
            raise ConfigError(f"batch size must be >= 2 (contrastive losses need negatives), got {batch_size}")
        self.device = resolve_device(device)
        params = dict(params or {})
        m = get_method(check_choice("method", method, list_methods()), dataset=p.dataset, **params)
        recipe = p.recipe(m.paper_recipe(p.dataset), m.loss_scale)
        self.batch_size = batch_size or recipe.batch_size
        n = 2 * self.batch_size  # two steps per epoch: the loop's slicing of a permutation
        data = random_data(p.dataset, p.image_size or NATIVE_SIZE[p.dataset], n, seed)
        cfg = PretrainConfig(
            method=method, method_params=params, dataset=p.dataset, image_size=data.image_size,
            backbone=backbone or p.backbone_for(p.dataset), seed=seed, recipe=recipe.replace(batch_size=self.batch_size),
            precision=precision, compile=compile,
        )
        self.preset, self.backbone, self.compiled = preset, cfg.backbone, compile
        self.precision = resolve_precision(precision, self.device)
        self.tr: Training = build_training(cfg, data, self.device, stand_in_inputs(m, n, seed))
        self.model, self.method = self.tr.model, self.tr.method
        self.model.train()
        self.method.on_epoch_start(1, self.tr.epochs)
        self.perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device)
        self.log = EpochLog(self.tr.steps_per_epoch, self.device)
        self.i = 0

    def _next(self) -> tuple[int, torch.Tensor]:
        i = self.i % self.tr.steps_per_epoch
        self.i += 1
        return i, self.perm[i * self.batch_size : (i + 1) * self.batch_size]

    def harness_step(self) -> None:
        i, idx = self._next()
        self.tr.step(idx, 1, i, self.log)

    def next_batch(self) -> Batch:
        """The ``Batch`` the harness builds for the next step of epoch 1."""
        i, idx = self._next()
        tr = self.tr
        return Batch(images=tr.images[idx].float().div_(255), indices=idx, epoch=1, epochs=tr.epochs,
                     step=i, extras=tr.extras)

    def bare_step(self, batch: Batch) -> torch.Tensor:
        """``method.training_step``, zero_grad, backward, optimiser step; returns the loss."""
        tr = self.tr
        with tr.autocast:
            loss, _logs = self.method.training_step(self.model, batch)
        tr.optimizer.zero_grad()
        loss.backward()
        tr.optimizer.step()
        return loss.detach()

    @property
    def attack_steps(self) -> int:
        return int(getattr(self.method.params, "attack_steps", 0) or 0)

    def forward_flops_per_image(self) -> float:
        """FLOPs of one forward of the model (encoder + projection head) per clean image."""
        x = self.tr.images[self.perm[: self.batch_size]].float().div_(255)
        self.model.eval()  # no BN statistics update
        try:
            with torch.no_grad(), self.tr.autocast, _eager(self.compiled), FlopCounter() as fc:
                self.model(x, self.method.branches[0])
        finally:
            self.model.train()
        return fc.total() / self.batch_size

    def stems(self) -> list[nn.Module]:
        """The stem convolution of every encoder in the model (one pass = one image through one)."""
        return [m.conv1 for m in self.model.modules() if isinstance(m, ResNet)]

    def count(self, step: Step) -> tuple[float, dict[str, float]]:
        """(FLOPs per image, stem passes per image) of one ``step()``."""
        with _eager(self.compiled), PassCounter(*self.stems()) as passes, FlopCounter() as fc:
            step()
        return fc.total() / self.batch_size, passes.per_image(self.batch_size)

    def peak_memory(self) -> tuple[float, str]:
        """(MiB, how it was measured) over one harness step."""
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.harness_step()
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda max_memory_allocated"
        tr = self.tr
        params = list(self.model.parameters())
        persistent = tensor_bytes([
            *params, *(q.grad for q in params), *self.model.buffers(),
            *(v for s in tr.optimizer.state.values() for v in s.values()),
            tr.images, self.perm, *_tensors_in(tr.extras),
        ])
        return (persistent + cpu_step_peak_bytes(self.harness_step)) / 2**20, (
            "cpu tensors: persistent + step peak (profiler memory events, op granularity)"
        )


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v)]
    return []


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.getdevice_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _spread(values: list[float]) -> tuple[float, float]:
    """First and third quartiles (the value itself for one round)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def perf_report(
    method: str,
    *,
    preset: str = "smoke",
    backbone: str | None = None,
    batch_size: int | None = None,
    steps: int = 5,
    rounds: int = 5,
    warmup: int = 2,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    compile: bool = False,
    clock: str = "wall",
    params: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Harness vs bare step speed and their ratio with its spread, forward-equivalents, passes,
    attack steps and peak memory of ``method`` (keys: :data:`KEYS`; see the module docstring).

    ``precision`` is one of fp32, bf16 or auto (bf16 on CUDA). Raises :class:`ConfigError` or
    :class:`~benchmark.errors.UnknownName` on bad options, before anything runs.
    """
    if steps < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(f"steps and rounds must be >= 1 and warmup >= 0, got {steps}, {rounds}, {warmup}")
    dev = _device(device, clock)
    bench = PerfBench(method, preset, backbone, batch_size, dev, precision, seed, params, compile)
    t = time_steps(bench, steps, rounds, warmup, clock)
    q1, q3 = _spread(t.round_ratios)
    step_flops, passes = bench.count(bench.harness_step)
    memory, memory_kind = bench.peak_memory()
    return {
        "method": method,
        "precision": bench.precision,
        "harness_images_per_s": round(bench.batch_size / statistics.median(t.harness), 2),
        "bare_images_per_s": round(bench.batch_size / statistics.median(t.bare), 2),
        "ratio": round(statistics.median(t.round_ratios), 3),
        "ratio_q1": round(q1, 3),
        "ratio_q3": round(q3, 3),
        "ratio_min": round(min(t.round_ratios), 3),
        "ratio_max": round(max(t.round_ratios), 3),
        "round_ratios": [round(r, 4) for r in t.round_ratios],
        "forward_equivalents_per_image": round(step_flops / bench.forward_flops_per_image(), 2),
        "passes_per_image": passes,
        "attack_steps": bench.attack_steps,
        "peak_memory_mb": round(memory, 1),
        "peak_memory_kind": memory_kind,
        "device": device_name(dev),
        "channels_last": uses_channels_last(dev),
        "preset": preset,
        "backbone": bench.backbone,
        "batch_size": bench.batch_size,
        "steps": steps,
        "rounds": rounds,
        "warmup": warmup,
        "clock": clock,
        "compile": compile,
    }


@dataclass(frozen=True)
class PerfResults:
    """The reports of :func:`perf_all` and, for the runs that failed, ``"name (precision): error"``."""

    reports: list[dict[str, Any]]
    failures: list[str]


def perf_all(
    methods: Sequence[str] | None = None,
    *,
    precision: str = "auto",
    device: str | torch.device | None = "auto",
    clock: str = "wall",
    keep_going: bool = True,
    progress: Callable[[str], None] | None = None,
    on_report: Callable[[list[dict[str, Any]]], None] | None = None,
    measure: Callable[..., dict[str, Any]] | None = None,
    **options: Any,
) -> PerfResults:
    """:func:`perf_report` for each method (default: every registered one) and precision.

    ``precision``: fp32, bf16, both, or auto (fp32 on CPU, fp32 and bf16 on CUDA). Every name
    and option is checked before anything runs. With ``keep_going`` a method that fails (an
    invalid parameter, out of memory) is recorded in ``failures`` and the others still run;
    without it the error propagates. ``progress`` receives one line per run and per failure;
    ``on_report``, the reports so far after each one (to write partial tables as they grow).
    ``measure(name, device=, precision=, **options)`` makes one report: :func:`perf_report` (with
    ``clock``) unless given, e.g. :func:`benchmark.perf_epoch.time_epochs`.
    """
    names = list_methods() if methods is None else list(methods)
    for name in names:
        check_choice("method", name, list_methods())
    dev = _device(device, clock)
    precisions = precisions_for(precision, dev)
    say = progress or (lambda line: None)
    run = measure or functools.partial(perf_report, clock=clock)
    reports, failures = [], []
    for name in names:
        for prec in precisions:
            say(f"perf {name} ({prec}) ...")
            try:
                reports.append(run(name, device=dev, precision=prec, **options))
                if on_report is not None:
                    on_report(reports)
            except Exception as e:  # one failing method (bad parameter, out of memory, a bug) stops only its row
                if not keep_going:
                    raise
                failures.append(f"{name} ({prec}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                say(f"perf failed: {failures[-1]}")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return PerfResults(reports, failures)


COLUMNS = (
    ("method", "method"), ("precision", "precision"), ("harness_images_per_s", "harness img/s"),
    ("bare_images_per_s", "bare img/s"), ("ratio", "ratio"), ("ratio_iqr", "ratio IQR"),
    ("ratio_range", "ratio min-max"), ("forward_equivalents_per_image", "fwd-equiv/img"),
    ("attack_steps", "attack steps"), ("peak_memory_mb", "peak MiB"),
)


def _row(r: dict[str, Any]) -> list[Any]:
    cells = {
        **r,
        "precision": r["precision"] + (" + channels_last" if r["channels_last"] else "")
        + (" + compile" if r["compile"] else ""),
        "ratio_iqr": f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f}",
        "ratio_range": f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}",
    }
    return [cells[k] if cells[k] is not None else "-" for k, _ in COLUMNS]


def render_table(reports: list[dict[str, Any]]) -> str:
    """Markdown: a line saying how the reports were measured, then one row per report."""
    if not reports:
        return "acbench perf: no reports"
    r = reports[0]
    title = (
        f"acbench perf: {r['device']}, preset {r['preset']}, backbone {r['backbone']}, batch {r['batch_size']}; "
        f"{r['rounds']} rounds of {r['steps']} interleaved harness/bare step pairs ({r['clock']} clock); "
        "ratio = bare step time / harness step time (1.0: no overhead), median over rounds of each "
        f"round's median pair; peak memory: {r['peak_memory_kind']}"
    )
    table = tabulate([_row(x) for x in reports], headers=[h for _, h in COLUMNS], tablefmt="github")
    return f"{title}\n\n{table}"


def reports_json(reports: list[dict[str, Any]]) -> str:
    """The reports as an indented JSON list."""
    return json.dumps(reports, indent=2)
