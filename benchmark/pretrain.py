"""The pretraining loop shared by every method.

Data lives on the training device as uint8; each step hands the method a float batch in [0, 1],
the method makes its views (and adversarial views) and returns the loss. The loop owns the
optimiser, the per-iteration schedule, precision, checkpoints (every epoch, atomically, with
optimiser, scheduler and RNG states so that a resumed run ends exactly where an uninterrupted one
would) and the numerical guard.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import benchmark.ddp as distributed
from benchmark.augment import ViewAdaptation
from benchmark.checkpoints import ENCODER
from benchmark.data import Dataset
from benchmark.devices import autotunes, resolve_precision, to_layout, uses_channels_last
from benchmark.errors import AcbenchError, ConfigError
from benchmark.io import atomic_write_json, load_checkpoint, save_checkpoint
from benchmark.models import BackboneConfig, ContrastiveModel
from benchmark.optim import build_optimizer
from methods import get_method
from methods.base import Batch, EpochContext, Method, Recipe, subset_steps

LAST = "last.pt"


class NonFiniteLoss(AcbenchError, RuntimeError):
    """The loss or the weights became NaN/inf; the last good checkpoint is kept."""


@dataclass(frozen=True)
class PretrainConfig:
    method: str
    method_params: dict[str, Any]  # the method's parameters (the pretrain stage passes every resolved one)
    dataset: str
    image_size: int | None
    backbone: str
    seed: int
    recipe: Recipe
    train_limit: int | None = None
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "fp32" | "bf16"
    compile: bool = False  # torch.compile the encoder and heads (same math, other float rounding)
    extras_keys: dict[str, str] = field(default_factory=dict)  # upstream stage keys (pseudo-labels)
    augmentation: ViewAdaptation = ViewAdaptation()  # the preset's scaling of the published views

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "method_params": dict(sorted(self.method_params.items())),
            "dataset": self.dataset,
            "image_size": self.image_size,
            "backbone": self.backbone,
            "seed": self.seed,
            "recipe": self.recipe.to_dict(),
            "train_limit": self.train_limit,
            "precision": self.precision,
            **({"compile": True} if self.compile else {}),  # keys of uncompiled runs unchanged
            # keys of runs with the published augmentations unchanged
            **({} if self.augmentation == ViewAdaptation() else {"augmentation": asdict(self.augmentation)}),
        }


def training_options(cfg: PretrainConfig, device: torch.device) -> dict[str, Any]:
    """How the pretraining ran, beyond its precision (stored in every record)."""
    return {"compile": cfg.compile, "channels_last": uses_channels_last(device),
            **({"cudnn_benchmark": True} if autotunes(device) else {})}  # CPU records unchanged


def compile_model(model: ContrastiveModel, backend: str = "inductor") -> None:
    """``torch.compile`` the encoder and every head in place; state-dict keys are unchanged.

    Each (BN branch, train/eval mode, batch shape) the method uses is one graph: the recompile
    limit is raised so that none of them falls back to eager.
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 64)
    model.encoder.compile(backend=backend)
    model.head.compile(backend=backend)
    for head in model.extra_heads.values():
        head.compile(backend=backend)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochLog:
    """The per-step values of one epoch, with no host sync per step: tensors are summed on the
    device, plain numbers on the host (moving a number to the device would be a copy per step)."""

    def __init__(self, steps: int, device: torch.device):
        self.losses = torch.zeros(steps, device=device)
        self.sums: dict[str, torch.Tensor | float] = {}

    def add(self, i: int, loss: torch.Tensor, logs: dict[str, Any]) -> None:
        self.losses[i] = loss.detach().float()
        for k, v in logs.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v


@dataclass
class Training:
    """Everything a pretraining step needs, built by :func:`build_training` (the loop's state)."""

    method: Method
    model: ContrastiveModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    images: torch.Tensor  # uint8 pretraining images, on the device
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    precision: str  # resolved: "fp32" | "bf16"
    extras: dict[str, Any]
    world: int = 1  # processes of a torchrun job (benchmark.distributed); batch_size is the global batch
    rank: int = 0

    def __post_init__(self) -> None:
        self.autocast = (
            torch.autocast(self.images.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16" else contextlib.nullcontext()
        )

    def step(self, idx: torch.Tensor, epoch: int, i: int, log: EpochLog, step: int | None = None) -> None:
        """Step ``i`` of ``epoch`` on the images ``idx``: the method's loss, backward, update, schedule.
        ``step`` is the global step (default: ``(epoch - 1) * steps_per_epoch + i``, every epoch full).

        Under torchrun ``idx`` is the global batch (the same on every rank): this rank takes its
        contiguous slice, and gradients are averaged over ranks after the backward.
        """
        if self.world > 1:
            b = idx.shape[0] // self.world
            idx = idx[self.rank * b : (self.rank + 1) * b]
        batch = Batch(
            images=self.images[idx].float().div_(255), indices=idx, epoch=epoch, epochs=self.epochs,
            step=(epoch - 1) * self.steps_per_epoch + i if step is None else step, extras=self.extras,
        )
        with self.autocast:
            loss, step_logs = self.method.training_step(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            distributed.average_gradients(self.model.parameters())
        self.optimizer.step()
        self.scheduler.step()
        log.add(i, loss, step_logs)


def _refresh_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Recompute the learning rate of the next update from the schedule (whose method state may
    have changed at the epoch's start): ``base_lr * lambda(count)``, as ``scheduler.step()`` sets it."""
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def _epoch_order(
    tr: Training, epoch: int, chosen: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """(the epoch's shuffled image indices, its number of steps): every image, or the method's choice."""
    if chosen is None:
        return torch.randperm(tr.images.shape[0], generator=generator), tr.steps_per_epoch
    chosen = chosen.detach().to("cpu", torch.int64).flatten()
    if tr.world > 1:  # every rank trains on rank 0's choice
        chosen = distributed.broadcast_object(chosen)
    steps = subset_steps(chosen.numel(), tr.batch_size)
    if steps < 1:
        raise ConfigError(f"{tr.method.name}: epoch {epoch} trains on {chosen.numel()} images; a step needs two")
    return chosen[torch.randperm(chosen.numel(), generator=generator)], steps


def build_training(
    cfg: PretrainConfig, data: Dataset, device: torch.device, extras: dict[str, Any] | None = None
) -> Training:
    """Method, model, optimiser and schedule of ``cfg`` on ``data``, set up on ``device`` (seeded)."""
    extras = extras or {}
    method = get_method(cfg.method, dataset=cfg.dataset, **cfg.method_params)
    method.augmentation = cfg.augmentation  # before setup, which builds the views
    recipe = cfg.recipe
    precision = resolve_precision(cfg.precision, device)
    images = data.pretrain_x[: cfg.train_limit] if cfg.train_limit else data.pretrain_x
    n = images.shape[0]
    batch_size = min(recipe.batch_size, n)
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * recipe.epochs

    torch.manual_seed(cfg.seed)
    backbone = BackboneConfig(cfg.backbone, data.channels, data.mean, data.std)
    model = method.build_model(backbone).to(device)
    model = to_layout(model, device)
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1:  # torchrun: SyncBN on every BN branch, identical replicas
        if batch_size % world:
            raise ConfigError(f"the global batch {batch_size} does not split over {world} processes")
        model = distributed.convert_sync_batchnorm(model)
        distributed.broadcast_module(model)
    if cfg.compile:  # last: compiles the final modules (SyncBN included)
        compile_model(model)
    optimizer = build_optimizer(
        model.parameters(), recipe.optimizer, lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay, **dict(recipe.optimizer_options),
    )
    schedule = method.lr_lambda(recipe, steps_per_epoch, total_steps)  # per iteration
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    images = images.to(device)
    method.setup(data.image_size, device, {**extras, "n_images": n})  # n: to check per-image inputs
    if world > 1:  # same model everywhere, a different augmentation / attack stream per rank
        torch.manual_seed(cfg.seed + 1_000_003 * rank)
    return Training(
        method=method, model=model, optimizer=optimizer, scheduler=scheduler, images=images,
        batch_size=batch_size, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        epochs=recipe.epochs, precision=precision, extras=extras, world=world, rank=rank,
    )


def run_pretrain(
    cfg: PretrainConfig,
    data: Dataset,
    out_dir: Path,
    device: torch.device,
    extras: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Pretrain ``cfg.method`` on ``data.pretrain_x``; writes ``encoder.pt`` in ``out_dir``.

    Resumes from ``out_dir/last.pt`` when present. Returns a summary (time, final loss, ...).
    Under torchrun every rank calls this; only rank 0 writes (and shows progress).
    """
    extras = extras or {}
    tr = build_training(cfg, data, device, extras)
    main = tr.rank == 0
    progress = progress and main
    method, model, optimizer, scheduler = tr.method, tr.model, tr.optimizer, tr.scheduler
    recipe, precision, n = cfg.recipe, tr.precision, tr.images.shape[0]
    batch_size, steps_per_epoch, total_steps = tr.batch_size, tr.steps_per_epoch, tr.total_steps

    start_epoch, history, elapsed, subset_before = 1, [], 0.0, False
    last = out_dir / LAST
    if last.exists():
        ck = load_checkpoint(last, kind="pretrain-state")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        method.load_state_dict(ck["method_state"])
        rng_ranks = ck.get("rng_ranks")
        if tr.world == 1:
            _set_rng_state(ck["rng"])
        elif rng_ranks is not None and len(rng_ranks) == tr.world:
            _set_rng_state(rng_ranks[tr.rank])
        else:  # resumed on another number of processes: a fresh stream per rank
            torch.manual_seed(cfg.seed + 1_000_003 * tr.rank + 7919 * ck["epoch"])
        start_epoch, history, elapsed = ck["epoch"] + 1, ck["history"], ck["elapsed"]
        subset_before = bool(history) and "images" in history[-1]

    bar = tqdm(
        total=total_steps, initial=(start_epoch - 1) * steps_per_epoch, disable=not progress,
        desc=f"pretrain {cfg.method}", unit="step", leave=False, dynamic_ncols=True,
    )
    for epoch in range(start_epoch, recipe.epochs + 1):
        t0 = time.time()
        model.train()
        logs = method.on_epoch_start(epoch, recipe.epochs)
        start = scheduler.last_epoch  # updates so far
        context = EpochContext(model=model, images=tr.images, device=device, batch_size=batch_size,
                               seed=cfg.seed, step=start, autocast=tr.autocast)
        chosen = method.epoch_indices(epoch, recipe.epochs, context)
        model.train()
        perm, steps = _epoch_order(tr, epoch, chosen, torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        if chosen is not None or subset_before:  # the schedule may follow this epoch's length
            _refresh_lr(scheduler)
        if chosen is not None:
            logs = {**logs, "images": perm.numel(), "steps": steps,
                    **({"choice": dict(context.logs)} if context.logs else {})}
        subset_before = chosen is not None
        perm = perm.to(device)
        log = EpochLog(steps, device)
        for i in range(steps):
            tr.step(perm[i * batch_size : (i + 1) * batch_size], epoch, i, log, step=start + i)
            bar.update(1)
        if tr.world > 1:  # the global batch's values (mean over equal shards); replicas kept identical
            log.losses = distributed.reduce_mean(log.losses)
            log.sums = {k: distributed.reduce_mean(torch.as_tensor(v, device=device)) for k, v in log.sums.items()}
            distributed.broadcast_module(model)
        # one host sync per epoch: the numerical guard and the logs
        values = log.losses.cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad) or not all(torch.isfinite(p).all() for p in model.parameters()):
            step = int(bad[0]) + 1 if len(bad) else steps
            bar.close()
            raise NonFiniteLoss(
                f"{cfg.method}: non-finite loss or weights at epoch {epoch}, step {step}/{steps}; "
                f"stopped, the last good checkpoint ({'epoch ' + str(epoch - 1) if epoch > 1 else 'none'}) "
                f"is kept in {out_dir}. Lower the learning rate or check the method's parameters."
            )
        elapsed += time.time() - t0
        entry = {
            "epoch": epoch, "loss": float(values.mean()), "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.time() - t0, 3),
            **{k: round(float(v) / steps, 6) for k, v in log.sums.items() if k != "loss"},
            **logs,
        }
        history.append(entry)
        bar.set_postfix(epoch=epoch, loss=f"{entry['loss']:.4f}")
        ranks = {"rng_ranks": distributed.all_gather_object(_rng_state())} if tr.world > 1 else {}
        if main:
            save_checkpoint(
                last, "pretrain-state",
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "method_state": method.state_dict(),
                 "rng": _rng_state(), "epoch": epoch, "history": history, "elapsed": elapsed, **ranks},
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()

    final_loss = history[-1]["loss"] if history else math.nan
    subsets = {}
    if any("images" in e for e in history):  # epochs on a subset the method chose: the steps that ran, its choices
        total_steps = sum(e.get("steps", steps_per_epoch) for e in history)
        subsets = {"subsets": [{"epoch": e["epoch"], "images": e["images"], "steps": e["steps"], **e["choice"]}
                               for e in history if "choice" in e]}
    if main:
        save_checkpoint(
            out_dir / ENCODER, "encoder",
            {"method": cfg.method, "method_params": method.describe()["params"],
             "backbone": model.encoder.config.to_dict(), "branches": list(method.branches),
             "finetune_branch": method.finetune_branch, "config": cfg.to_dict(),
             "state_dict": method.export_state_dict(model)},
        )
        atomic_write_json(out_dir / "history.json", history)
    return {"seconds": elapsed, "final_loss": final_loss, "epochs": recipe.epochs,
            "steps": total_steps, "batch_size": batch_size, "precision": precision,
            "options": training_options(cfg, device), **subsets,
            "n_images": n, **({"world_size": tr.world} if tr.world > 1 else {})}
