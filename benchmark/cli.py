"""The ``acbench`` command line (click).

Every command has ``--help``; commands that print data take ``--json``. Errors a user can fix end
with one message naming the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from benchmark.config import PRESETS, SCHEMES, SELECTIONS, get_preset
from benchmark.data import DATASETS, DataError
from benchmark.io import CheckpointError
from benchmark.models import CheckpointMismatch
from benchmark.pretrain import NonFiniteLoss
from benchmark.suite import JobFailed

USER_ERRORS = (
    JobFailed,
    ValueError, KeyError, DataError, CheckpointError, CheckpointMismatch, NonFiniteLoss,
    ImportError, FileNotFoundError, FloatingPointError,
)


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e)


def user_errors(fn):
    """Turn the errors a user can fix into one clean click error (exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as e:
            raise click.ClickException(_message(e)) from None

    return wrapper


def split_list(value: str | None, valid: tuple[str, ...] | list[str], what: str) -> tuple[str, ...]:
    if value is None:
        return tuple(valid)
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter(f"empty {what} list")
    for item in items:
        if item not in valid:
            import difflib

            close = difflib.get_close_matches(item, list(valid), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise click.BadParameter(f"unknown {what} {item!r}{hint}; choose from {', '.join(valid)}")
    return items


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"--param takes NAME=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def common(fn):
    """Options shared by the commands that run stages."""
    opts = [
        click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
                     show_default=True, help="Results folder (runs, records, leaderboards)."),
        click.option("--preset", type=click.Choice(list(PRESETS)), default="quick", show_default=True,
                     help="Scale of every stage: smoke (tests), quick (CPU demo), paper (GPU)."),
        click.option("--dataset", default=None, help=f"Dataset ({', '.join(DATASETS)}); default: the preset's."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Where CIFAR/STL live (default: $ACBENCH_DATA_DIR or ~/.cache/acbench/data)."),
        click.option("--download", is_flag=True, help="Download missing CIFAR/STL data (needs network)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                     help="Pretraining precision (auto: bf16 autocast on CUDA, fp32 on CPU). Evaluation is fp32."),
        click.option("--compile", "compile_model", is_flag=True,
                     help="torch.compile the pretraining model (a separate run: float rounding differs)."),
        click.option("--force", is_flag=True, help="Redo stages even if the run store has them."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def method_options(fn):
    fn = click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                      help="Override a method parameter (repeatable), e.g. --param ip=0.3.")(fn)
    return click.option("--method", required=True, help="Registered method name (see `acbench methods`).")(fn)


def make_options(results, data_dir, download, device, precision, force, quiet, compile_model=False):
    from benchmark.pipeline import RunOptions

    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise click.BadParameter(f"unknown device {device!r}; use auto, cpu or cuda[:N]", param_hint="--device")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    return RunOptions(results=Path(results).resolve(), data_dir=Path(data_dir).resolve() if data_dir else None,
                      download=download,
                      device=device, precision=precision, compile=compile_model, progress=not quiet,
                      force=force)


def check_inputs(method: str | None, params: dict[str, Any], preset: str, dataset: str | None, opts) -> str:
    """Validate names and load the data before anything is written; return the dataset name."""
    from benchmark.pipeline import dataset_for
    from methods import get_method

    p = get_preset(preset)
    dataset = dataset or p.dataset
    if dataset not in DATASETS:
        import difflib

        close = difflib.get_close_matches(dataset, DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise click.BadParameter(f"unknown dataset {dataset!r}{hint}; choose from {', '.join(DATASETS)}",
                                 param_hint="--dataset")
    if method is not None:
        get_method(method, dataset=dataset, **params)
    dataset_for(opts, p, dataset)
    return dataset


def emit(obj: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import a module that registers extra methods (repeatable).")
@click.version_option(package_name="acbench", message="acbench %(version)s")
@user_errors
def main(plugins: tuple[str, ...]) -> None:
    """acbench: a benchmark harness for adversarial contrastive learning.

    pretrain -> finetune (SLF / ALF / AFF) -> evaluate (clean, PGD-20, AutoAttack) -> records -> leaderboard
    """
    from methods import load_plugin

    for module in plugins:
        load_plugin(module)


@main.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Print each method with its parameters and paper recipe.")
@user_errors
def methods_cmd(as_json: bool) -> None:
    """List the registered methods (name, paper, what it changes)."""
    from methods import get_method, list_methods

    described = [get_method(n).describe() for n in list_methods()]
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    width = max(len(d["name"]) for d in described)
    for d in described:
        click.echo(f"{d['name']:<{width}}  {d['paper']:<40}  {d['summary']}")


@main.command()
@method_options
@common
@user_errors
def pretrain(method, params, results, preset, dataset, seed, data_dir, download, device, precision,
             compile_model, force, quiet, as_json) -> None:
    """Pretrain one method (skipped when the run store already has it).

    On several GPUs: torchrun --nproc_per_node=N -m benchmark.cli pretrain ... (the preset's batch
    is the global batch; rank 0 writes the run).
    """
    from benchmark import ddp as distributed_blocks
    from benchmark import distributed
    from benchmark.pipeline import pretrain_stage

    opts = make_options(results, data_dir, download, device, precision, force, quiet, compile_model)
    params = parse_params(params)
    if distributed_blocks.launched():  # torchrun: one run on several processes (benchmark/distributed.py)
        distributed_blocks.init_from_env(device)
        with distributed_blocks.main_first():  # rank 0 loads (or downloads) the data first
            dataset = check_inputs(method, params, preset, dataset, opts)
        key = distributed.pretrain_stage(opts, method, params, get_preset(preset), dataset, seed)
        main_rank = distributed_blocks.is_main()
        distributed_blocks.shutdown()
        if not main_rank:
            return
    else:
        dataset = check_inputs(method, params, preset, dataset, opts)
        key = pretrain_stage(opts, method, params, get_preset(preset), dataset, seed)
    d = opts.store.dir("pretrain", key)
    info = {"stage": "pretrain", "key": key, "dir": str(d), "checkpoint": str(d / "encoder.pt"),
            **opts.store.done_info("pretrain", key)}
    emit(info, as_json, f"pretrained {method} ({preset}, {dataset}, seed {seed}): {d / 'encoder.pt'}")


@main.command()
@method_options
@click.option("--schemes", default=None, help=f"Comma-separated subset of {','.join(SCHEMES)} (default: all).")
@click.option("--select", "selection", type=click.Choice(SELECTIONS), default="last", show_default=True,
              help="Model selection: last epoch, or best PGD-20 on the validation split.")
@common
@user_errors
def finetune(method, params, schemes, selection, results, preset, dataset, seed, data_dir, download, device,
             precision, compile_model, force, quiet, as_json) -> None:
    """Finetune a pretrained method under SLF / ALF / AFF (pretrains first if needed)."""
    from benchmark.pipeline import finetune_stage, pretrain_stage

    opts = make_options(results, data_dir, download, device, precision, force, quiet, compile_model)
    params = parse_params(params)
    schemes = split_list(schemes, SCHEMES, "scheme")
    dataset = check_inputs(method, params, preset, dataset, opts)
    p = get_preset(preset)
    pre = pretrain_stage(opts, method, params, p, dataset, seed)
    out = []
    for s in schemes:
        key = finetune_stage(opts, pre, s, p, dataset, seed, selection)
        out.append({"scheme": s, "key": key, "checkpoint": str(opts.store.dir("finetune", key) / "classifier.pt")})
    emit(out, as_json, "\n".join(f"{o['scheme']}: {o['checkpoint']}" for o in out))


def _run(method, params, schemes, attacks, selection, results, preset, dataset, seed, data_dir, download, device,
         precision, compile_model, force, quiet, jobs=1) -> list[dict]:

    from benchmark.pipeline import run_method

    opts = make_options(results, data_dir, download, device, precision, force, quiet, compile_model)
    params = parse_params(params)
    schemes = split_list(schemes, SCHEMES, "scheme")
    attacks = split_list(attacks, ("clean", "pgd20", "autoattack", "aa-lite"), "attack") if attacks is not None else (
        "clean", "pgd20", "autoattack")
    dataset = check_inputs(method, params, preset, dataset, opts)
    if jobs is None:  # CPU: one single-threaded worker per scheme (small-batch attacks are overhead-bound)
        jobs = len(schemes) if opts.torch_device().type == "cpu" else 1
    return run_method(opts, method, params, preset, dataset, seed, schemes, attacks, selection, jobs)


def _summary(records: list[dict]) -> str:
    lines = []
    for r in records:
        m = r["metrics"]
        cells = ", ".join(f"{k} {v:.2f}" for k, v in m.items() if v is not None)
        flags = f"  [flags: {'; '.join(r['flags'])}]" if r["flags"] else ""
        lines.append(f"{r['method']} {r['scheme']} (seed {r['seed']}, {r['preset']}, n={r['n_test']}): {cells}{flags}")
    return "\n".join(lines)


@main.command()
@method_options
@click.option("--schemes", default=None, help=f"Comma-separated subset of {','.join(SCHEMES)} (default: all).")
@click.option("--attacks", default=None, help="Comma-separated subset of pgd20,autoattack,aa-lite "
              "(default: pgd20,autoattack; clean accuracy is always measured).")
@click.option("--select", "selection", type=click.Choice(SELECTIONS), default="last", show_default=True)
@common
@user_errors
def evaluate(method, params, schemes, attacks, selection, results, preset, dataset, seed, data_dir, download,
             device, precision, compile_model, force, quiet, as_json) -> None:
    """Evaluate finetuned models and write records (runs missing upstream stages first)."""
    records = _run(method, params, schemes, attacks, selection, results, preset, dataset, seed, data_dir,
                   download, device, precision, compile_model, force, quiet)
    emit(records, as_json, _summary(records))


@main.command()
@method_options
@click.option("--schemes", default=None, help=f"Comma-separated subset of {','.join(SCHEMES)} (default: all).")
@click.option("--attacks", default=None, help="Comma-separated subset of pgd20,autoattack,aa-lite "
              "(default: pgd20,autoattack; clean accuracy is always measured).")
@click.option("--select", "selection", type=click.Choice(SELECTIONS), default="last", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes for the schemes after pretraining (default: one per scheme on CPU, 1 on GPU).")
@common
@user_errors
def run(method, params, schemes, attacks, selection, jobs, results, preset, dataset, seed, data_dir, download,
        device, precision, compile_model, force, quiet, as_json) -> None:
    """One method end to end: pretrain, finetune, evaluate, records."""
    records = _run(method, params, schemes, attacks, selection, results, preset, dataset, seed, data_dir,
                   download, device, precision, compile_model, force, quiet, jobs)
    if not as_json:
        click.echo(_summary(records))
        click.echo(f"records: {Path(results).resolve() / 'records'}")
    else:
        click.echo(json.dumps(records, indent=2))


@main.command()
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json", "html"]), default="md", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (default: print).")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write PNG plots into this folder.")
@click.option("--preset", default=None, help="Only this preset.")
@click.option("--dataset", default=None, help="Only this pretraining dataset.")
@click.option("--scheme", default=None, help="Only this scheme.")
@user_errors
def leaderboard(results, fmt, out, plots, preset, dataset, scheme) -> None:
    """Render the leaderboard from the records in RESULTS/records (a pure function of them)."""
    from benchmark.io import atomic_write_text
    from benchmark.leaderboard import (
        build_leaderboard,
        load_records,
        load_reported,
        render,
        write_plots,
    )

    if preset is not None:
        get_preset(preset)
    if scheme is not None:
        split_list(scheme, SCHEMES, "scheme")
    results = Path(results)
    if not (results / "records").is_dir():
        raise click.ClickException(f"no records in {results.resolve() / 'records'}; run `acbench run` first")
    records, warnings = load_records(results)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    board = build_leaderboard(records, load_reported(results), preset=preset, dataset=dataset, scheme=scheme)
    text = render(board, fmt)
    if out is not None:
        atomic_write_text(out, text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text)
    if plots is not None:
        for p in write_plots(board, plots):
            click.echo(f"wrote {p}", err=True)


@main.command()
@click.argument("suite_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@click.option("--preset", default=None, help="smoke, quick or paper (default: the file's, else quick).")
@click.option("--methods", default=None, help="Comma-separated method names, or 'all' (default).")
@click.option("--datasets", default=None, help="Comma-separated datasets (default: the preset's).")
@click.option("--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2 (default: 0).")
@click.option("--schemes", default=None, help="Comma-separated subset of slf,alf,aff (default: all).")
@click.option("--attacks", default=None, help="Comma-separated subset of pgd20,autoattack,aa-lite.")
@click.option("--select", "selection", default=None, help="Model selection: last or val.")
@click.option("--executor", default=None,
              help="local, pool, submitit-local or slurm (default: pool on a CPU-only machine, else local).")
@click.option("--jobs", type=int, default=None,
              help="Worker processes for --executor pool (default: CPU cores + 1 on a CPU-only machine).")
@click.option("--partition", default=None, help="SLURM partition.")
@click.option("--time-min", type=int, default=None, help="SLURM time limit per job (minutes).")
@click.option("--gpus-per-job", type=int, default=None, help="SLURM GPUs per job.")
@click.option("--array-parallelism", type=int, default=None, help="SLURM jobs of an array running at once.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--download", is_flag=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True)
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the pretraining models.")
@click.option("--force", is_flag=True, help="Redo every stage of the grid.")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def suite(suite_file, results, preset, methods, datasets, seeds, schemes, attacks, selection, executor, jobs,
          partition, time_min, gpus_per_job, array_parallelism, data_dir, download, device, precision,
          compile_model, force, quiet, as_json) -> None:
    """Run a benchmark grid (method x dataset x seed x scheme) and write RESULTS/leaderboard.md.

    Options override SUITE_FILE (TOML with the same keys: preset, methods, datasets, seeds, schemes,
    attacks, selection, executor, jobs, [slurm], [params.<method>]). Finished stages are skipped.
    """
    from benchmark.pipeline import dataset_for
    from benchmark.suite import build_suite, load_suite_file, run_suite

    fields = load_suite_file(suite_file) if suite_file else {}
    where = str(suite_file) if suite_file else "options"
    cli = {"preset": preset, "methods": methods, "datasets": datasets, "schemes": schemes, "attacks": attacks,
           "selection": selection, "executor": executor, "jobs": jobs}
    if seeds is not None:
        try:
            cli["seeds"] = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    fields.update({k: v for k, v in cli.items() if v is not None})
    slurm = dict(fields.get("slurm", {}))
    for k, v in (("partition", partition), ("time_min", time_min), ("gpus_per_job", gpus_per_job),
                 ("array_parallelism", array_parallelism)):
        if v is not None:
            slurm[k] = v
    if slurm:
        fields["slurm"] = slurm
    opts = make_options(results, data_dir, download, device, precision, force, quiet, compile_model)
    if "executor" not in fields and opts.torch_device().type == "cpu":
        import os

        # single-threaded workers, one more than cores: the small-batch attacks are overhead-bound
        fields["executor"] = "pool"
        fields.setdefault("jobs", (os.cpu_count() or 1) + 1)
    spec = build_suite(fields, where)
    for d in spec.resolved_datasets():  # missing data fails here, before anything runs
        dataset_for(opts, get_preset(spec.preset), d)
    summary = run_suite(opts, spec, progress=not quiet, echo=lambda s: click.echo(s, err=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{summary['jobs']} jobs, {summary['failed']} failed, {summary['seconds']:.1f}s")
        for p in summary["leaderboard"]:
            click.echo(f"wrote {p}")
    if summary["failed"]:
        sys.exit(1)


@main.command()
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def status(results, as_json) -> None:
    """The run store's stages: state (done, running, failed, incomplete), duration, record."""
    from benchmark.store import RunStore

    rows = RunStore(Path(results)).stages()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no stages in {Path(results).resolve() / 'runs'}")
        return
    from tabulate import tabulate

    click.echo(tabulate(
        [[r["stage"], r["key"], r["state"], "" if r["seconds"] is None else f"{r['seconds']:.1f}", r["what"]]
         for r in rows],
        headers=["stage", "key", "state", "seconds", "what"], tablefmt="github"))


from benchmark.perf import perf as perf_command  # noqa: E402

main.add_command(perf_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
