"""Device and precision names as the user writes them (``auto``, ``cpu``, ``cuda:1``; ``auto``,
``fp32``, ``bf16``), resolved once for every command."""

from __future__ import annotations

import torch

from benchmark.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (must exist)."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "meta":  # tests: shape-only runs
        return torch.device("meta")
    if name.startswith("cuda"):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
        if not torch.cuda.is_available():
            raise ConfigError("CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"no device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
        return device
    raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 autocast on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def uses_channels_last(device: torch.device) -> bool:
    """Whether models run in the channels-last memory layout on ``device``: on CUDA (tensor cores)
    and on the CPU, where oneDNN's convolutions are 1.2x (training) to 1.45x (input gradients, the
    attacks) faster for the small backbones. Same arithmetic, another summation order: results
    move in the last float digits, so the layout is recorded with every stage that uses it."""
    return device.type in ("cuda", "cpu")


def autotunes(device: torch.device) -> bool:
    """Whether cuDNN picks each convolution's algorithm by timing them (``cudnn.benchmark``) on
    ``device``: on CUDA, where every stage runs fixed shapes and the H200 profile measured an ACL
    step 10 % faster (results/perf/README.md). GPU float results are not bit-reproducible either
    way (cuDNN's default kernels reduce with atomics); the choice is recorded with every stage."""
    return device.type == "cuda"


def to_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in the memory layout :func:`uses_channels_last` picks for ``device``, with cuDNN
    autotuning switched on where :func:`autotunes` says (every stage puts its model through here)."""
    if autotunes(device):
        torch.backends.cudnn.benchmark = True
    return model.to(memory_format=torch.channels_last) if uses_channels_last(device) else model
