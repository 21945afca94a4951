"""The suite runner: a thin scheduler over the pipeline's stage DAG.

A suite is a grid (method x dataset x seed x scheme x attack). Its jobs come in two layers:

1. one pretraining job per (method, dataset, seed) (AdvCL's pseudo-label stage runs inside it,
   shared through the run store);
2. one job per (method, dataset, seed, scheme): finetune, evaluate, write the record.

The same job functions run under every executor (:mod:`benchmark.executors`): ``local`` (in this
process, in order), ``pool`` (N worker processes, a scheme job starting as soon as its own
pretraining is done), ``submitit-local`` (submitit's local executor, used by the tests) and
``slurm`` (submitit job arrays, one per layer). Stages already in the run store are skipped; a
failed job is reported with its log and the rest of the grid goes on.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from attacks import check_attack_spec
from benchmark.config import PRESETS, get_preset
from benchmark.data import DATASETS
from benchmark.errors import AcbenchError, ConfigError, did_you_mean
from benchmark.executors import EXECUTOR_NAMES, run_grid
from benchmark.pipeline import Target, record_path, run_pretrain_stage, run_scheme, session_for
from benchmark.protocols import METHOD_FAMILY, PROTOCOLS, ROBUSTSSL, UNIFORM
from benchmark.records import Record
from benchmark.schemes import SELECTIONS, get_scheme, scheme_names, scheme_sort_key
from benchmark.stage import RunOptions
from methods import list_methods, method_class

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib



class SuiteError(ConfigError):
    """A suite file or option that cannot run; raised before anything runs."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 32
    array_parallelism: int = 32


@dataclass(frozen=True)
class Suite:
    preset: str = "quick"
    methods: tuple[str, ...] = ("all",)
    datasets: tuple[str, ...] = ()  # empty: the preset's dataset
    seeds: tuple[int, ...] = (0,)
    schemes: tuple[str, ...] = ()  # empty: every registered scheme
    attacks: tuple[str, ...] = ("pgd20", "autoattack")
    selection: str = "last"
    protocol: str = UNIFORM  # finetuning protocol
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method overrides
    pretrained: dict[str, str] = field(default_factory=dict)  # method -> imported checkpoint key
    finetune_dataset: str = ""  # empty: each pretraining dataset; else a transfer to this one
    executor: str = "local"
    jobs: int = 1
    slurm: SlurmOptions = SlurmOptions()

    def resolved_methods(self) -> tuple[str, ...]:
        return tuple(list_methods()) if self.methods == ("all",) else self.methods

    def resolved_schemes(self) -> tuple[str, ...]:
        return self.schemes or tuple(scheme_names())

    def resolved_datasets(self) -> tuple[str, ...]:
        return self.datasets or (get_preset(self.preset).dataset,)


def _choice(key: str, values: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    for v in values:
        if v not in valid:
            raise SuiteError(f"{key}: unknown value {v!r}{did_you_mean(v, valid)}; choose from {', '.join(valid)}")
    return tuple(values)


def _checked(key: str, values: Sequence[str], check: Callable[[str], Any]) -> tuple[str, ...]:
    """``values`` if ``check`` accepts each one; else a SuiteError naming the key and the problem."""
    for v in values:
        try:
            check(v)
        except AcbenchError as e:
            raise SuiteError(f"{key}: {e}") from None
    return tuple(values)


def _as_list(key: str, value: Any, kind: type) -> list:
    if isinstance(value, str) and kind is str:
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, str) and kind is int:
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise SuiteError(f"{key}: expected a list of integers, got {value!r}") from None
    if isinstance(value, kind) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    ):
        raise SuiteError(f"{key}: expected a non-empty list of {kind.__name__}, got {value!r}")
    return value


def build_suite(fields: dict[str, Any], where: str = "suite") -> Suite:
    """Validate raw fields (from a suite file and/or the command line) into a :class:`Suite`."""
    known = {f.name for f in dataclasses.fields(Suite)}
    for key in fields:
        if key not in known:
            raise SuiteError(f"{where}: unknown key {key!r}{did_you_mean(key, sorted(known))}; "
                             f"known keys: {', '.join(sorted(known))}")
    out: dict[str, Any] = {}
    if "preset" in fields:
        out["preset"] = _choice("preset", [fields["preset"]], list(PRESETS))[0]
    if "methods" in fields:
        methods = _as_list("methods", fields["methods"], str)
        out["methods"] = tuple(methods) if methods == ["all"] else _checked("methods", methods, method_class)
    if "datasets" in fields:
        out["datasets"] = _choice("datasets", _as_list("datasets", fields["datasets"], str), DATASETS)
    if "seeds" in fields:
        seeds = _as_list("seeds", fields["seeds"], int)
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise SuiteError(f"seeds: expected distinct non-negative integers, got {seeds}")
        out["seeds"] = tuple(seeds)
    if "schemes" in fields:
        out["schemes"] = _choice("schemes", _as_list("schemes", fields["schemes"], str), scheme_names())
    if "attacks" in fields:
        out["attacks"] = _checked("attacks", _as_list("attacks", fields["attacks"], str), check_attack_spec)
    if "selection" in fields:
        out["selection"] = _choice("selection", [fields["selection"]], SELECTIONS)[0]
    if "protocol" in fields:
        out["protocol"] = _choice("protocol", [fields["protocol"]], PROTOCOLS)[0]
    if "executor" in fields:
        out["executor"] = _choice("executor", [fields["executor"]], EXECUTOR_NAMES)[0]
    if "jobs" in fields:
        jobs = fields["jobs"]
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise SuiteError(f"jobs: expected a positive integer, got {jobs!r}")
        out["jobs"] = jobs
    if "slurm" in fields:
        raw = fields["slurm"]
        if not isinstance(raw, dict):
            raise SuiteError("slurm: expected a table of options")
        names = {f.name for f in dataclasses.fields(SlurmOptions)}
        for k in raw:
            if k not in names:
                raise SuiteError(f"slurm: unknown key {k!r}; known keys: {', '.join(sorted(names))}")
        out["slurm"] = SlurmOptions(**raw)
    if "finetune_dataset" in fields:
        out["finetune_dataset"] = _choice("finetune_dataset", [fields["finetune_dataset"]], DATASETS)[0]
    if "pretrained" in fields:
        raw = fields["pretrained"]
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise SuiteError("pretrained: expected a table [pretrained] of method = \"<import key>\"")
        out["pretrained"] = dict(raw)
    if "params" in fields:
        raw = fields["params"]
        if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
            raise SuiteError("params: expected tables [params.<method>] of parameter = value")
        for m, p in raw.items():
            if m not in list_methods():
                raise SuiteError(f"params: unknown method {m!r}")
            try:
                method_class(m)(**p)
            except (ValueError, TypeError) as e:
                raise SuiteError(f"params.{m}: {e}") from None
        out["params"] = {m: dict(p) for m, p in raw.items()}
    suite = Suite(**out)
    if suite.protocol == ROBUSTSSL:
        missing = [m for m in suite.resolved_methods() if m not in METHOD_FAMILY]
        if missing:
            raise SuiteError(f"protocol robustssl: RobustSSL has no finetuning settings for {', '.join(missing)}; "
                             "choose other methods or protocol uniform")
    return suite


def load_suite_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SuiteError(f"suite file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SuiteError(f"suite file {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise SuiteError(f"cannot read suite file {path}: {e}") from None
    return data


# ---- jobs (top-level functions: picklable for process pools and submitit) ----------------------


@dataclass(frozen=True)
class Job:
    kind: str  # "pretrain" | "scheme"
    method: str
    dataset: str
    seed: int
    scheme: str | None = None

    @property
    def name(self) -> str:
        tail = f"/{self.scheme}" if self.scheme else ""
        return f"{self.kind} {self.method} {self.dataset} s{self.seed}{tail}"


def target_of(suite: Suite, job: Job) -> Target:
    return Target(job.method, dict(suite.params.get(job.method, {})), get_preset(suite.preset), job.dataset,
                  job.seed, tuple(suite.attacks), suite.selection, suite.protocol, suite.pretrained.get(job.method),
                  suite.finetune_dataset)


def run_job(opts: RunOptions, suite: Suite, job: Job) -> dict[str, Any]:
    """Run one job; never raises: returns {"ok": bool, ...} so a failure does not stop the grid.

    With ``--force``, a pretrain job rebuilds the pretraining and a scheme job its finetuning and
    evaluation (the pretraining was rebuilt by its own job, once).
    """
    t0 = time.time()
    target = target_of(suite, job)
    try:
        if job.kind == "pretrain":
            key = run_pretrain_stage(opts, target, session_for(opts, frozenset({"pretrain"})))
            return {"ok": True, "job": job.name, "seconds": time.time() - t0, "key": key}
        rec = run_scheme(opts, target, job.scheme, session_for(opts, frozenset({"finetune", "evaluate"})))
        return {"ok": True, "job": job.name, "seconds": time.time() - t0,
                "record": str(record_path(opts.results, rec))}
    except Exception as e:  # reported, the grid goes on
        return {"ok": False, "job": job.name, "seconds": time.time() - t0,
                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


class JobFailed(AcbenchError):
    """A job of ``acbench run --jobs N`` failed (its message holds the cause)."""


def run_method(opts: RunOptions, target: Target, schemes: Sequence[str], jobs: int = 1) -> list[Record]:
    """One method end to end: pretrain once, then finetune + evaluate each scheme, in this process
    (``jobs == 1``) or in ``jobs`` worker processes; returns the records in ``schemes`` order."""
    suite = Suite(preset=target.preset.name, methods=(target.method,), datasets=(target.dataset,),
                  seeds=(target.seed,), schemes=tuple(schemes),
                  attacks=tuple(a for a in target.attacks if a != "clean"), selection=target.selection,
                  protocol=target.protocol,
                  pretrained={target.method: target.pretrained} if target.pretrained else {},
                  finetune_dataset=target.finetune_dataset if target.finetune_dataset != target.dataset else "",
                  params={target.method: dict(target.params)}, executor="pool" if jobs > 1 else "local",
                  jobs=max(1, min(jobs, len(schemes))))
    if suite.preset not in PRESETS or get_preset(suite.preset) != target.preset:
        raise ConfigError(f"preset {target.preset.name!r} is not a registered preset")
    precheck(opts, suite)
    results: dict[str, dict] = {}
    grid = layers(suite)
    run_grid(opts, suite, grid, run_job, lambda r: results.__setitem__(r["job"], r))
    for job in grid[0] + grid[1]:
        r = results[job.name]
        if not r["ok"]:
            raise JobFailed(f"{r['job']} failed: {r['error']}")
    by_scheme = {j.scheme: j for j in grid[1]}
    return [Record.load(Path(results[by_scheme[sc].name]["record"])) for sc in schemes]


def precheck(opts: RunOptions, suite: Suite) -> None:
    """Fail before any job runs on what the jobs would meet later, checked as they check it: each
    evaluated dataset's CIFAR-C files when ``corruption`` is among the attacks (a missing file: one
    line naming it, as ``EvaluateStage.corrupted`` raises it), for every pretraining dataset."""
    method, seed, scheme = suite.resolved_methods()[0], suite.seeds[0], suite.resolved_schemes()[0]
    for d in suite.resolved_datasets():
        target_of(suite, Job("scheme", method, d, seed, scheme)).evaluate(opts, scheme).corrupted(opts)


def layers(suite: Suite) -> list[list[Job]]:
    """The grid's two layers, each ordered longest job first so that a pool's last jobs are short:
    pretrainings that need upstream stages (AdvCL's SimCLR + pseudo-labels) before the others, and
    schemes that train the encoder (AFF), then the later schemes of the table, before SLF. The
    order changes when a job runs, never what it computes."""
    grid = [(m, d, s) for m in suite.resolved_methods() for d in suite.resolved_datasets() for s in suite.seeds]
    pretrain = [Job("pretrain", m, d, s) for m, d, s in grid]
    schemes = [Job("scheme", m, d, s, sc) for m, d, s in grid for sc in suite.resolved_schemes()]
    pretrain.sort(key=lambda j: not method_class(j.method).requires)  # stable: grid order otherwise
    schemes.sort(key=lambda j: (not get_scheme(j.scheme).trains_encoder, -scheme_sort_key(j.scheme)[0]))
    return [pretrain, schemes]


def run_suite(opts: RunOptions, suite: Suite, progress: bool = True,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every missing stage of the suite's grid. Returns a summary (jobs, failures, seconds).

    One progress bar counts the jobs of the whole grid (done / total, with an ETA).
    """
    t0 = time.time()
    precheck(opts, suite)
    grid_layers = layers(suite)
    total = sum(len(j) for j in grid_layers)
    bar = tqdm(total=total, desc="suite", unit="job", disable=not progress, dynamic_ncols=True)
    results: list[dict[str, Any]] = []

    def report(r: dict[str, Any]) -> None:
        results.append(r)
        bar.update(1)
        status = "done" if r["ok"] else "FAILED"
        line = f"{status:6s} {r['job']} ({r['seconds']:.1f}s)" if "seconds" in r else f"{status} {r['job']}"
        if not r["ok"]:
            line += f": {r['error']}" + (f" [log: {r['log']}]" if r.get("log") else "")
        tqdm.write(line) if progress else echo(line)

    run_grid(opts, suite, grid_layers, run_job, report)
    bar.close()
    failures = [r for r in results if not r["ok"]]
    return {"seconds": time.time() - t0, "jobs": len(results), "failed": len(failures), "failures": failures}
