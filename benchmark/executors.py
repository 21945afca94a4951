"""How a suite's jobs run: the executors, and the order in which a grid's jobs are started.

A grid has two layers (:func:`benchmark.suite.layers`): pretraining jobs, then scheme jobs
(finetune + evaluate), each needing the pretraining of its (method, dataset, seed). A scheme job
whose pretraining failed is reported as skipped and never runs.

- ``local``: every job in this process, layer after layer.
- ``pool``: ``jobs`` worker processes for the whole grid, with no barrier between the layers: a
  scheme job becomes ready when its own pretraining is done, and whenever a worker is free it takes
  the ready job that comes first in the grid's order (pretrainings, then the longest schemes). Idle
  workers start at once and import while the first jobs run.
- ``submitit-local`` / ``slurm``: one submitit job array per layer.

The order decides when a job runs, never what it computes: each job's stages are keyed and
seeded on their own, so every executor writes the same records.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import importlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.stage import RunOptions

Report = Callable[[dict[str, Any]], None]
RunJob = Callable[[RunOptions, Any, Any], dict[str, Any]]  # (opts, suite, job) -> result
EXECUTOR_NAMES = ("local", "pool", "submitit-local", "slurm")
WARM_MODULES = ("benchmark.suite", "pyautoattack")  # what a pool worker imports before its first job


def owner(job: Any) -> tuple[str, str, int]:
    """The pretraining a job belongs to: (method, dataset, seed)."""
    return (job.method, job.dataset, job.seed)


def skipped(job: Any) -> dict[str, Any]:
    return {"ok": False, "job": job.name, "seconds": 0.0, "error": "skipped: its pretraining failed"}


def run_grid(opts: RunOptions, suite: Any, grid: list[list[Any]], run: RunJob, report: Report) -> None:
    """Run ``grid`` (``[pretrain jobs, scheme jobs]``) with ``suite.executor``, reporting every
    job's result (``run(opts, suite, job)``'s dict) through ``report``."""
    if suite.executor == "pool":
        quiet = dataclasses.replace(opts, progress=False)  # one overall bar, not one per worker
        with _process_pool(suite.jobs) as pool:
            stream(lambda job: pool.submit(run, quiet, suite, job), suite.jobs, grid, report,
                   warm=lambda: pool.submit(warm_up, WARM_MODULES))
        return
    pretrain, schemes = grid
    failed: set[tuple[str, str, int]] = set()
    names = {job.name: job for job in pretrain}

    def on_pretrain(r: dict[str, Any]) -> None:
        if not r["ok"] and r["job"] in names:
            failed.add(owner(names[r["job"]]))
        report(r)

    execute = LAYERED[suite.executor]
    execute(opts, suite, pretrain, run, on_pretrain)
    for job in schemes:
        if owner(job) in failed:
            report(skipped(job))
    execute(opts, suite, [j for j in schemes if owner(j) not in failed], run, report)


def stream(submit: Callable[[Any], cf.Future], workers: int, grid: list[list[Any]], report: Report,
           warm: Callable[[], Any] | None = None) -> None:
    """The pool's schedule: at most ``workers`` jobs in flight; a free worker takes the first ready
    job in grid order; a scheme job is ready once its pretraining is done (skipped if it failed).
    ``warm`` is called once per worker left idle at the start."""
    pretrain, schemes = grid
    rank = {id(job): i for i, job in enumerate(pretrain + schemes)}
    pretrained = {owner(job) for job in pretrain}
    blocked: dict[tuple[str, str, int], list[Any]] = {}
    ready = list(pretrain)
    for job in schemes:
        (blocked.setdefault(owner(job), []) if owner(job) in pretrained else ready).append(job)
    running: dict[cf.Future, Any] = {}

    def fill() -> None:
        ready.sort(key=lambda job: rank[id(job)])
        while ready and len(running) < workers:
            job = ready.pop(0)
            running[submit(job)] = job

    fill()
    if warm is not None:
        for _ in range(workers - len(running)):
            warm()
    while running:
        done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for fut in sorted(done, key=lambda f: rank[id(running[f])]):
            job = running.pop(fut)
            result = fut.result()
            report(result)
            if job.kind == "pretrain":
                waiting = blocked.pop(owner(job), [])
                if result["ok"]:
                    ready.extend(waiting)
                else:
                    for other in waiting:
                        report(skipped(other))
        fill()


def warm_up(modules: tuple[str, ...]) -> None:
    """Import ``modules`` (in a pool worker, before its first job arrives)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional package: its first use reports it
            pass


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Pool worker initializer: exit when the parent process is gone (killed by SIGKILL, say).

    Otherwise the workers of a killed ``acbench`` wait forever on a queue whose write end they
    hold themselves, each keeping its memory.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="acbench-parent-watch", daemon=True).start()


def _process_pool(workers: int) -> cf.ProcessPoolExecutor:
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_exit_with_parent,
                                  initargs=(os.getpid(),))


def _local(opts: RunOptions, suite: Any, jobs: list[Any], run: RunJob, report: Report) -> None:
    for job in jobs:
        report(run(opts, suite, job))


def _submitit(opts: RunOptions, suite: Any, jobs: list[Any], run: RunJob, report: Report,
              cluster: str = "local") -> None:
    import submitit  # only the submitit executors need it

    folder = Path(opts.results) / "runs" / "_submitit" / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    if cluster == "slurm":
        s = suite.slurm
        ex.update_parameters(
            timeout_min=s.time_min, gpus_per_node=s.gpus_per_job, cpus_per_task=s.cpus_per_job,
            mem_gb=s.mem_gb, slurm_array_parallelism=s.array_parallelism,
            **({"slurm_partition": s.partition} if s.partition else {}),
        )
    else:
        ex.update_parameters(timeout_min=suite.slurm.time_min)
    n = len(jobs)
    opts = dataclasses.replace(opts, progress=False)  # logs go to files: no progress bars
    handles = ex.map_array(run, [opts] * n, [suite] * n, jobs)  # one job array per layer
    for job, handle in zip(jobs, handles):
        try:
            result = handle.result()
        except Exception as e:  # the job itself died (killed, out of memory, ...)
            result = {"ok": False, "job": job.name, "error": f"{type(e).__name__}: {e}"}
        if not result["ok"]:
            result["log"] = str(handle.paths.stderr)
        report(result)


# the executors that run a grid layer after layer (``pool`` streams: :func:`stream`)
LAYERED: dict[str, Callable[..., None]] = {
    "local": _local,
    "submitit-local": _submitit,
    "slurm": functools.partial(_submitit, cluster="slurm"),
}
