"""One scheme of one method end to end, and the record it leaves:

    pretrain (method, dataset, seed) [-> lpaft] -> finetune (scheme) -> evaluate (attacks) -> Record

:func:`run_scheme` is what ``acbench run``, the suite and every executor call; the stages are
:mod:`benchmark.stages`, run once each by :func:`benchmark.stage.run_once`. A ++ method (DynACL++,
AIR++: :mod:`methods.plusplus`) finetunes the encoder of its post-processing stage
(:mod:`benchmark.postprocess`), made from its base method's pretraining, which it shares with that
method's own runs. ``--force`` on a ++ method rebuilds its post-processing stage and what follows,
not the shared base pretraining (force the base method for that).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from attacks import check_attack_spec
from benchmark.checkpoints import CLASSIFIER
from benchmark.config import Preset, get_preset, recipe_deviations
from benchmark.errors import ConfigError
from benchmark.imports import ImportStage
from benchmark.io import atomic_write_json
from benchmark.postprocess import KIND as POST_KIND
from benchmark.postprocess import PostProcessStage
from benchmark.protocols import ROBUSTSSL, UNIFORM, check_protocol, protocol_flags, robustssl_family
from benchmark.records import RECIPE_DEVIATION, Flag, Record
from benchmark.stage import RunOptions, Session, Stage, key_of, run_once
from benchmark.stages import EvaluateStage, FinetuneStage, PretrainStage
from methods import get_method, method_class
from methods.plusplus import is_post_processed

METHOD_STAGES = frozenset({"pretrain", POST_KIND, "finetune", "evaluate"})  # what --force rebuilds


def base_method(method: str) -> str:
    """The method whose pretraining ``method`` finetunes: a ++ method's base, else itself."""
    cls = method_class(method)
    return cls.base_method if is_post_processed(cls) else method


@dataclass(frozen=True)
class Target:
    """What one run evaluates: a method (with parameter overrides) on a dataset, under a preset."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    preset: Preset = dataclasses.field(default_factory=lambda: get_preset("quick"))
    dataset: str = ""  # empty: the preset's
    seed: int = 0
    attacks: tuple[str, ...] = ("clean", "pgd20", "autoattack")
    selection: str = "last"
    protocol: str = UNIFORM  # finetuning protocol
    pretrained: str | None = None  # the key of an imported released checkpoint (`acbench import`)
    finetune_dataset: str = ""  # empty: the pretraining dataset; else a transfer (e.g. cifar10 -> stl10)

    def __post_init__(self) -> None:
        if isinstance(self.preset, str):
            object.__setattr__(self, "preset", get_preset(self.preset))
        if not self.dataset:
            object.__setattr__(self, "dataset", self.preset.dataset)
        if not self.finetune_dataset:
            object.__setattr__(self, "finetune_dataset", self.dataset)
        if check_protocol(self.protocol) == ROBUSTSSL:
            robustssl_family(self.method)  # a method without RobustSSL settings fails before anything runs
        # clean accuracy is always reported, first
        attacks = (check_attack_spec(a) for a in ("clean", *self.attacks))  # canonical names: one key each
        object.__setattr__(self, "attacks", tuple(dict.fromkeys(attacks)))

    def pretrain(self, opts: RunOptions) -> Stage:
        """The stage that leaves the encoder this run finetunes: the method's pretraining (or an
        imported checkpoint); for a ++ method, its post-processing of the base method's pretraining
        (or of an imported base-method checkpoint; an imported ++ checkpoint is used as it is)."""
        base = base_method(self.method)
        if self.pretrained:
            stage = ImportStage.stored(opts.store, self.pretrained)
            if stage.dataset == self.dataset and stage.method == self.method:
                return stage
            if (stage.method, stage.dataset) != (base, self.dataset) or base == self.method:
                raise ConfigError(f"imported checkpoint {self.pretrained} is {stage.method} on {stage.dataset}, "
                                  f"not {self.method} on {self.dataset}")
        else:
            stage = PretrainStage(opts, base, dict(self.params), self.preset, self.dataset, self.seed)
        if base == self.method:
            return stage
        return PostProcessStage(stage, opts, self.method, self.preset, self.dataset, self.seed)

    def finetune(self, opts: RunOptions, scheme: str) -> FinetuneStage:
        transfer = self.finetune_dataset if self.finetune_dataset != self.dataset else ""
        return FinetuneStage(self.pretrain(opts), scheme, self.preset, self.dataset, self.seed, self.selection,
                             self.protocol, self.method, transfer)

    def evaluate(self, opts: RunOptions, scheme: str) -> EvaluateStage:
        return EvaluateStage(self.finetune(opts, scheme), self.attacks, self.preset)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("acbench", "pyautoattack", "torchattacks"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def session_for(opts: RunOptions, kinds: frozenset[str] = METHOD_STAGES) -> Session:
    """One command's session: with ``--force``, the stages of these ``kinds`` are rebuilt (once)."""
    return Session(force=kinds if opts.force else frozenset())


def target_session(target: Target, session: Session) -> Session:
    """``session`` for ``target``'s stages: for a ++ method, forcing "pretrain" rebuilds its
    post-processing stage instead of the base pretraining it shares with the base method."""
    if base_method(target.method) == target.method or "pretrain" not in session.force:
        return session
    return Session(force=(session.force - {"pretrain"}) | {POST_KIND}, settled=session.settled)


def run_pretrain_stage(opts: RunOptions, target: Target, session: Session | None = None) -> str:
    return run_once(target.pretrain(opts), opts, target_session(target, session or session_for(opts)))


def stage_keys(opts: RunOptions, stage: EvaluateStage, evaluated: str) -> dict[str, str]:
    """The record's stage keys (a ++ method: "pretrain" is the base pretraining, "lpaft" its post-processing)."""
    pre = stage.finetune.pretrain
    keys = {"pretrain": key_of(pre, opts)}
    if isinstance(pre, PostProcessStage):
        keys = {"pretrain": key_of(pre.base, opts), POST_KIND: keys["pretrain"]}
    return {**keys, "finetune": key_of(stage.finetune, opts), "evaluate": evaluated}


def run_scheme(opts: RunOptions, target: Target, scheme: str, session: Session | None = None) -> Record:
    """Pretrain (if needed), finetune under ``scheme``, evaluate; write and return the record."""
    session = target_session(target, session or session_for(opts))
    stage = target.evaluate(opts, scheme)
    stage.corrupted(opts)  # a missing CIFAR-C file fails here, before any stage runs
    evaluated = run_once(stage, opts, session)
    return write_record(opts, make_record(opts, target, scheme, stage_keys(opts, stage, evaluated)))


def make_record(opts: RunOptions, target: Target, scheme: str, keys: dict[str, str]) -> Record:
    store, preset = opts.store, target.preset
    pre_stage = target.pretrain(opts)
    post = pre_stage if isinstance(pre_stage, PostProcessStage) else None
    if post is not None:
        pre_stage = post.base
    pre = store.done_info(pre_stage.kind, keys["pretrain"])
    fin = store.done_info("finetune", keys["finetune"])
    ev = store.done_info("evaluate", keys["evaluate"])
    pretrained_here = isinstance(pre_stage, PretrainStage)
    params = preset.method_params(target.method, target.dataset, target.params) if pretrained_here else target.params
    m = get_method(target.method, dataset=target.dataset, **params)
    paper = m.paper_recipe(target.dataset)
    recipe = pre_stage.pretrain_config().recipe if pretrained_here else paper
    deviations = recipe_deviations(recipe, paper) + (
        m.recipe_notes(recipe) + preset.loss_scale_notes(paper, m.loss_scale) + preset.deviations()
        if pretrained_here else [])
    deviations += post.deviations() if post is not None else []
    post_cost = {"postprocess_s": round(store.done_info(POST_KIND, keys[POST_KIND])["seconds"], 2)} if post else {}
    metrics = {k: ev["metrics"].get(k) for k in ("clean", "pgd20", "autoattack")}
    metrics.update({k: v for k, v in ev["metrics"].items() if k not in metrics})
    flags = [Flag.from_json(f) for f in ev["flags"]]
    flags += protocol_flags(target.protocol, target.method, scheme, target.dataset, target.finetune_dataset,
                            target.selection)
    if preset.name == "paper":
        flags += [Flag(RECIPE_DEVIATION, d) for d in deviations]
    released = pre.get("provenance") if isinstance(pre_stage, ImportStage) else None
    if released:
        flags.append(Flag("released-checkpoint", f"{released['format']} {released['sha256'][:12]} ({released['source']})"))
    return Record(
        method=target.method,
        method_params=dataclasses.asdict(m.params),
        dataset=target.dataset,
        finetune_dataset=target.finetune_dataset,
        preset=preset.name,
        seed=target.seed,
        scheme=scheme,
        selection=target.selection,
        backbone=preset.backbone_for(target.dataset),
        metrics=metrics,
        n_test=ev["n_test"],
        threat_model="Linf",
        protocol=target.protocol,
        eps=round(preset.eval.eps, 7),
        attacks=ev.get("attacks", {}),
        corruption=ev.get("corruption", {}),
        flags=tuple(flags),
        autoattack_warnings=tuple(ev["warnings"]),
        recipe=recipe.to_dict(),
        recipe_deviations=tuple(deviations),
        finetune=target.finetune(opts, scheme).finetune_config().to_dict(),
        selected_epoch=fin["selected_epoch"],
        precision={"pretrain": pre.get("precision", "fp32"), "finetune": "fp32", "evaluation": "fp32"},
        pretrain_options=pre.get("options", {"compile": False, "channels_last": False}),
        threads=ev.get("threads"),
        released=released,
        stages=dict(keys),
        checkpoint=f"runs/finetune/{keys['finetune']}/{CLASSIFIER}",
        cost={"pretrain_s": round(pre["seconds"], 2), "finetune_s": round(fin["seconds"], 2), **post_cost,
              "eval_s": round(ev["seconds"], 2), "device": opts.torch_device().type},
        versions=versions(),
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def record_path(results: Path, rec: Record) -> Path:
    return Path(results) / rec.relative_path()


def write_record(opts: RunOptions, rec: Record) -> Record:
    """Write ``rec`` unless the same record (same stage keys) is already there; return the one on disk."""
    path = record_path(opts.results, rec)
    try:
        old = Record.from_json(json.loads(path.read_text()))
        if old.stages == rec.stages and not opts.force:
            return old
    except (OSError, ValueError):
        pass
    atomic_write_json(path, rec.to_json())
    return rec
