"""The pipeline's stages as functions of (config, upstream keys), over the run store.

    pretrain (method, dataset, seed) -> finetune (slf | alf | aff) -> evaluate -> record

Each stage function computes its key, returns at once when the store already holds it, and
otherwise runs under the stage's lock. The suite runner schedules these same functions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from benchmark.config import Preset, get_preset, recipe_deviations
from benchmark.data import Dataset, load_dataset
from benchmark.evaluate import evaluate_classifier
from benchmark.finetune import CLASSIFIER, load_classifier, load_encoder, run_finetune
from benchmark.io import atomic_write_json
from benchmark.pretrain import ENCODER, PretrainConfig, resolve_precision, run_pretrain
from benchmark.store import RunStore, stage_key
from methods import get_method

SCHEMA = "acbench.record/1"


@dataclass(frozen=True)
class RunOptions:
    """How to run: folders, device, output. Only ``precision`` and ``compile`` enter a stage key
    (the pretraining's), because they change its floating-point results."""

    results: Path = Path("results")
    data_dir: Path | None = None
    download: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False  # torch.compile in pretraining (part of the pretrain key when set)
    progress: bool = True
    force: bool = False

    @property
    def store(self) -> RunStore:
        return RunStore(Path(self.results))

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@functools.lru_cache(maxsize=8)
def _dataset(name: str, data_dir: str | None, download: bool, image_size: int | None) -> Dataset:
    return load_dataset(name, data_dir=data_dir, download=download, image_size=image_size)


def dataset_for(opts: RunOptions, preset: Preset, name: str) -> Dataset:
    size = preset.image_size if name in ("digits", "synthetic") else None
    return _dataset(name, str(opts.data_dir) if opts.data_dir else None, opts.download, size)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("acbench", "pyautoattack", "kornia"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# upstream stages a method may require (``Method.requires``): name -> function(opts, preset,
# dataset, seed) -> (key, extras passed to the method's setup/batches)
UPSTREAM: dict[str, Any] = {}


def pretrain_config(
    opts: RunOptions, method: str, params: dict[str, Any], preset: Preset, dataset: str, seed: int
) -> PretrainConfig:
    m = get_method(method, dataset=dataset, **params)
    return PretrainConfig(
        method=method, method_params=dict(params), dataset=dataset, image_size=preset.image_size,
        backbone=preset.backbone, seed=seed, recipe=preset.recipe(m.paper_recipe(dataset)),
        train_limit=preset.train_limit,
        precision=resolve_precision(opts.precision, opts.torch_device()), compile=opts.compile,
    )


def pretrain_stage(
    opts: RunOptions, method: str, params: dict[str, Any], preset: Preset, dataset: str, seed: int
) -> str:
    cfg = pretrain_config(opts, method, params, preset, dataset, seed)
    m = get_method(method, dataset=dataset, **params)
    upstream, extras = {}, {}
    for need in m.requires:
        key, ex = UPSTREAM[need](opts, preset, dataset, seed)
        upstream[need] = key
        extras.update(ex)
    cfg = dataclasses.replace(cfg, extras_keys=upstream)
    key = stage_key("pretrain", cfg.to_dict(), upstream)
    store = opts.store
    if store.is_done("pretrain", key) and not opts.force:
        return key
    data = dataset_for(opts, preset, dataset)
    with store.running("pretrain", key):
        if store.is_done("pretrain", key) and not opts.force:
            return key
        d = store.begin("pretrain", key, {"config": cfg.to_dict(), "upstream": upstream}, force=opts.force)
        info = run_pretrain(cfg, data, d, opts.torch_device(), extras=extras, progress=opts.progress)
        store.finish("pretrain", key, info)
    return key


def finetune_stage(
    opts: RunOptions, pretrain_key: str, scheme: str, preset: Preset, dataset: str, seed: int,
    selection: str = "last",
) -> str:
    cfg = preset.finetune_config(scheme, dataset, selection)
    config = {"finetune": cfg.to_dict(), "dataset": dataset, "seed": seed, "train_limit": preset.train_limit}
    key = stage_key("finetune", config, {"pretrain": pretrain_key})
    store = opts.store
    if store.is_done("finetune", key) and not opts.force:
        return key
    data = dataset_for(opts, preset, dataset)
    load_encoder(store.dir("pretrain", pretrain_key) / ENCODER)  # a bad input fails before anything is written
    with store.running("finetune", key):
        if store.is_done("finetune", key) and not opts.force:
            return key
        d = store.begin("finetune", key, {**config, "upstream": {"pretrain": pretrain_key}}, force=opts.force)
        info = run_finetune(
            store.dir("pretrain", pretrain_key) / ENCODER, cfg, data, d, opts.torch_device(), seed,
            train_limit=preset.train_limit, progress=opts.progress,
        )
        store.finish("finetune", key, info)
    return key


def evaluate_stage(
    opts: RunOptions, finetune_key: str, attacks: tuple[str, ...], preset: Preset, dataset: str
) -> str:
    ev = preset.eval
    config = {"attacks": list(attacks), "eval": dataclasses.asdict(ev), "dataset": dataset}
    key = stage_key("evaluate", config, {"finetune": finetune_key})
    store = opts.store
    if store.is_done("evaluate", key) and not opts.force:
        return key
    data = dataset_for(opts, preset, dataset)
    load_classifier(store.dir("finetune", finetune_key) / CLASSIFIER)  # a bad input fails before anything is written
    with store.running("evaluate", key):
        if store.is_done("evaluate", key) and not opts.force:
            return key
        store.begin("evaluate", key, {**config, "upstream": {"finetune": finetune_key}}, force=opts.force)
        n = ev.n_test or len(data.test_x)
        device = opts.torch_device()
        model = load_classifier(store.dir("finetune", finetune_key) / CLASSIFIER, device)
        x = data.test_x[:n].to(device).float() / 255
        y = data.test_y[:n].to(device)
        result = evaluate_classifier(model, x, y, list(attacks), ev, progress=opts.progress)
        store.finish("evaluate", key, {**result, "n_test": int(len(x))})
    return key


def record_path(results: Path, rec: dict[str, Any]) -> Path:
    sel = "" if rec["selection"] == "last" else f"_{rec['selection']}"
    return (
        Path(results) / "records" / rec["preset"] / f"{rec['dataset']}-{rec['finetune_dataset']}"
        / rec["method"] / f"seed{rec['seed']}_{rec['scheme']}{sel}.json"
    )


def write_record(opts: RunOptions, rec: dict[str, Any]) -> dict[str, Any]:
    """Write ``rec`` unless the same record (same stage keys) is already there; return the one on disk."""
    path = record_path(opts.results, rec)
    try:
        old = json.loads(path.read_text())
        if old.get("stages") == rec["stages"] and not opts.force:
            return old
    except (OSError, ValueError):
        pass
    atomic_write_json(path, rec)
    return rec


def make_record(
    opts: RunOptions, method: str, params: dict[str, Any], preset: Preset, dataset: str, seed: int,
    scheme: str, selection: str, keys: dict[str, str],
) -> dict[str, Any]:
    store = opts.store
    pre = store.done_info("pretrain", keys["pretrain"])
    fin = store.done_info("finetune", keys["finetune"])
    ev = store.done_info("evaluate", keys["evaluate"])
    m = get_method(method, dataset=dataset, **params)
    cfg = pretrain_config(opts, method, params, preset, dataset, seed)
    deviations = recipe_deviations(cfg.recipe, m.paper_recipe(dataset))
    metrics = {k: ev["metrics"].get(k) for k in ("clean", "pgd20", "autoattack")}
    if "aa-lite" in ev["metrics"]:
        metrics["aa-lite"] = ev["metrics"]["aa-lite"]
    flags = list(ev["flags"])
    if preset.name == "paper":
        flags += [f"recipe-deviation: {d}" for d in deviations]
    return {
        "schema": SCHEMA,
        "method": method,
        "method_params": dataclasses.asdict(m.params),
        "dataset": dataset,
        "finetune_dataset": dataset,
        "preset": preset.name,
        "seed": seed,
        "scheme": scheme,
        "selection": selection,
        "backbone": preset.backbone,
        "metrics": metrics,
        "n_test": ev["n_test"],
        "threat_model": "Linf",
        "eps": round(preset.eval.eps, 7),
        "flags": flags,
        "autoattack_warnings": ev["warnings"],
        "recipe": cfg.recipe.to_dict(),
        "recipe_deviations": deviations,
        "finetune": preset.finetune_config(scheme, dataset, selection).to_dict(),
        "selected_epoch": fin["selected_epoch"],
        "precision": {"pretrain": pre.get("precision", "fp32"), "finetune": "fp32", "evaluation": "fp32"},
        "pretrain_options": pre.get("options", {"compile": False, "channels_last": False}),
        "stages": dict(keys),
        "checkpoint": f"runs/finetune/{keys['finetune']}/{CLASSIFIER}",
        "cost": {
            "pretrain_s": round(pre["seconds"], 2), "finetune_s": round(fin["seconds"], 2),
            "eval_s": round(ev["seconds"], 2), "device": opts.torch_device().type,
        },
        "versions": _versions(),
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def run_method(
    opts: RunOptions,
    method: str,
    params: dict[str, Any] | None = None,
    preset: str | Preset = "quick",
    dataset: str | None = None,
    seed: int = 0,
    schemes: tuple[str, ...] = ("slf", "alf", "aff"),
    attacks: tuple[str, ...] = ("clean", "pgd20", "autoattack"),
    selection: str = "last",
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """One method end to end; writes and returns one record per scheme.

    ``jobs > 1`` finetunes and evaluates the schemes in that many worker processes (after the
    shared pretraining), through the suite runner's process pool.
    """
    params = dict(params or {})
    p = get_preset(preset) if isinstance(preset, str) else preset
    dataset = dataset or p.dataset
    attacks = tuple(dict.fromkeys(("clean", *attacks)))  # clean accuracy is always reported
    pre = pretrain_stage(opts, method, params, p, dataset, seed)
    if jobs > 1 and len(schemes) > 1 and isinstance(preset, str):
        from benchmark.suite import run_schemes_in_pool

        return run_schemes_in_pool(opts, method, params, preset, dataset, seed, schemes, attacks, selection, jobs)
    records = []
    for scheme in schemes:
        fin = finetune_stage(opts, pre, scheme, p, dataset, seed, selection)
        ev = evaluate_stage(opts, fin, attacks, p, dataset)
        rec = make_record(opts, method, params, p, dataset, seed, scheme, selection,
                          {"pretrain": pre, "finetune": fin, "evaluate": ev})
        records.append(write_record(opts, rec))
    return records


# upstream stages register themselves in UPSTREAM (imported last: they use this module)
import benchmark.pseudolabels  # noqa: E402, F401
