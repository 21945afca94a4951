"""Process-group building blocks for one pretraining run on several GPUs (or CPU processes).

The stage that uses them is :mod:`benchmark.distributed`; this module knows nothing of stages.

Launch ``acbench pretrain`` under torchrun; the recipe's batch is the *global* batch, each process
gets ``batch / nproc`` images of it (the batch must divide evenly)::

    torchrun --standalone --nproc_per_node=4 -m benchmark.cli pretrain --method acl --preset paper --dataset cifar10

(``--device cpu`` runs the processes on the CPU with gloo; otherwise NCCL, one GPU per process.)
The run is the same stage as a one-process run (same key, same files), written by rank 0 alone;
the other ranks write nothing. Only ``acbench pretrain`` is multi-process; run finetuning and
evaluation as usual (one process) afterwards.

What makes a step on N processes equal to a step of one process on the global batch:

* Every process draws the same global permutation; rank r takes the r-th contiguous slice of each
  global batch, so gathering in rank order restores the global batch order. Augmentation and
  attack random starts use a per-rank seed (``seed + 1000003 * rank``).
* Embeddings are gathered with a gradient-carrying all-gather (:func:`gather_views`, called by
  methods through ``Method.gather``), so every process computes the same loss on the global batch.
  Its backward sums the incoming gradients over ranks and keeps this rank's slice; after the
  backward, gradients are averaged over ranks (:func:`average_gradients`: one all-reduce per
  dtype; no DistributedDataParallel wrapper, because methods call the model many times per step,
  through different BN branches and attribute paths, and attack it with input gradients only).
  Per-rank terms (AdvCL's pseudo-label cross-entropy, a mean over the local images) average to
  the global mean.
* Every BatchNorm of every branch is synchronised (:func:`convert_sync_batchnorm`):
  ``torch.nn.SyncBatchNorm`` on CUDA, :class:`CPUSyncBatchNorm` (all-reduced count, sum and
  centred sum of squares, differentiable) on CPU. State-dict keys are unchanged.
* Negatives inside the PGD loop are what each method's original used: global for ACL and AdvCL
  (their attack objectives call ``Method.gather``), per GPU for RoCL (its attack does not gather;
  released as 2 GPUs x 256). A RoCL run therefore depends on the number of processes; the stage
  summary (``done.json``) records ``world_size``.
* Rank 0 checkpoints every epoch (with every rank's RNG state); parameters and buffers are
  re-broadcast from rank 0 once per epoch so that replicas cannot drift.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

_local_only = False  # set while rank 0 runs a one-process upstream stage (see :func:`local_only`)

# ---- process group ----------------------------------------------------------------------------


def launched() -> bool:
    """True when started by torchrun (or similar) with more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> torch.device:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    NCCL with one GPU per process (``cuda:LOCAL_RANK``, made the current device) when CUDA is
    available and ``device`` is not ``"cpu"``; gloo on the CPU otherwise. The timeout (minutes,
    default 120: ranks wait while rank 0 alone makes an upstream stage) is ``ACBENCH_DIST_TIMEOUT_MIN``.
    Returns this process's device.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(
            f"under torchrun each process uses cuda:LOCAL_RANK; pass --device auto, cuda or cpu, not {device!r}"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs: use --nproc_per_node <= GPUs"
            )
        torch.cuda.set_device(local)
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=float(os.environ.get("ACBENCH_DIST_TIMEOUT_MIN", "120")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return dev


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a process group of more than one process (and not in :func:`local_only`)."""
    return (
        not _local_only and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    )


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: the current CUDA device under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within the block this process behaves as a one-process run (rank 0 making an upstream stage)."""
    global _local_only
    was, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = was


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a download), the others after it (they then only read)."""
    if not is_distributed():
        yield
        return
    if is_main():
        try:
            yield
        finally:
            barrier()
    else:
        barrier()
        yield


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 alone and hand its result to every rank; if it raises, every rank raises."""
    if not is_distributed():
        return fn()
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - reported to every rank, then re-raised
            error = e
    ok, value = broadcast_object((error is None, result if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if not ok:
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


# ---- gradient-carrying gather -----------------------------------------------------------------


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0 (rank order); backward: sum over ranks, own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # summed in (at least) float32: bf16 embeddings under autocast keep their gradients' precision
        total = grad.to(torch.promote_types(grad.dtype, torch.float32), memory_format=torch.contiguous_format)
        total = total.clone() if total is grad else total
        dist.all_reduce(total)
        return total[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n].to(grad.dtype)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (same shape on all) concatenated along dim 0 in rank order, differentiably.

    The backward all-reduces (sums) the gradient of the gathered tensor and returns this rank's
    slice: the gradient of the sum over ranks of each rank's loss. With gradients then averaged
    over ranks, a loss that every rank computes identically on the gathered tensor gets exactly
    the gradient of one process computing it on the global batch. ``x`` itself in one process.
    """
    if not is_distributed():
        return x
    return _AllGather.apply(x)


def gather_views(z: torch.Tensor) -> torch.Tensor:
    """[V, B_local, D] -> [V, B_global, D]: each view gathered along the batch, in rank order."""
    if not is_distributed():
        return z
    return all_gather_with_grad(z.transpose(0, 1)).transpose(0, 1)


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (a new tensor; ``x`` itself in one process)."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out.div_(world_size())


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace every ``p.grad`` by its mean over ranks (one flat all-reduce per dtype and device)."""
    if not is_distributed():
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    w = world_size()
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(w)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every rank (in place)."""
    if not is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=src)


# ---- synchronised BatchNorm -------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the union of every rank's batch, for CPU processes (gloo).

    ``torch.nn.SyncBatchNorm`` runs on CUDA only. In training mode under a process group this
    all-reduces the per-channel count and sum (-> global mean), then the centred sum of squares
    (-> global biased variance), differentiably; running statistics get the global mean and
    unbiased variance, exactly as one BatchNorm over the global batch. Otherwise (eval mode, one
    process) it is a plain BatchNorm. Accepts [N, C] and [N, C, ...] input.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected input of at least 2 dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        count = torch.full((1,), x.numel() // x.shape[1], dtype=xf.dtype, device=x.device)
        total = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, (CPUSyncBatchNorm, nn.SyncBatchNorm)
    ):
        out = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the same Parameters
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm of ``model`` (every BN branch of every layer, heads included) synchronised.

    ``torch.nn.SyncBatchNorm`` when the model is on CUDA, :class:`CPUSyncBatchNorm` otherwise.
    Parameters (the same objects) and running statistics are kept; state-dict keys are unchanged,
    so checkpoints load into one-process models. Convert before building the optimiser.
    """
    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)
