"""The result record: one JSON file per evaluated (method, dataset, seed, scheme).

:class:`Record` is the only definition of the record. The pipeline builds one per scheme and
writes it with :meth:`Record.to_json`; every renderer (leaderboards, ``acbench run``'s summary)
reads records back with :meth:`Record.from_json`, which also reads the older schema
``acbench.record/1`` (flags as ``"kind: message"`` strings, no attack settings).

Metrics are percentages (float) or ``None`` when not run, never strings. ``checkpoint`` is the
finetuned classifier, relative to the results folder (``benchmark.load_classifier`` opens it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError

SCHEMA = "acbench.record/2"
READABLE = ("acbench.record/1", SCHEMA)

# flag kinds the pipeline writes; a renderer may add its own (missing seeds, duplicates, ...)
INVARIANT = "invariant"
ATTACK_WARNING = "autoattack-warning"
RECIPE_DEVIATION = "recipe-deviation"


class RecordError(ConfigError):
    """A file that is not a usable record (the message says why)."""


@dataclass(frozen=True)
class Flag:
    """Something that makes a number less trustworthy: ``kind`` says what, ``message`` the detail."""

    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}

    @classmethod
    def from_json(cls, raw: Any) -> Flag:
        if isinstance(raw, dict) and isinstance(raw.get("kind"), str) and isinstance(raw.get("message"), str):
            return cls(raw["kind"], raw["message"])
        if isinstance(raw, str):  # acbench.record/1: "kind: message"
            kind, sep, message = raw.partition(":")
            return cls(kind.strip(), message.strip()) if sep else cls("note", raw.strip())
        raise RecordError(f"a flag must be {{kind, message}} or a string, got {raw!r}")


_STR_FIELDS = ("method", "dataset", "finetune_dataset", "preset", "scheme", "selection", "backbone",
               "threat_model")


@dataclass(frozen=True)
class Record:
    method: str
    dataset: str  # pretraining dataset
    finetune_dataset: str
    preset: str
    seed: int
    scheme: str
    selection: str  # "last" | "val"
    backbone: str
    metrics: dict[str, float | None]  # percent; clean, pgd20, autoattack, ...
    n_test: int
    eps: float
    threat_model: str = "Linf"
    protocol: str = "uniform"  # finetuning protocol
    method_params: dict[str, Any] = field(default_factory=dict)
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # attack -> its full settings
    # metric ``corruption``: percent per corruption at severities 1..5 (empty when not evaluated)
    corruption: dict[str, list[float]] = field(default_factory=dict)
    flags: tuple[Flag, ...] = ()
    autoattack_warnings: tuple[str, ...] = ()
    recipe: dict[str, Any] = field(default_factory=dict)
    recipe_deviations: tuple[str, ...] = ()
    finetune: dict[str, Any] = field(default_factory=dict)
    selected_epoch: int | None = None
    precision: dict[str, str] = field(default_factory=dict)
    pretrain_options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # intra-op threads of the CPU stages (None: not fixed / GPU)
    released: dict[str, Any] | None = None  # provenance of an imported released checkpoint
    stages: dict[str, str] = field(default_factory=dict)  # stage name -> key
    checkpoint: str = ""
    cost: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise RecordError(problem)

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["flags"] = [f.to_json() for f in self.flags]
        for key in ("autoattack_warnings", "recipe_deviations"):
            out[key] = list(out[key])
        out["schema"] = SCHEMA
        if not self.corruption:
            del out["corruption"]  # records of runs without the metric stay as they were
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Record:
        """A record from its JSON object (either readable schema); :class:`RecordError` if unusable."""
        if not isinstance(raw, dict):
            raise RecordError(f"not a JSON object ({type(raw).__name__})")
        if raw.get("schema") not in READABLE:
            raise RecordError(f"schema is {raw.get('schema')!r}, expected one of {', '.join(READABLE)}")
        required = ("schema", *_STR_FIELDS, "seed", "metrics", "n_test", "eps")
        missing = [k for k in required if k not in raw]
        if missing:
            raise RecordError(f"missing required key(s) {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        for key in ("flags", "autoattack_warnings", "recipe_deviations"):
            value = data.get(key)
            if value is not None and not isinstance(value, list):
                raise RecordError(f"{key!r} must be a list")
        if any(not isinstance(s, str) for s in data.get("autoattack_warnings") or []):
            raise RecordError("'autoattack_warnings' must be a list of strings")
        data["flags"] = tuple(Flag.from_json(f) for f in data.get("flags") or [])
        data["autoattack_warnings"] = tuple(data.get("autoattack_warnings") or ())
        data["recipe_deviations"] = tuple(str(d) for d in data.get("recipe_deviations") or ())
        data["schema"] = SCHEMA
        try:
            return cls(**data)
        except TypeError as e:
            raise RecordError(str(e)) from None

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise RecordError(f"{path}: unreadable ({e})") from None
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: invalid JSON ({e})") from None
        try:
            return cls.from_json(raw)
        except RecordError as e:
            raise RecordError(f"{path}: {e}") from None

    @property
    def row_name(self) -> str:
        """The leaderboard row: the method, marked when its encoder is a released checkpoint."""
        return f"{self.method} (released checkpoint)" if self.released else self.method

    # ---- where it lives ----------------------------------------------------------------------
    def relative_path(self) -> Path:
        """``records/<preset>/<dataset>-<finetune_dataset>/<method>/seed<seed>_<scheme>[...].json``."""
        tail = "" if self.selection == "last" else f"_{self.selection}"
        if self.released:
            tail += "_released"
        if self.protocol != "uniform":
            tail += f"_{self.protocol}"
        return (Path("records") / self.preset / f"{self.dataset}-{self.finetune_dataset}" / self.method
                / f"seed{self.seed}_{self.scheme}{tail}.json")

    def replace(self, **changes: Any) -> Record:
        return dataclasses.replace(self, **changes)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _problem(r: Record) -> str | None:
    for key in _STR_FIELDS:
        value = getattr(r, key)
        if not isinstance(value, str) or not value:
            return f"{key!r} must be a non-empty string, got {value!r}"
    if not _is_int(r.seed):
        return f"'seed' must be an integer, got {r.seed!r}"
    if not _is_int(r.n_test) or r.n_test <= 0:
        return f"'n_test' must be a positive integer, got {r.n_test!r}"
    if not _is_number(r.eps) or r.eps <= 0:
        return f"'eps' must be a positive number, got {r.eps!r}"
    if not isinstance(r.metrics, dict):
        return f"'metrics' must be an object, got {type(r.metrics).__name__}"
    for name, value in r.metrics.items():
        if value is None:
            continue
        if isinstance(value, str):
            return f"metric {name!r} is a string ({value!r}); metrics are numbers or null"
        if not _is_number(value) or not 0 <= value <= 100:
            return f"metric {name!r} must be a percentage in [0, 100] or null, got {value!r}"
    if not isinstance(r.corruption, dict):
        return f"'corruption' must be an object, got {type(r.corruption).__name__}"
    for name, values in r.corruption.items():
        if not isinstance(values, list) or not all(_is_number(v) and 0 <= v <= 100 for v in values):
            return f"corruption {name!r} must be a list of percentages (severity 1..5), got {values!r}"
    return None


INVARIANT_ORDER = ("autoattack", "pgd20", "clean")  # each at most the next
INVARIANT_TOLERANCE = 1e-9


def invariant_flags(metrics: dict[str, Any]) -> list[Flag]:
    """The broken parts of autoattack <= pgd20 <= clean, among the metrics present (not None)."""
    present = [(k, metrics[k]) for k in INVARIANT_ORDER if _is_number(metrics.get(k))]
    return [
        Flag(INVARIANT, f"{a} {va:.2f} > {b} {vb:.2f}")
        for (a, va), (b, vb) in zip(present, present[1:])
        if va > vb + INVARIANT_TOLERANCE
    ]
