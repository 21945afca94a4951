"""The command line's shared pieces: error handling, the options every stage command takes
(gathered into one :class:`~benchmark.stage.RunOptions` and one :class:`~benchmark.pipeline.Target`),
and list parsing with checked names. The commands are in :mod:`benchmark.cli`."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from attacks import check_attack_spec
from benchmark.config import PRESETS, get_preset
from benchmark.data import DATASETS
from benchmark.errors import AcbenchError, check_choice
from benchmark.pipeline import Target
from benchmark.protocols import PROTOCOLS, UNIFORM
from benchmark.schemes import scheme_names
from benchmark.stage import DEFAULT_THREADS, RunOptions, dataset_for
from methods import get_method

DEFAULT_ATTACKS = ("pgd20", "autoattack")


class Group(click.Group):
    """Turns :class:`AcbenchError` into one clean line; other errors too, unless ``--debug``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except AcbenchError as e:
            raise click.ClickException(str(e)) from None
        except Exception as e:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(
                f"internal error: {type(e).__name__}: {e} (a bug: rerun with `acbench --debug ...` "
                "for the traceback, and report it)"
            ) from None


def split_list(value: str | None, default: tuple[str, ...], check: Callable[[str], Any], what: str) -> tuple[str, ...]:
    """A comma-separated option: each item checked; None -> ``default``."""
    if value is None:
        return tuple(default)
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter(f"empty {what} list")
    for item in items:
        try:
            check(item)
        except AcbenchError as e:
            raise click.BadParameter(str(e)) from None
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


def results_option() -> Callable:
    return click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
                        show_default=True, help="Results folder (runs, records, leaderboards).")


RUN_OPTIONS = [
    click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Where CIFAR/STL live (default: $ACBENCH_DATA_DIR or ~/.cache/acbench/data)."),
    click.option("--download", is_flag=True, help="Download missing CIFAR/STL data (needs network)."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
    click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                 help="Pretraining precision (auto: bf16 autocast on CUDA, fp32 on CPU). Evaluation is fp32."),
    click.option("--compile", "compile_model", is_flag=True,
                 help="torch.compile the pretraining model (a separate run: float rounding differs)."),
    click.option("--threads", type=click.IntRange(min=1), default=DEFAULT_THREADS, show_default=True,
                 help="Intra-op threads of every CPU stage (another value is another run: float rounding "
                 "differs). Parallelism comes from worker processes (--jobs)."),
    click.option("--force", is_flag=True, help="Redo stages even if the run store has them."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
]


def run_options(fn: Callable) -> Callable:
    """Adds the options that say how to run and hands the command one ``opts: RunOptions``."""

    @functools.wraps(fn)
    def wrapper(results, data_dir, download, device, precision, compile_model, threads, force, quiet, **kw):
        opts = RunOptions(
            results=Path(results).resolve(), data_dir=Path(data_dir).resolve() if data_dir else None,
            download=download, device=device, precision=precision, compile=compile_model, threads=threads,
            progress=not quiet, force=force,
        )
        opts.torch_device()  # an unknown or missing device fails here
        return fn(opts=opts, **kw)

    for option in reversed([results_option(), *RUN_OPTIONS]):
        wrapper = option(wrapper)
    return wrapper


def target_options(fn: Callable) -> Callable:
    """Adds what to run (method, parameters, preset, dataset, seed) and hands the command a checked
    ``target: Target`` (the data is loaded here, so a missing dataset fails before anything runs)."""

    @functools.wraps(fn)
    def wrapper(method, params, preset, dataset, seed, opts: RunOptions, attacks=None, selection="last",
                protocol=UNIFORM, pretrained=None, finetune_dataset=None, **kw):
        p = get_preset(preset)
        dataset = check_choice("dataset", dataset or p.dataset, DATASETS)
        params = parse_params(params)
        get_method(method, dataset=dataset, **params)
        dataset_for(opts, dataset, p.image_size)
        attacks = split_list(attacks, DEFAULT_ATTACKS, check_attack_spec, "attack")
        if finetune_dataset:
            check_choice("dataset", finetune_dataset, DATASETS)
            dataset_for(opts, finetune_dataset, p.image_size)
        target = Target(method, params, p, dataset, seed, attacks, selection, protocol, pretrained,
                        finetune_dataset or "")
        if pretrained:
            target.pretrain(opts)  # an unknown key, or another method's checkpoint, fails here
        return fn(target=target, opts=opts, **kw)

    options = [
        click.option("--method", required=True, help="Registered method name (see `acbench methods`)."),
        click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                     help="Override a method parameter (repeatable), e.g. --param ip=0.3."),
        click.option("--preset", type=click.Choice(list(PRESETS)), default="quick", show_default=True,
                     help="Scale of every stage: smoke (tests), quick (CPU benchmark), paper (GPU)."),
        click.option("--dataset", default=None, help=f"Dataset ({', '.join(DATASETS)}); default: the preset's."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--finetune-dataset", default=None,
                     help="Finetune and evaluate on another dataset (a transfer, e.g. cifar10 -> stl10 at 32 px)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return run_options(wrapper)


def protocol_option(fn: Callable) -> Callable:
    return click.option("--protocol", type=click.Choice(PROTOCOLS), default=UNIFORM, show_default=True,
                        help="Finetuning protocol: uniform (one recipe for every method) or robustssl "
                        "(RobustSSL_Benchmark's per-family settings, comparable with results/reported).")(fn)


def schemes_option(fn: Callable) -> Callable:
    return click.option("--schemes", default=None,
                        help="Comma-separated finetuning schemes (default: every registered one: slf,alf,aff).")(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def emit(obj: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else text)


def resolve_schemes(value: str | None) -> tuple[str, ...]:
    return split_list(value, tuple(scheme_names()), lambda s: check_choice("scheme", s, scheme_names()), "scheme")


