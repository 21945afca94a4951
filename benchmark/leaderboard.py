"""Leaderboards: a pure function of result records (PROTOCOL.md, "Leaderboards").

Records (``acbench.record/1``, one JSON file per method x dataset x seed x scheme) are grouped into
one table per preset, pretraining -> finetuning dataset and attack setting (threat model, eps,
n_test), plus backbone and selection rule, so that no table ever mixes protocols. Rows are methods;
for each finetuning scheme the columns are clean / PGD-20 / AutoAttack accuracy, mean +- sample std
(n seeds) over seeds; "mean AA" (AutoAttack averaged over schemes) ranks the rows. Tables of the
``paper`` preset also show the RobustSSL leaderboard's published numbers (``results/reported/``)
and the difference reproduction - reported; no other preset ever meets them. A flags column
collects what makes a number less trustworthy: AutoAttack warnings, broken invariants
(autoattack <= pgd20 <= clean), a test subset below the protocol's, recipe deviations, missing
seeds or schemes.

Like RobustBench, the records are the single source of truth and every output (markdown, CSV,
JSON; HTML and PNG plots in ``benchmark.report``) is a thin renderer over one ``Leaderboard``.

Example::

    records, warnings = load_records(Path("results"))
    board = build_leaderboard(records, reported=load_reported(Path("results")))
    print(render(board, "md"))
"""

from __future__ import annotations

import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from tabulate import tabulate

RECORD_SCHEMA = "acbench.record/1"
LEADERBOARD_SCHEMA = "acbench.leaderboard/1"

METRICS = ("clean", "pgd20", "autoattack")
METRIC_LABELS = {"clean": "clean", "pgd20": "PGD-20", "autoattack": "AutoAttack"}
SCHEME_ORDER = ("slf", "alf", "aff")  # any other scheme sorts after these, alphabetically

# The protocol's full test sets; a record evaluated on fewer images is flagged. Other datasets
# (digits, synthetic) have no protocol size and are never flagged.
PROTOCOL_N_TEST = {"cifar10": 10_000, "cifar100": 10_000, "stl10": 8_000}

# acbench registry name -> method name in the reported CSV. Only methods that are the same
# algorithm; matching is by this table, case-insensitively on the CSV side. Deliberately absent:
# the A-InfoNCE variants (advcl-ip, advcl-hn, advcl-iphn, rocl-*): the RobustSSL leaderboard's
# "A-InfoNCE" row does not say which variant it is.
REPORTED_NAMES = {
    "acl": "ACL",
    "rocl": "RoCL",
    "advcl": "AdvCL",
    "dynacl": "DynACL",
    "dynacl++": "DynACL++",
    "air": "AIR",
    "air++": "AIR++",
    "rcs": "RCS",
    "deacl": "DeACL",
}
REPORTED_PRESET = "paper"  # reported numbers are for the paper protocol only
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

INVARIANT_TOLERANCE = 1e-9
EMPTY = "–"

_STR_KEYS = (
    "method",
    "dataset",
    "finetune_dataset",
    "preset",
    "scheme",
    "selection",
    "backbone",
    "threat_model",
)
REQUIRED_KEYS = ("schema", *_STR_KEYS, "seed", "metrics", "n_test", "eps")

# AutoAttack's reliability checks (pyautoattack/checks.py) -> short form for the flags column.
_AA_WARNING_SHORT = (
    ("randomized defense", "randomized defence"),
    ("probability distribution", "softmax output"),
    ("zero gradient", "zero gradients"),
    ("square attack", "Square stronger than APGD"),
    ("dynamic defenses is not currently supported", "dynamic check skipped"),
    ("dynamic defense", "dynamic defence"),
    ("target classes", "too many target classes"),
    ("dlr loss", "too few classes for DLR"),
)


# --------------------------------------------------------------------------------------------
# Loading


def load_records(results_dir: Path) -> tuple[list[dict], list[str]]:
    """Read every ``*.json`` under ``<results_dir>/records/`` (recursively, in path order).

    Returns (valid records, warnings). A file that is not valid JSON, not an ``acbench.record/1``
    record, lacks a required key or holds a metric that is not a number or null (a string metric
    is malformed) is skipped, with one warning naming the file and the reason.
    """
    records_dir = Path(results_dir) / "records"
    if not records_dir.is_dir():
        return [], [f"{records_dir}: no records folder"]
    records: list[dict] = []
    warnings: list[str] = []
    for path in sorted(records_dir.rglob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            warnings.append(f"{path}: skipped, unreadable ({exc})")
            continue
        except json.JSONDecodeError as exc:
            warnings.append(f"{path}: skipped, invalid JSON ({exc})")
            continue
        problem = validate_record(record)
        if problem:
            warnings.append(f"{path}: skipped, {problem}")
        else:
            records.append(record)
    return records, warnings


def validate_record(record: object) -> str | None:
    """Why ``record`` is not a usable ``acbench.record/1`` record, or None when it is."""
    if not isinstance(record, dict):
        return f"not a JSON object ({type(record).__name__})"
    if record.get("schema") != RECORD_SCHEMA:
        return f"schema is {record.get('schema')!r}, expected {RECORD_SCHEMA!r}"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"missing required key(s) {', '.join(missing)}"
    for key in _STR_KEYS:
        if not isinstance(record[key], str) or not record[key]:
            return f"{key!r} must be a non-empty string, got {record[key]!r}"
    if not _is_int(record["seed"]):
        return f"'seed' must be an integer, got {record['seed']!r}"
    if not _is_int(record["n_test"]) or record["n_test"] <= 0:
        return f"'n_test' must be a positive integer, got {record['n_test']!r}"
    if not _is_number(record["eps"]) or record["eps"] <= 0:
        return f"'eps' must be a positive number, got {record['eps']!r}"
    metrics = record["metrics"]
    if not isinstance(metrics, dict):
        return f"'metrics' must be an object, got {type(metrics).__name__}"
    for name, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, str):
            return f"metric {name!r} is a string ({value!r}); metrics are numbers or null"
        if not _is_number(value) or not 0 <= value <= 100:
            return f"metric {name!r} must be a percentage in [0, 100] or null, got {value!r}"
    for key in ("flags", "autoattack_warnings"):
        value = record.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(s, str) for s in value)
        ):
            return f"{key!r} must be a list of strings"
    return None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def shipped_reported_path() -> Path:
    """The reported CSV that ships with acbench, located from this file (never the cwd)."""
    return (
        Path(__file__).resolve().parent.parent
        / "results"
        / "reported"
        / "robustssl_leaderboard.csv"
    )


def load_reported(path: Path | None = None) -> pd.DataFrame:
    """Published reference numbers (columns: pretrain_dataset, finetune_dataset, scheme, method,
    venue, clean, autoattack, corruption, note; percent), plus ``source`` (the file name).

    ``path`` may be a CSV file, or a results folder: then every ``<path>/reported/*.csv`` is read
    (concatenated in name order; on a duplicated method/dataset/scheme the first file wins) when
    that folder holds any, and otherwise the shipped copy. ``None`` reads the shipped copy,
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
    frames = []
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"reported numbers not found: {file}")
        frame = pd.read_csv(file)
        missing = [c for c in REPORTED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{file}: missing column(s) {', '.join(missing)}")
        for col in ("clean", "autoattack", "corruption"):
            if col in frame.columns:
                frame[col] = pd.to_numeric(frame[col], errors="raise").astype(float)
        for col in ("pretrain_dataset", "finetune_dataset", "scheme"):
            frame[col] = frame[col].astype(str).str.strip().str.lower()
        frame["method"] = frame["method"].astype(str).str.strip()
        frame["source"] = file.name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# The leaderboard


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


@dataclass(frozen=True)
class Row:
    rank: int
    method: str
    cells: Mapping[str, Mapping[str, Cell]]  # scheme -> metric -> Cell
    mean_autoattack: float | None  # mean over the schemes that have AutoAttack
    autoattack_schemes: int  # how many schemes that mean covers
    reported: Mapping[str, Reported]  # scheme -> published numbers (paper tables only)
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """One (preset, pretraining -> finetuning dataset, attack setting) table."""

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

    @property
    def title(self) -> str:
        return (
            f"preset {self.preset}: {self.dataset} → {self.finetune_dataset} "
            f"(n_test {self.n_test}, {self.threat_model} eps {eps_label(self.eps)}, "
            f"{self.backbone}, selection {self.selection})"
        )

    @property
    def slug(self) -> str:
        """A file-name-safe id, unique within a leaderboard."""
        eps = eps_label(self.eps).replace("/", "of")
        parts = (
            self.preset,
            f"{self.dataset}-{self.finetune_dataset}",
            f"n{self.n_test}",
            f"{self.threat_model}-{eps}",
            self.backbone,
            self.selection,
        )
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

    def to_dict(self) -> dict:
        return {"schema": LEADERBOARD_SCHEMA, "tables": [_table_dict(t) for t in self.tables]}


def eps_label(eps: float) -> str:
    """``8/255`` for eps = 8/255 (to 1e-4 in units of 1/255), else the plain number."""
    k = eps * 255
    if abs(k - round(k)) < 1e-4 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:g}"


def scheme_sort_key(scheme: str) -> tuple[int, str]:
    return (SCHEME_ORDER.index(scheme) if scheme in SCHEME_ORDER else len(SCHEME_ORDER), scheme)


def _selected(value: str, wanted: str | Sequence[str] | None) -> bool:
    if wanted is None:
        return True
    return value in ((wanted,) if isinstance(wanted, str) else tuple(wanted))


def build_leaderboard(
    records: Iterable[dict],
    reported: pd.DataFrame | None = None,
    preset: str | Sequence[str] | None = None,
    dataset: str | Sequence[str] | None = None,
    scheme: str | Sequence[str] | None = None,
) -> Leaderboard:
    """Group valid records (see ``load_records``) into tables; a pure function of its inputs.

    ``reported``: a frame from ``load_reported``, or None for no reported columns. The filters
    keep only records of the given preset(s), scheme(s) and dataset(s); a dataset filter matches
    the pretraining dataset or the pair written ``pretrain->finetune`` (``cifar10->stl10``).
    Tables come out ordered by preset, datasets, then attack setting.
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        pair = f"{rec['dataset']}->{rec['finetune_dataset']}"
        if not (
            _selected(rec["preset"], preset)
            and _selected(rec["scheme"], scheme)
            and (_selected(rec["dataset"], dataset) or _selected(pair, dataset))
        ):
            continue
        key = (
            rec["preset"],
            rec["dataset"],
            rec["finetune_dataset"],
            rec["threat_model"],
            round(float(rec["eps"]), 7),
            int(rec["n_test"]),
            rec["backbone"],
            rec["selection"],
        )
        groups.setdefault(key, []).append(rec)
    lookup = _reported_lookup(reported)
    return Leaderboard(tuple(_build_table(key, groups[key], lookup) for key in sorted(groups)))


def _reported_lookup(reported: pd.DataFrame | None) -> dict[tuple, dict]:
    lookup: dict[tuple, dict] = {}
    if reported is None:
        return lookup
    for row in reported.to_dict("records"):
        key = (
            row["pretrain_dataset"],
            row["finetune_dataset"],
            row["scheme"],
            row["method"].lower(),
        )
        lookup.setdefault(key, row)  # first file wins
    return lookup


def _num(x: object) -> float | None:
    return float(x) if _is_number(x) else None


def _build_table(key: tuple, records: list[dict], lookup: dict[tuple, dict]) -> Table:
    preset, pre, fine, threat, eps, n_test, backbone, selection = key
    eps = float(records[0]["eps"])
    schemes = tuple(sorted({r["scheme"] for r in records}, key=scheme_sort_key))

    # (method, scheme, seed) -> record; a re-run keeps the newest, and says so.
    by_run: dict[tuple[str, str, int], dict] = {}
    duplicates: dict[str, set[tuple[str, int]]] = {}
    for rec in records:
        run = (rec["method"], rec["scheme"], rec["seed"])
        if run in by_run:
            duplicates.setdefault(rec["method"], set()).add((rec["scheme"], rec["seed"]))
            if str(rec.get("created", "")) < str(by_run[run].get("created", "")):
                continue
        by_run[run] = rec
    seeds_per = {}
    for method, sch, seed in by_run:
        seeds_per.setdefault((method, sch), set()).add(seed)
    max_seeds = max(len(s) for s in seeds_per.values())

    matchable = (
        preset == REPORTED_PRESET
        and threat == REPORTED_THREAT_MODEL
        and abs(eps - REPORTED_EPS) < 1e-6
    )
    rows = []
    for method in sorted({m for m, _, _ in by_run}):
        runs = {(s, seed): rec for (m, s, seed), rec in by_run.items() if m == method}
        cells = {
            s: {
                metric: _cell(
                    [(seed, rec) for (s2, seed), rec in sorted(runs.items()) if s2 == s], metric
                )
                for metric in METRICS
            }
            for s in schemes
        }
        aa = [cells[s]["autoattack"].mean for s in schemes if cells[s]["autoattack"].n]
        reported = {}
        if matchable and method in REPORTED_NAMES:
            for s in schemes:
                ref = lookup.get((pre, fine, s, REPORTED_NAMES[method].lower()))
                if ref is not None:
                    reported[s] = _reported(ref, cells[s])
        flags = _row_flags(
            method, runs, schemes, fine, n_test, max_seeds, duplicates.get(method, set())
        )
        rows.append(
            Row(
                rank=0,
                method=method,
                cells=cells,
                mean_autoattack=statistics.fmean(aa) if aa else None,
                autoattack_schemes=len(aa),
                reported=reported,
                flags=flags,
            )
        )

    def rank_key(row: Row) -> tuple:
        # all schemes with AutoAttack, then some, then none; best mean first; then by name
        tier = 0 if row.autoattack_schemes == len(schemes) else 1 if row.autoattack_schemes else 2
        return (tier, -(row.mean_autoattack or 0.0), row.method)

    rows = [replace(row, rank=i + 1) for i, row in enumerate(sorted(rows, key=rank_key))]
    return Table(
        preset=preset,
        dataset=pre,
        finetune_dataset=fine,
        threat_model=threat,
        eps=eps,
        n_test=n_test,
        backbone=backbone,
        selection=selection,
        schemes=schemes,
        rows=tuple(rows),
        max_seeds=max_seeds,
        show_reported=any(r.reported for r in rows),
    )


def _cell(runs: list[tuple[int, dict]], metric: str) -> Cell:
    pairs = [(seed, _num(rec["metrics"].get(metric))) for seed, rec in runs]
    pairs = [(seed, v) for seed, v in pairs if v is not None]
    return Cell(seeds=tuple(s for s, _ in pairs), values=tuple(v for _, v in pairs))


def _reported(ref: Mapping, cells: Mapping[str, Cell]) -> Reported:
    clean, aa = _num(ref.get("clean")), _num(ref.get("autoattack"))
    repro_clean, repro_aa = cells["clean"].mean, cells["autoattack"].mean

    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return Reported(
        name=str(ref["method"]),
        clean=clean,
        autoattack=aa,
        delta_clean=delta(repro_clean, clean),
        delta_autoattack=delta(repro_aa, aa),
        venue=_text(ref.get("venue")),
        note=_text(ref.get("note")),
    )


def _text(x: object) -> str:
    """A CSV text cell; pandas reads an empty one as NaN."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


# --------------------------------------------------------------------------------------------
# Flags


def short_flag(flag: str) -> str:
    """Short form of a flag a record carries (``autoattack-warning: ...`` -> ``AA: ...``)."""
    head, sep, rest = flag.partition(":")
    head, rest = head.strip().lower(), rest.strip()
    if sep and head in ("autoattack-warning", "autoattack warning", "autoattack"):
        return short_autoattack_warning(rest)
    if sep and head == "recipe-deviation":
        return _clip(f"deviation: {rest}")
    if sep and head == "invariant":  # the pipeline writes the values too: drop them, to merge
        return _clip("invariant: " + re.sub(r"\s+-?\d+(?:\.\d+)?(?=\s|$)", "", rest))
    return _clip(flag.strip())


def short_autoattack_warning(message: str) -> str:
    """Short form of one AutoAttack reliability warning (``AA: zero gradients``)."""
    message = re.sub(r"^\s*(autoattack|aa-lite)\s*:\s*", "", message, flags=re.IGNORECASE)
    low = message.lower()
    for needle, short in _AA_WARNING_SHORT:
        if needle in low:
            return f"AA: {short}"
    return _clip(f"AA: {message.strip()}", 40)


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def invariant_flags(metrics: Mapping[str, object]) -> list[str]:
    """The broken parts of autoattack <= pgd20 <= clean (tolerance 1e-9), in the pipeline's words."""
    clean, pgd, aa = (_num(metrics.get(m)) for m in METRICS)
    broken = []
    if aa is not None and pgd is not None and aa > pgd + INVARIANT_TOLERANCE:
        broken.append("invariant: autoattack > pgd20")
    if pgd is not None and clean is not None and pgd > clean + INVARIANT_TOLERANCE:
        broken.append("invariant: pgd20 > clean")
    if pgd is None and aa is not None and clean is not None and aa > clean + INVARIANT_TOLERANCE:
        broken.append("invariant: autoattack > clean")
    return broken


def _row_flags(
    method: str,
    runs: Mapping[tuple[str, int], dict],
    schemes: Sequence[str],
    finetune_dataset: str,
    n_test: int,
    max_seeds: int,
    duplicates: set[tuple[str, int]],
) -> tuple[str, ...]:
    where: dict[str, set[tuple[str, int | None]]] = {}

    def add(text: str, locations: Iterable[tuple[str, int | None]]) -> None:
        where.setdefault(text, set()).update(locations)

    for (s, seed), rec in runs.items():
        loc = [(s, seed)]
        for flag in rec.get("flags") or []:
            add(short_flag(flag), loc)
        for message in rec.get("autoattack_warnings") or []:
            add(short_autoattack_warning(message), loc)
        for flag in invariant_flags(rec["metrics"]):
            add(flag, loc)
        for metric in METRICS:
            if _num(rec["metrics"].get(metric)) is None:
                add(f"no {METRIC_LABELS[metric]}", loc)
    if duplicates:
        add("duplicate runs, newest kept", duplicates)
    protocol = PROTOCOL_N_TEST.get(finetune_dataset)
    if protocol is not None and n_test < protocol:
        add(f"n_test {n_test} < {protocol}", [])
    for s in schemes:
        seeds = {seed for s2, seed in runs if s2 == s}
        if not seeds:
            add(f"no {s.upper()}", [])
        elif len(seeds) < max_seeds:
            add(f"seeds {len(seeds)}/{max_seeds}", [(s, None)])

    every_run = set(runs)
    flags = []
    for text in sorted(where):
        locations = where[text]
        if not locations or locations == every_run:
            flags.append(text)
        else:
            flags.append(f"{text} [{_locations(locations, schemes)}]")
    return tuple(flags)


def _locations(locations: set[tuple[str, int | None]], schemes: Sequence[str]) -> str:
    parts = []
    for s in sorted({s for s, _ in locations}, key=scheme_sort_key):
        seeds = sorted(seed for s2, seed in locations if s2 == s and seed is not None)
        parts.append(f"{s} " + ",".join(f"s{seed}" for seed in seeds) if seeds else s)
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Rendering


def fmt_cell(cell: Cell) -> str:
    """``45.10 ± 1.00 (3)`` for several seeds, ``45.10`` for one, ``–`` for none."""
    if cell.n == 0:
        return EMPTY
    if cell.n == 1:
        return f"{cell.mean:.2f}"
    return f"{cell.mean:.2f} ± {cell.std:.2f} ({cell.n})"


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return EMPTY
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _fmt_reported(value: float | None, delta: float | None) -> str:
    """``39.17 (-0.67)``: the published number and reproduction - reported."""
    if value is None:
        return EMPTY
    return _fmt(value) if delta is None else f"{_fmt(value)} ({_fmt(delta, signed=True)})"


def table_cells(table: Table) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of a table, as markdown and HTML show them."""
    headers = ["#", "method"]
    for s in table.schemes:
        headers += [f"{s.upper()} {METRIC_LABELS[m]}" for m in METRICS]
    headers.append("mean AA")
    if table.show_reported:
        for s in table.schemes:
            headers += [f"{s.upper()} clean reported (Δ)", f"{s.upper()} AA reported (Δ)"]
    headers.append("flags")
    rows = []
    for row in table.rows:
        line = [str(row.rank), row.method]
        for s in table.schemes:
            line += [fmt_cell(row.cells[s][m]) for m in METRICS]
        partial = row.mean_autoattack is not None and row.autoattack_schemes < len(table.schemes)
        line.append(_fmt(row.mean_autoattack) + ("*" if partial else ""))
        if table.show_reported:
            for s in table.schemes:
                ref = row.reported.get(s)
                if ref is None:
                    line += [EMPTY, EMPTY]
                else:
                    line += [
                        _fmt_reported(ref.clean, ref.delta_clean),
                        _fmt_reported(ref.autoattack, ref.delta_autoattack),
                    ]
        line.append("; ".join(row.flags))
        rows.append(line)
    return headers, rows


def render(board: Leaderboard, fmt: str = "md") -> str:
    """The leaderboard as ``md`` (GitHub markdown, tabulate "github"), ``csv``, ``json`` or
    ``html`` (self-contained: tables and plots embedded as base64 PNG)."""
    if fmt == "md":
        return _render_md(board)
    if fmt == "csv":
        return _render_csv(board)
    if fmt == "json":
        return json.dumps(board.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "html":
        from benchmark.report import render_html  # matplotlib only when asked for

        return render_html(board)
    raise ValueError(f"unknown format {fmt!r}; choose md, csv, json or html")


def _render_md(board: Leaderboard) -> str:
    out = ["# acbench leaderboard", ""]
    if not board.tables:
        out += ["_No records._", ""]
    for table in board.tables:
        headers, rows = table_cells(table)
        rows = [[c.replace("|", "\\|") for c in line] for line in rows]
        out += [f"### {table.title}", ""]
        out.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
        out.append("")
        out += [f"- {line}" for line in table.legend()]
        out.append("")
    return "\n".join(out)


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def _render_csv(board: Leaderboard) -> str:
    """One row per (table, method); numbers as numbers (std empty for one seed)."""
    schemes = sorted({s for t in board.tables for s in t.schemes}, key=scheme_sort_key)
    columns = [
        "preset",
        "pretrain_dataset",
        "finetune_dataset",
        "n_test",
        "threat_model",
        "eps",
        "backbone",
        "selection",
        "rank",
        "method",
    ]
    for s in schemes:
        for m in METRICS:
            columns += [f"{s}_{m}_mean", f"{s}_{m}_std", f"{s}_{m}_n"]
    columns += ["mean_autoattack", "autoattack_schemes"]
    for s in schemes:
        columns += [
            f"{s}_reported_clean",
            f"{s}_delta_clean",
            f"{s}_reported_autoattack",
            f"{s}_delta_autoattack",
        ]
    columns.append("flags")
    lines = []
    for t in board.tables:
        for row in t.rows:
            line: dict[str, object] = {
                "preset": t.preset,
                "pretrain_dataset": t.dataset,
                "finetune_dataset": t.finetune_dataset,
                "n_test": t.n_test,
                "threat_model": t.threat_model,
                "eps": _r(t.eps, 7),
                "backbone": t.backbone,
                "selection": t.selection,
                "rank": row.rank,
                "method": row.method,
                "mean_autoattack": _r(row.mean_autoattack),
                "autoattack_schemes": row.autoattack_schemes,
                "flags": "; ".join(row.flags),
            }
            for s, by_metric in row.cells.items():
                for m, cell in by_metric.items():
                    line[f"{s}_{m}_mean"] = _r(cell.mean)
                    line[f"{s}_{m}_std"] = _r(cell.std)
                    line[f"{s}_{m}_n"] = cell.n
            for s, ref in row.reported.items():
                line[f"{s}_reported_clean"] = ref.clean
                line[f"{s}_delta_clean"] = _r(ref.delta_clean)
                line[f"{s}_reported_autoattack"] = ref.autoattack
                line[f"{s}_delta_autoattack"] = _r(ref.delta_autoattack)
            lines.append(line)
    buf = io.StringIO()
    frame = pd.DataFrame(lines, columns=columns)
    for col in columns:  # ints stay ints where a table lacks the scheme
        if col.endswith(("_n", "_schemes")) or col in ("n_test", "rank"):
            frame[col] = frame[col].astype("Int64")
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def _table_dict(t: Table) -> dict:
    return {
        "title": t.title,
        "preset": t.preset,
        "pretrain_dataset": t.dataset,
        "finetune_dataset": t.finetune_dataset,
        "n_test": t.n_test,
        "threat_model": t.threat_model,
        "eps": t.eps,
        "backbone": t.backbone,
        "selection": t.selection,
        "schemes": list(t.schemes),
        "max_seeds": t.max_seeds,
        "show_reported": t.show_reported,
        "legend": t.legend(),
        "rows": [
            {
                "rank": row.rank,
                "method": row.method,
                "mean_autoattack": _r(row.mean_autoattack, 6),
                "autoattack_schemes": row.autoattack_schemes,
                "cells": {
                    s: {
                        m: {
                            "mean": _r(c.mean, 6),
                            "std": _r(c.std, 6),
                            "n": c.n,
                            "seeds": list(c.seeds),
                            "values": list(c.values),
                        }
                        for m, c in by_metric.items()
                    }
                    for s, by_metric in row.cells.items()
                },
                "reported": {
                    s: {
                        "method": ref.name,
                        "venue": ref.venue,
                        "clean": ref.clean,
                        "autoattack": ref.autoattack,
                        "delta_clean": _r(ref.delta_clean, 6),
                        "delta_autoattack": _r(ref.delta_autoattack, 6),
                        "note": ref.note,
                    }
                    for s, ref in row.reported.items()
                },
                "flags": list(row.flags),
            }
            for row in t.rows
        ],
    }


def write_plots(board: Leaderboard, out_dir: Path) -> list[Path]:
    """Write each table's PNG plots into ``out_dir`` (created): ``<slug>_scatter.png`` (clean vs
    AutoAttack) and ``<slug>_bars_<scheme>.png``; returns the paths written. Figures are drawn by
    ``benchmark.report`` (matplotlib, Agg), imported only here and for HTML."""
    from benchmark.report import png_bytes, table_figures

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in board.tables:
        for stem, fig in table_figures(table):
            path = out_dir / f"{stem}.png"
            path.write_bytes(png_bytes(fig))
            paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# RobustBench


_ARCHITECTURES = {"resnet18": "ResNet-18"}


def robustbench_entry(record: dict) -> dict:
    """The finetuned classifier as a RobustBench model card (``model_info/<dataset>/<threat>/
    <name>.json``: link, name, authors, additional_data, number_forward_passes, dataset, venue,
    architecture, eps, clean_acc, reported, autoattack_acc, footnote, unreliable), with numbers
    as numbers (RobustBench's own files store accuracies as strings) and acbench's provenance
    added (threat_model, n_examples, pgd20_acc, method, pretrain_dataset, scheme, seed, preset,
    selection, checkpoint, flags).

    ``unreliable`` is true when AutoAttack warned or an accuracy invariant is broken; a test
    subset below RobustBench's full test set is stated in the footnote.
    """
    metrics = record.get("metrics") or {}
    flags = [short_flag(f) for f in record.get("flags") or []]
    flags += [short_autoattack_warning(w) for w in record.get("autoattack_warnings") or []]
    flags += invariant_flags(metrics)
    flags = sorted(set(flags))
    fine = record["finetune_dataset"]
    n_test = int(record["n_test"])
    notes = [
        f"{record['method']} pretrained on {record['dataset']} ({record['preset']} preset), "
        f"{record['scheme'].upper()} finetuning, seed {record['seed']}, selection {record.get('selection', 'last')}."
    ]
    protocol = PROTOCOL_N_TEST.get(fine)
    if protocol is not None and n_test < protocol:
        notes.append(f"Evaluated on the first {n_test} of {protocol} test images.")
    if flags:
        notes.append("Flags: " + "; ".join(flags) + ".")
    backbone = str(record.get("backbone", ""))
    return {
        "link": None,
        "name": f"acbench {record['method']} {record['scheme'].upper()} (seed {record['seed']})",
        "authors": None,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": fine,
        "venue": "acbench",
        "architecture": _ARCHITECTURES.get(backbone, backbone),
        "eps": float(record["eps"]),
        "clean_acc": _num(metrics.get("clean")),
        "reported": None,
        "autoattack_acc": _num(metrics.get("autoattack")),
        "footnote": " ".join(notes),
        "unreliable": any(f.startswith(("AA:", "invariant:")) for f in flags),
        "threat_model": record["threat_model"],
        "n_examples": n_test,
        "pgd20_acc": _num(metrics.get("pgd20")),
        "method": record["method"],
        "pretrain_dataset": record["dataset"],
        "scheme": record["scheme"],
        "seed": record["seed"],
        "preset": record["preset"],
        "selection": record.get("selection"),
        "checkpoint": record.get("checkpoint"),
        "flags": flags,
    }
