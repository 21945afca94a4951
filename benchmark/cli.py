"""The ``acbench`` command line (click).

Every command has ``--help``; commands that print data take ``--json``. An error the user can fix
(:class:`benchmark.errors.AcbenchError`) ends with one line naming the problem and exit status 1.
Anything else is a bug: one line saying so, and ``acbench --debug ...`` shows its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

import benchmark.ddp as ddp
from benchmark import distributed
from benchmark.cli_common import (
    Group,
    emit,
    json_option,
    protocol_option,
    resolve_schemes,
    results_option,
    run_options,
    schemes_option,
    target_options,
)
from benchmark.config import PRESETS, get_preset
from benchmark.data import DATASETS, load_dataset
from benchmark.errors import check_choice
from benchmark.imports import ImportStage
from benchmark.io import atomic_write_text
from benchmark.labels import check_pseudo_labels, save_pseudo_labels
from benchmark.leaderboard import build_leaderboard, load_records, load_reported
from benchmark.perf import perf_all, render_table, reports_json
from benchmark.perf_epoch import render_epochs, time_epochs
from benchmark.pipeline import Target, run_pretrain_stage, session_for
from benchmark.records import Record
from benchmark.released import FORMATS, convert_advcl_labels
from benchmark.render import render, write_plots
from benchmark.schemes import SELECTIONS
from benchmark.stage import RunOptions, dataset_for, run_once
from benchmark.store import RunStore
from benchmark.suite import build_suite, load_suite_file, run_method, run_suite
from methods import get_method, list_methods, load_plugin
from methods.advcl import CLUSTERS


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import a module that registers methods, schemes or attacks (repeatable).")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
@click.version_option(package_name="acbench", message="acbench %(version)s")
def main(plugins: tuple[str, ...], debug: bool) -> None:
    """acbench: a benchmark harness for adversarial contrastive learning.

    pretrain -> finetune (SLF / ALF / AFF) -> evaluate (clean, PGD-20, AutoAttack) -> records -> leaderboard
    """
    for module in plugins:
        load_plugin(module)


@main.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Print each method with its parameters and paper recipe.")
def methods_cmd(as_json: bool) -> None:
    """List the registered methods (name, paper, what it changes)."""
    described = [get_method(n).describe() for n in list_methods()]
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    width = max(len(d["name"]) for d in described)
    for d in described:
        click.echo(f"{d['name']:<{width}}  {d['paper']:<40}  {d['summary']}")


@main.command()
@target_options
@json_option
def pretrain(target: Target, opts: RunOptions, as_json: bool) -> None:
    """Pretrain one method (skipped when the run store already has it).

    On several GPUs: torchrun --nproc_per_node=N -m benchmark.cli pretrain ... (the preset's batch
    is the global batch; rank 0 writes the run).
    """
    if ddp.launched():  # one run on several processes (benchmark/distributed.py)
        ddp.init_from_env(opts.device)
        key = distributed.pretrain(opts, target)
        main_rank = ddp.is_main()
        ddp.shutdown()
        if not main_rank:
            return
    else:
        key = run_pretrain_stage(opts, target)
    kind = target.pretrain(opts).kind  # "pretrain"; a ++ method's post-processing stage ("lpaft")
    d = opts.store.dir(kind, key)
    info = {"stage": kind, "key": key, "dir": str(d), "checkpoint": str(d / "encoder.pt"),
            **opts.store.done_info(kind, key)}
    emit(info, as_json, f"pretrained {target.method} ({target.preset.name}, {target.dataset}, seed {target.seed}): "
         f"{d / 'encoder.pt'}")


@main.command()
@schemes_option
@click.option("--select", "selection", type=click.Choice(SELECTIONS), default="last", show_default=True,
              help="Model selection: last epoch, or best PGD-20 on the validation split.")
@protocol_option
@target_options
@json_option
def finetune(schemes, target: Target, opts: RunOptions, as_json: bool) -> None:
    """Finetune a pretrained method under SLF / ALF / AFF (pretrains first if needed)."""
    out, session = [], session_for(opts)
    for s in resolve_schemes(schemes):
        key = run_once(target.finetune(opts, s), opts, session)
        out.append({"scheme": s, "key": key, "checkpoint": str(opts.store.dir("finetune", key) / "classifier.pt")})
    emit(out, as_json, "\n".join(f"{o['scheme']}: {o['checkpoint']}" for o in out))


def summary(records: list[Record]) -> str:
    lines = []
    for r in records:
        cells = ", ".join(f"{k} {v:.2f}" for k, v in r.metrics.items() if v is not None)
        flags = f"  [flags: {'; '.join(map(str, r.flags))}]" if r.flags else ""
        lines.append(f"{r.method} {r.scheme} (seed {r.seed}, {r.preset}, n={r.n_test}): {cells}{flags}")
    return "\n".join(lines)


@main.command()
@schemes_option
@click.option("--attacks", default=None, help="Comma-separated attacks: pgd20, autoattack, aa-lite, corruption "
              "(common-corruption accuracy, CA), or a "
              "torchattacks attack ta:NAME[:key=value...], e.g. ta:CW (default: pgd20,autoattack; clean "
              "accuracy is always measured).")
@click.option("--select", "selection", type=click.Choice(SELECTIONS), default="last", show_default=True,
              help="Model selection: last epoch, or best PGD-20 on the validation split.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes for the schemes after pretraining (default: one per scheme on CPU, 1 on GPU).")
@protocol_option
@click.option("--pretrained", default=None, metavar="KEY",
              help="Finetune and evaluate an imported released checkpoint (`acbench import`) instead of pretraining.")
@target_options
@json_option
def run(schemes, jobs, target: Target, opts: RunOptions, as_json: bool) -> None:
    """One method end to end: pretrain, finetune, evaluate, records (finished stages are reused)."""
    schemes = resolve_schemes(schemes)
    if jobs is None:  # CPU: one single-threaded worker per scheme
        jobs = len(schemes) if opts.torch_device().type == "cpu" else 1
    records = run_method(opts, target, schemes, jobs)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
    else:
        click.echo(summary(records))
        click.echo(f"records: {opts.results / 'records'}")


main.add_command(run, "evaluate")  # the same command: evaluating runs whatever is missing upstream


def write_leaderboard(results: Path, preset: str | None, fmt: str = "md", out: Path | None = None,
                      dataset: str | None = None, scheme: str | None = None) -> str:
    records, warnings = load_records(results)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    board = build_leaderboard(records, load_reported(results), preset=preset, dataset=dataset, scheme=scheme)
    text = render(board, fmt)
    if out is not None:
        atomic_write_text(out, text)
    return text


@main.command()
@results_option()
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json", "html"]), default="md", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (default: print).")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write PNG plots into this folder.")
@click.option("--preset", default=None, help="Only this preset.")
@click.option("--dataset", default=None, help="Only this pretraining dataset.")
@click.option("--scheme", default=None, help="Only this scheme.")
def leaderboard(results, fmt, out, plots, preset, dataset, scheme) -> None:
    """Render the leaderboard from the records in RESULTS/records (a pure function of them)."""
    if preset is not None:
        get_preset(preset)
    if scheme is not None:
        resolve_schemes(scheme)
    results = Path(results)
    if not (results / "records").is_dir():
        raise click.ClickException(f"no records in {results.resolve() / 'records'}; run `acbench run` first")
    text = write_leaderboard(results, preset, fmt, out, dataset, scheme)
    click.echo(f"wrote {out}", err=True) if out is not None else click.echo(text)
    if plots is not None:
        records, _ = load_records(results)
        board = build_leaderboard(records, load_reported(results), preset=preset, dataset=dataset, scheme=scheme)
        for p in write_plots(board, plots):
            click.echo(f"wrote {p}", err=True)


@main.command()
@click.argument("suite_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preset", default=None, help="smoke, quick or paper (default: the file's, else quick).")
@click.option("--methods", default=None, help="Comma-separated method names, or 'all' (default).")
@click.option("--datasets", default=None, help="Comma-separated datasets (default: the preset's).")
@click.option("--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2 (default: 0).")
@click.option("--schemes", default=None, help="Comma-separated subset of the schemes (default: all).")
@click.option("--attacks", default=None, help="Comma-separated attacks (as for `acbench run`).")
@click.option("--select", "selection", default=None, help="Model selection: last or val.")
@click.option("--protocol", default=None, help="Finetuning protocol: uniform (default) or robustssl.")
@click.option("--finetune-dataset", default=None, help="Transfer: finetune and evaluate every encoder on this dataset.")
@click.option("--executor", default=None,
              help="local, pool, submitit-local or slurm (default: pool on a CPU-only machine, else local).")
@click.option("--jobs", type=int, default=None,
              help="Worker processes for --executor pool (default: CPU cores + 1 on a CPU-only machine).")
@click.option("--partition", default=None, help="SLURM partition.")
@click.option("--time-min", type=int, default=None, help="SLURM time limit per job (minutes).")
@click.option("--gpus-per-job", type=int, default=None, help="SLURM GPUs per job.")
@click.option("--array-parallelism", type=int, default=None, help="SLURM jobs of an array running at once.")
@run_options
@json_option
def suite(suite_file, preset, methods, datasets, seeds, schemes, attacks, selection, protocol, finetune_dataset,
          executor, jobs,
          partition, time_min, gpus_per_job, array_parallelism, opts: RunOptions, as_json) -> None:
    """Run a benchmark grid (method x dataset x seed x scheme) and write RESULTS/leaderboard.md.

    Options override SUITE_FILE (TOML with the same keys: preset, methods, datasets, seeds, schemes,
    attacks, selection, protocol, executor, jobs, [slurm], [params.<method>]). Finished stages are skipped.
    """
    fields = load_suite_file(suite_file) if suite_file else {}
    where = str(suite_file) if suite_file else "options"
    cli = {"preset": preset, "methods": methods, "datasets": datasets, "schemes": schemes, "attacks": attacks,
           "selection": selection, "protocol": protocol, "finetune_dataset": finetune_dataset, "executor": executor,
           "jobs": jobs, "seeds": seeds}
    if seeds is not None:
        try:
            cli["seeds"] = [int(x) for x in seeds.split(",") if x.strip()]
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
    if fields.get("executor", "pool") == "pool" and opts.torch_device().type == "cpu":
        # single-threaded workers, one more than cores: the small-batch attacks are overhead-bound
        fields["executor"] = "pool"
        fields.setdefault("jobs", (os.cpu_count() or 1) + 1)
    spec = build_suite(fields, where)
    for d in spec.resolved_datasets():  # missing data or imported checkpoints fail here, before anything runs
        dataset_for(opts, d, get_preset(spec.preset).image_size)
        for method, key in spec.pretrained.items():
            Target(method, preset=spec.preset, dataset=d, pretrained=key).pretrain(opts)
    result = run_suite(opts, spec, progress=opts.progress, echo=lambda s: click.echo(s, err=True))
    written = []
    for fmt in ("md", "csv"):
        path = opts.results / f"leaderboard.{fmt}"
        write_leaderboard(opts.results, spec.preset, fmt, path)
        written.append(str(path))
    result["leaderboard"] = written
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{result['jobs']} jobs, {result['failed']} failed, {result['seconds']:.1f}s")
        for p in written:
            click.echo(f"wrote {p}")
    if result["failed"]:
        sys.exit(1)


@main.command()
@results_option()
@json_option
def status(results, as_json) -> None:
    """The run store's stages: state (done, running, failed, incomplete), duration, record."""
    from tabulate import tabulate

    rows = RunStore(Path(results)).stages()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no stages in {Path(results).resolve() / 'runs'}")
        return
    click.echo(tabulate(
        [[r["stage"], r["key"], r["state"], "" if r["seconds"] is None else f"{r['seconds']:.1f}", r["what"]]
         for r in rows],
        headers=["stage", "key", "state", "seconds", "what"], tablefmt="github"))


@main.command("perf")
@click.option("--method", default=None, help="Registered method name (see `acbench methods`).")
@click.option("--all", "all_methods", is_flag=True, help="Every registered method.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="smoke", show_default=True,
              help="Dataset shape, backbone and batch size (paper: ResNet-18, batch 512, 32x32).")
@click.option("--backbone", default=None, help="Default: the preset's.")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Default: the preset's recipe's.")
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True,
              help="Interleaved harness/bare step pairs per round.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Rounds; the ratio is the median over rounds, reported with its spread.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Untimed steps of each kind first.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "both"]), default="auto",
              show_default=True, help="auto: fp32 on CPU; fp32 and bf16 autocast (+ channels_last) on CUDA.")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the model (both steps use it; warm-up steps include the compilation).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="wall: elapsed time; cpu: this process's CPU time (CPU only; steadier on a shared machine).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Instead: time N whole epochs of the real pretraining loop on random images of the "
                   "preset's dataset size, and project the full pretraining's hours.")
@click.option("--images", type=click.IntRange(min=2), default=None,
              help="With --epochs: images per epoch (default: the dataset's, e.g. 49000 for CIFAR-10).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table to this markdown file (atomically).")
@json_option
def perf_cmd(method, all_methods, preset, backbone, batch_size, steps, rounds, warmup, precision, compile_model,
             device, clock, epochs, images, out, as_json) -> None:
    """Images/s of the harness's pretraining step against a bare loop around the same method's
    training_step, their ratio (median over rounds, with its spread), forward-equivalents per
    image, attack steps and peak memory.

    Example (GPU): acbench perf --all --preset paper --out results/perf/h200.md

    With --epochs N it times N whole pretraining epochs instead (the first includes warm-up), e.g.
    acbench perf --method acl --preset paper --epochs 2
    """
    if all_methods == (method is not None):
        raise click.UsageError("give --method NAME or --all (not both)")
    if images is not None and epochs is None:
        raise click.UsageError("--images sets the images of --epochs: give --epochs too")
    if epochs is None:  # steps: harness against bare
        kind = dict(steps=steps, rounds=rounds, warmup=warmup)
        render_reports = render_table
    else:  # whole epochs of the pretraining loop
        kind = dict(measure=time_epochs, epochs=epochs, images=images, bars=not as_json)
        render_reports = render_epochs
    result = perf_all(
        None if all_methods else [method], precision=precision, device=device, clock=clock,
        keep_going=all_methods, progress=None if as_json else lambda line: click.echo(line, err=True),
        preset=preset, backbone=backbone, batch_size=batch_size, compile=compile_model, **kind,
        on_report=None if out is None else lambda reports: atomic_write_text(out, render_reports(reports) + "\n"),
    )
    if result.reports:
        if out is not None:
            click.echo(f"wrote {out}", err=True)
        click.echo(reports_json(result.reports) if as_json else render_reports(result.reports))
    if result.failures:  # --all goes on past a failing method, then says which failed
        raise click.ClickException("perf failed for " + "; ".join(result.failures))


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(list(FORMATS)),
              help="Which repository saved FILE (its state-dict layout).")
@click.option("--method", required=True, help="The acbench method the checkpoint was pretrained with.")
@click.option("--dataset", required=True, help="Its pretraining dataset (cifar10, cifar100, stl10).")
@click.option("--head", "head_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="RoCL: the separate projector file (<checkpoint>_projector).")
@run_options
@json_option
def import_cmd(file, fmt, method, dataset, head_file, opts: RunOptions, as_json) -> None:
    """Store a released pretrained encoder (strictly mapped, with provenance) as a pretraining stage;
    then `acbench run --pretrained KEY --method M --dataset D` finetunes and evaluates it."""
    check_choice("dataset", dataset, DATASETS)
    get_method(method, dataset=dataset)
    stage = ImportStage.of_file(file, fmt, method, dataset, head_file)
    key = run_once(stage, opts, session_for(opts, frozenset({"import"})))
    info = {"stage": "import", "key": key, "dir": str(opts.store.dir("import", key)),
            **opts.store.done_info("import", key)}
    emit(info, as_json, f"imported {file} as {method} ({fmt}, {dataset}): key {key}\n"
         f"next: acbench run --pretrained {key} --method {method} --dataset {dataset} --preset paper")


@main.command("import-labels")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", default="cifar10", show_default=True, help="The dataset the labels were made for.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .npz to write (use it with --param pseudo_labels_file=OUT).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def import_labels(file, dataset, out, data_dir) -> None:
    """Convert AdvCL's released pseudo-label file into the .npz acbench reads, aligned with acbench's
    training split (the validation images removed, in pretraining order)."""
    data = load_dataset(check_choice("dataset", dataset, ("cifar10", "cifar100")), data_dir=data_dir)
    labels = convert_advcl_labels(file, keep=data.train_index.numpy(), n_train=len(data.train_x) + len(data.val_x))
    check_pseudo_labels(labels, len(data.pretrain_x), str(file), CLUSTERS)
    save_pseudo_labels(out, labels)
    click.echo(f"wrote {out} ({len(data.pretrain_x)} images; use --param pseudo_labels_file={out})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
