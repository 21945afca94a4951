"""What a leaderboard is: tables of cells (mean +- std over seeds), rows, and how a table names
itself (title, file-name slug, legend).

``benchmark.leaderboard`` builds these from records; ``benchmark.render`` and
``benchmark.report`` draw them. A table is keyed by everything that must not be mixed in it
(preset, datasets, finetuning protocol, threat model, eps, n_test, backbone, selection and the
canonical settings of every attack, :func:`attack_settings_key`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

METRICS = ("clean", "pgd20", "autoattack")  # the standard columns; other metrics follow them
DEFAULT_PROTOCOL = "uniform"  # a table of another finetuning protocol names it in its title
EMPTY = "–"


@dataclass(frozen=True)
class Cell:
    """One metric of one method and scheme over seeds (seeds whose metric is null left out)."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for fewer than two seeds."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class Reported:
    """A published number that matches a row, and reproduction - reported."""

    name: str
    clean: float | None
    autoattack: float | None
    delta_clean: float | None
    delta_autoattack: float | None
    venue: str = ""
    note: str = ""
    corruption: float | None = None  # the published mean corruption accuracy (CA), if any
    delta_corruption: float | None = None


@dataclass(frozen=True)
class Row:
    rank: int
    method: str
    cells: Mapping[str, Mapping[str, Cell]]  # scheme -> metric -> Cell (every metric of the table)
    mean_autoattack: float | None  # mean over the schemes that have AutoAttack
    autoattack_schemes: int  # how many schemes that mean covers
    reported: Mapping[str, Reported]  # scheme -> published numbers (paper tables only)
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """One (preset, pretraining -> finetuning dataset, protocol, attack setting) table."""

    preset: str
    dataset: str
    finetune_dataset: str
    threat_model: str
    eps: float
    n_test: int
    backbone: str
    selection: str
    schemes: tuple[str, ...]
    rows: tuple[Row, ...]
    max_seeds: int
    show_reported: bool
    protocol: str = DEFAULT_PROTOCOL
    metrics: tuple[str, ...] = METRICS  # the standard ones, then the others by name
    attacks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # canonical settings
    notes: tuple[str, ...] = ()  # legend lines on the protocol (what all its records deviate in)

    @property
    def attacks_id(self) -> str:
        """Eight hex digits naming the attack settings ("" when the records carry none)."""
        if not self.attacks:
            return ""
        return hashlib.sha1(attack_settings_key(self.attacks).encode()).hexdigest()[:8]

    @property
    def title(self) -> str:
        extra = f", protocol {self.protocol}" if self.protocol != DEFAULT_PROTOCOL else ""
        extra += f", attacks {self.attacks_id}" if self.attacks else ""
        return (
            f"preset {self.preset}: {self.dataset} → {self.finetune_dataset} "
            f"(n_test {self.n_test}, {self.threat_model} eps {eps_label(self.eps)}, "
            f"{self.backbone}, selection {self.selection}{extra})"
        )

    @property
    def slug(self) -> str:
        """A file-name-safe id, unique within a leaderboard."""
        eps = eps_label(self.eps).replace("/", "of")
        parts = [
            self.preset,
            f"{self.dataset}-{self.finetune_dataset}",
            f"n{self.n_test}",
            f"{self.threat_model}-{eps}",
            self.backbone,
            self.selection,
        ]
        if self.protocol != DEFAULT_PROTOCOL:
            parts.append(self.protocol)
        if self.attacks:
            parts.append(self.attacks_id)
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts))

    def legend(self) -> list[str]:
        seeds = (
            f"mean ± sample std (n seeds) over up to {self.max_seeds} seeds; a plain number is one seed"
            if self.max_seeds > 1
            else "one seed per cell"
        )
        lines = [
            f"Accuracy in % on the first {self.n_test} test images of {self.finetune_dataset}; "
            f"{seeds}; {EMPTY} = not run.",
            f"PGD-20 and AutoAttack (standard): {self.threat_model}, eps {eps_label(self.eps)}. "
            "mean AA = AutoAttack averaged over schemes; rows ranked by it, methods missing "
            "AutoAttack in some scheme (* = mean over fewer schemes) after those with all, "
            "methods without any last.",
        ]
        if self.attacks:
            lines.append(
                f"attacks {self.attacks_id}: "
                + "; ".join(
                    f"{spec} ({settings_text(s)})" if s else spec
                    for spec, s in self.attacks.items()
                )
            )
        lines += self.notes
        if "corruption" in self.metrics:
            lines.append(
                "CA = mean accuracy over the 15 common corruptions × severities 1-5 (CIFAR-10-C / "
                "CIFAR-100-C files, or the test images corrupted by acbench: see the corruption "
                "settings); the record keeps every set's accuracy."
            )
        if self.show_reported:
            lines.append(
                "reported (Δ): the RobustSSL benchmark leaderboard's number (ResNet-18, full "
                "test set) and, in brackets, reproduction − reported."
            )
        lines.append(
            "flags: AA = AutoAttack reliability warning; invariant = autoattack ≤ pgd20 ≤ clean "
            "broken; n_test below the protocol's; deviation = recipe deviation; seeds k/n or "
            "no SCHEME = missing runs; [scheme sN] = which runs, none = all runs of the row."
        )
        return lines


@dataclass(frozen=True)
class Leaderboard:
    tables: tuple[Table, ...] = field(default_factory=tuple)


def eps_label(eps: float) -> str:
    """``8/255`` for eps = 8/255 (to 1e-4 in units of 1/255), else the plain number."""
    k = eps * 255
    if abs(k - round(k)) < 1e-4 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:g}"


def _canonical(value: Any) -> Any:
    """Settings in a form that compares equal when they mean the same (floats to 7 digits)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.7g}")
    return value


def attack_settings_key(attacks: Mapping[str, Mapping[str, Any]]) -> str:
    """The canonical text of a record's attack settings: equal text, same attacks."""
    return json.dumps(_canonical(attacks), sort_keys=True, separators=(",", ":"), default=str)


def settings_text(settings: Mapping[str, Any]) -> str:
    """``eps=8/255, steps=20``: one attack's settings, short, for a legend."""
    parts = []
    for key, value in settings.items():
        if isinstance(value, float):
            text = eps_label(value) if key in ("eps", "alpha") else f"{value:.4g}"
        elif isinstance(value, (dict, list)):
            text = json.dumps(value, sort_keys=True)
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return ", ".join(parts)
