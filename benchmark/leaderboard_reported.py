"""Published reference numbers (the RobustSSL benchmark leaderboard, ``results/reported/``) and
the rule that decides which leaderboard rows meet them.

The CSV is read with the standard library into :class:`ReportedNumber` rows. Only tables of the
``robustssl`` finetuning protocol (the RobustSSL benchmark's own finetuning, ``benchmark.protocols``)
under the ``paper`` preset at L-inf eps 8/255 are compared with them, and only for methods that are
the same algorithm as a published row (:data:`REPORTED_NAMES`). Tables of the ``uniform`` protocol
never show them: their finetuning is not the one the published numbers come from.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import ConfigError

# acbench registry name -> method name in the reported CSV. Only methods that are the same
# algorithm; matching is by this table, case-insensitively on the CSV side. The leaderboard's "AIR"
# and "AIR++" are DynACL with AIR (dynacl-air, dynacl-air++) and "RCS" is DynACL-RCS, the
# checkpoints RobustSSL evaluated (WAVE2 sections 3 and 5). Deliberately absent: the A-InfoNCE
# variants (advcl-ip, advcl-hn, advcl-iphn, rocl-*): the RobustSSL leaderboard's "A-InfoNCE" row
# does not say which variant it is; acl-air, acl-air++ and acl-rcs, which it never evaluated.
REPORTED_NAMES = {
    "acl": "ACL",
    "rocl": "RoCL",
    "advcl": "AdvCL",
    "dynacl": "DynACL",
    "dynacl++": "DynACL++",
    "dynacl-air": "AIR",
    "dynacl-air++": "AIR++",
    "dynacl-rcs": "RCS",
    "deacl": "DeACL",
}
REPORTED_PRESET = "paper"  # reported numbers are for the full-scale recipes only
REPORTED_PROTOCOL = "robustssl"  # ... finetuned as the RobustSSL benchmark finetuned
REPORTED_EPS = 8 / 255
REPORTED_THREAT_MODEL = "Linf"
REPORTED_COLUMNS = (
    "pretrain_dataset",
    "finetune_dataset",
    "scheme",
    "method",
    "clean",
    "autoattack",
)
_REPORTED_NUMBERS = ("clean", "autoattack", "corruption")


@dataclass(frozen=True)
class ReportedNumber:
    """One row of a reported-numbers CSV: a published result, accuracies in percent."""

    pretrain_dataset: str
    finetune_dataset: str
    scheme: str
    method: str
    clean: float | None
    autoattack: float | None
    corruption: float | None = None
    venue: str = ""
    note: str = ""
    source: str = ""  # the CSV file's name


def shipped_reported_path() -> Path:
    """The reported CSV that ships with acbench, located from this file (never the cwd)."""
    return (
        Path(__file__).resolve().parent.parent
        / "results"
        / "reported"
        / "robustssl_leaderboard.csv"
    )


def load_reported(path: Path | None = None) -> list[ReportedNumber]:
    """Published reference numbers (CSV columns: pretrain_dataset, finetune_dataset, scheme,
    method, venue, clean, autoattack, corruption, note; percent), in file order.

    ``path`` may be a CSV file, or a results folder: then every ``<path>/reported/*.csv`` is read
    (in name order; on a duplicated method/dataset/scheme the first file wins) when that folder
    holds any, and otherwise the shipped copy. ``None`` reads the shipped copy,
    ``results/reported/robustssl_leaderboard.csv`` found relative to the acbench sources, so the
    answer does not depend on the working directory.
    """
    if path is None:
        files = [shipped_reported_path()]
    else:
        path = Path(path)
        if path.is_dir():
            files = sorted((path / "reported").glob("*.csv")) or [shipped_reported_path()]
        else:
            files = [path]
    out: list[ReportedNumber] = []
    for file in files:
        if not file.is_file():
            raise ConfigError(f"reported numbers not found: {file}")
        out += _read_reported(file)
    return out


def _read_reported(file: Path) -> list[ReportedNumber]:
    with file.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REPORTED_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"{file}: missing column(s) {', '.join(missing)}")
        rows = []
        for raw in reader:
            numbers = {}
            for col in _REPORTED_NUMBERS:
                text = (raw.get(col) or "").strip()
                try:
                    value = float(text) if text else None
                except ValueError:
                    raise ConfigError(
                        f"{file}, line {reader.line_num}: {col} {text!r} is not a number"
                    ) from None
                numbers[col] = value if value is not None and math.isfinite(value) else None
            rows.append(
                ReportedNumber(
                    pretrain_dataset=(raw["pretrain_dataset"] or "").strip().lower(),
                    finetune_dataset=(raw["finetune_dataset"] or "").strip().lower(),
                    scheme=(raw["scheme"] or "").strip().lower(),
                    method=(raw["method"] or "").strip(),
                    venue=raw.get("venue") or "",
                    note=raw.get("note") or "",
                    source=file.name,
                    **numbers,
                )
            )
    return rows


ReportedIndex = dict[tuple[str, str, str, str], ReportedNumber]


def reported_index(numbers: Iterable[ReportedNumber]) -> ReportedIndex:
    """(pretrain dataset, finetune dataset, scheme, lowercase method) -> the first such row."""
    index: ReportedIndex = {}
    for ref in numbers:
        key = (ref.pretrain_dataset, ref.finetune_dataset, ref.scheme, ref.method.lower())
        index.setdefault(key, ref)  # first file wins
    return index


def find_reported(
    index: ReportedIndex,
    method: str,
    preset: str,
    protocol: str,
    pretrain_dataset: str,
    finetune_dataset: str,
    scheme: str,
    threat_model: str,
    eps: float,
) -> ReportedNumber | None:
    """The published number a leaderboard cell is compared with, if any."""
    comparable = (
        preset == REPORTED_PRESET
        and protocol == REPORTED_PROTOCOL
        and threat_model == REPORTED_THREAT_MODEL
        and abs(eps - REPORTED_EPS) < 1e-6
    )
    if not comparable or method not in REPORTED_NAMES:
        return None
    return index.get((pretrain_dataset, finetune_dataset, scheme, REPORTED_NAMES[method].lower()))
