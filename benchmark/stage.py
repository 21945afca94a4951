"""The one stage runner: every stage (pretraining, pseudo-labels, finetuning, evaluation, ...) is a
:class:`Stage` and runs through :func:`run_once`::

    upstream keys -> key = hash(stage config, upstream keys, code tag) -> done? return key
                  -> prepare (validate inputs; nothing written) -> lock -> done? -> begin -> run -> finish

A stage declares what it needs (:meth:`Stage.upstream`: other stages, by role); the runner runs
those first, so nothing outside a stage knows its dependencies. A stage marked ``shared`` (made
once and reused by many runs, such as AdvCL's pseudo-labels) is never rebuilt by ``--force``, nor is
anything it needs.

CPU stages run with a fixed number of intra-op threads (:attr:`RunOptions.threads`, default 1) so
that a record does not depend on how it was scheduled (``acbench run``, the suite's local, pool or
submitit executors, any ``--jobs``): parallelism comes from processes on top. A thread count other
than the default enters the stage key, since it changes floating-point results.
"""

from __future__ import annotations

import contextlib
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.data import Dataset, load_dataset
from benchmark.devices import resolve_device
from benchmark.store import RunStore, stage_key

DEFAULT_THREADS = 1  # intra-op threads of every CPU stage


@dataclass(frozen=True)
class RunOptions:
    """How to run: folders, device, output. ``precision``, ``compile`` and a non-default
    ``threads`` enter stage keys, because they change floating-point results."""

    results: Path = Path("results")
    data_dir: Path | None = None
    download: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False  # torch.compile in pretraining (part of the pretrain key when set)
    threads: int = DEFAULT_THREADS  # intra-op threads on CPU
    progress: bool = True
    force: bool = False

    @property
    def store(self) -> RunStore:
        return RunStore(Path(self.results))

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def recorded_threads(self) -> int | None:
        """The thread count a CPU run uses (None on GPU, where it does not change results)."""
        return self.threads if self.torch_device().type == "cpu" else None


@functools.lru_cache(maxsize=8)
def _dataset(name: str, data_dir: str | None, download: bool, image_size: int | None) -> Dataset:
    return load_dataset(name, data_dir=data_dir, download=download, image_size=image_size)


def dataset_for(opts: RunOptions, name: str, image_size: int | None, resize: bool = False) -> Dataset:
    """The dataset ``name`` (cached per process). ``image_size`` applies to the embedded datasets,
    and with ``resize`` to every dataset (a transfer: STL-10 at a CIFAR encoder's 32 px)."""
    size = image_size if resize or name in ("digits", "synthetic") else None
    return _dataset(name, str(opts.data_dir) if opts.data_dir else None, opts.download, size)


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the duration (no change when ``n`` is None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class StageRun:
    """What :meth:`Stage.run` gets: its folder, the keys of its upstream stages, the options."""

    dir: Path
    key: str
    upstream: dict[str, str]
    opts: RunOptions
    upstream_kind: dict[str, str] = field(default_factory=dict)  # role -> stage kind

    def upstream_dir(self, role: str) -> Path:
        return self.opts.store.dir(self.upstream_kind[role], self.upstream[role])


class Stage(ABC):
    """One cached step of the pipeline. Subclasses are small frozen dataclasses."""

    kind: ClassVar[str]  # the run-store folder: runs/<kind>/<key>/
    shared: ClassVar[bool] = False  # made once for many runs: --force never rebuilds it
    collective: ClassVar[bool] = False  # under torchrun, every rank takes part (pretraining)

    def upstream(self) -> dict[str, Stage]:
        """The stages this one needs, by role (their keys enter this stage's key)."""
        return {}

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that determines the output (with the upstream keys: the stage key)."""

    def prepare(self, opts: RunOptions, upstream: dict[str, str]) -> None:
        """Validate the inputs before anything is written (load the data, open checkpoints)."""
        return None

    @abstractmethod
    def run(self, run: StageRun) -> dict[str, Any]:
        """Compute the stage into ``run.dir``; return its summary (``done.json``)."""

    def notes(self) -> dict[str, Any]:
        """What ``config.json`` keeps beyond the key's config (e.g. where an input file was)."""
        return {}

    def outputs(self, opts: RunOptions, key: str) -> dict[str, Any]:
        """What a downstream stage receives from this one, read from its finished folder."""
        return {}

    def describe(self) -> str:
        return self.kind


def stage_config(stage: Stage, opts: RunOptions) -> dict[str, Any]:
    config = stage.config()
    if opts.threads != DEFAULT_THREADS and opts.torch_device().type == "cpu":
        config = {**config, "threads": opts.threads}  # default runs keep their keys
    return config


def key_of(stage: Stage, opts: RunOptions, upstream: dict[str, str] | None = None) -> str:
    """The stage's key; without ``upstream`` keys, they are computed too (nothing runs)."""
    if upstream is None:
        upstream = {role: key_of(up, opts) for role, up in stage.upstream().items()}
    return stage_key(stage.kind, stage_config(stage, opts), upstream)


@dataclass
class Session:
    """Stages already settled by one command: with ``--force``, each is rebuilt once, not once per
    downstream stage. ``force`` lists the stage kinds that ``--force`` rebuilds."""

    force: frozenset[str] = frozenset()
    settled: set[tuple[str, str]] = field(default_factory=set)


def below(stage: Stage, session: Session) -> Session:
    """The session for the stages ``stage`` needs: never forced below a shared stage."""
    return Session(settled=session.settled) if stage.shared else session


def settle(stage: Stage, session: Session, key: str) -> bool:
    """Mark the stage settled for this session; True when it must be rebuilt (``--force``)."""
    force = stage.kind in session.force and not stage.shared and (stage.kind, key) not in session.settled
    session.settled.add((stage.kind, key))
    return force


def execute(stage: Stage, run: StageRun) -> dict[str, Any]:
    """``stage.run`` with the run's thread count; the summary gets ``seconds`` and ``threads``."""
    t0 = time.time()
    with intra_op_threads(run.opts.recorded_threads()):
        info = stage.run(run)
    info.setdefault("seconds", time.time() - t0)
    info.setdefault("threads", run.opts.recorded_threads())
    return info


def run_once(stage: Stage, opts: RunOptions, session: Session | None = None) -> str:
    """Run ``stage`` (and what it needs) unless the run store has it; return its key."""
    session = session if session is not None else Session()
    upstream = {role: run_once(up, opts, below(stage, session)) for role, up in stage.upstream().items()}
    key = key_of(stage, opts, upstream)
    store = opts.store
    force = settle(stage, session, key)
    if store.is_done(stage.kind, key) and not force:
        return key
    stage.prepare(opts, upstream)
    with store.running(stage.kind, key):
        if store.is_done(stage.kind, key) and not force:
            return key  # another process finished it meanwhile
        d = store.begin(stage.kind, key, begin_config(stage, opts, upstream), force=force)
        info = execute(stage, StageRun(d, key, upstream, opts, kinds(stage)))
        store.finish(stage.kind, key, info)
    return key


def kinds(stage: Stage) -> dict[str, str]:
    return {role: up.kind for role, up in stage.upstream().items()}


def begin_config(stage: Stage, opts: RunOptions, upstream: dict[str, str]) -> dict[str, Any]:
    """What ``config.json`` holds: the stage's config and its upstream keys."""
    return {**stage_config(stage, opts), **stage.notes(), "upstream": upstream}
