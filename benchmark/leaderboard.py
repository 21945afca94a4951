"""Leaderboards: a pure function of result records (docs/protocol.md, "Leaderboards").

Records (:class:`benchmark.records.Record`, one per method x dataset x seed x scheme) are grouped
into one table per preset, pretraining -> finetuning dataset, finetuning protocol and attack
setting (threat model, eps, n_test and the full settings of every attack the records carry), plus
backbone and selection rule, so that no table ever mixes protocols. Rows are methods; for each
finetuning scheme the columns are clean / PGD-20 / AutoAttack accuracy, then any other metric the
records hold (another attack such as ``ta:CW``), each mean +- sample std (n seeds) over seeds;
"mean AA" (AutoAttack averaged over schemes) ranks the rows. Tables of the ``robustssl`` finetuning
protocol under the ``paper`` preset also show the RobustSSL leaderboard's published numbers
(``results/reported/``) and the difference reproduction - reported; ``uniform`` tables and other
presets never meet them. A flags column collects what makes a number less trustworthy: AutoAttack
warnings, broken invariants (autoattack <= pgd20 <= clean), a test subset below the protocol's,
recipe deviations, a run's deviations from its protocol, missing seeds, schemes or metrics; the
deviations every record of a protocol shares are said once, in the table's legend.

Like RobustBench, the records are the single source of truth and every output is a thin renderer
over one :class:`Leaderboard` (its types: ``benchmark.leaderboard_types``): markdown, CSV, JSON
and HTML in ``benchmark.render``, PNG plots in ``benchmark.report``. This module loads the records
and builds the board; ``benchmark.leaderboard_reported`` reads the published numbers.

Example::

    records, warnings = load_records(Path("results"))
    board = build_leaderboard(records, reported=load_reported(Path("results")))
    print(render(board, "md"))
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from attacks import attack_label
from benchmark.leaderboard_reported import (
    ReportedIndex,
    ReportedNumber,
    find_reported,
    load_reported,
    reported_index,
)
from benchmark.leaderboard_types import (
    DEFAULT_PROTOCOL,
    METRICS,
    Cell,
    Leaderboard,
    Reported,
    Row,
    Table,
    attack_settings_key,
)
from benchmark.protocols import PROTOCOL_DEVIATION, PROTOCOLS, ROBUSTSSL, common_deviations
from benchmark.records import (
    INVARIANT,
    RECIPE_DEVIATION,
    Flag,
    Record,
    RecordError,
    invariant_flags,
)
from benchmark.schemes import scheme_label, scheme_sort_key

# load_reported is defined with the published numbers and offered here with the other input
__all__ = [
    "PROTOCOL_N_TEST",
    "build_leaderboard",
    "load_records",
    "load_reported",
    "record_flags",
    "short_autoattack_warning",
    "short_flag",
]

# The protocol's full test sets; a record evaluated on fewer images is flagged. Other datasets
# (digits, synthetic) have no protocol size and are never flagged.
PROTOCOL_N_TEST = {"cifar10": 10_000, "cifar100": 10_000, "stl10": 8_000}

# flag kinds that carry an AutoAttack reliability warning (the last two: acbench.record/1 spellings)
_AA_FLAG_KINDS = ("autoattack-warning", "autoattack warning", "autoattack")
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


def load_records(results_dir: Path) -> tuple[list[Record], list[str]]:
    """Read every ``*.json`` under ``<results_dir>/records/`` (recursively, in path order).

    Returns (records, warnings). A file that :meth:`Record.load` refuses (not JSON, not a record
    of a readable schema, a required key missing, a metric that is not a number or null, ...) is
    skipped, with one warning naming the file and the reason.
    """
    records_dir = Path(results_dir) / "records"
    if not records_dir.is_dir():
        return [], [f"{records_dir}: no records folder"]
    records: list[Record] = []
    warnings: list[str] = []
    for path in sorted(records_dir.rglob("*.json")):
        try:
            records.append(Record.load(path))
        except RecordError as exc:
            warnings.append(f"{path}: skipped, {str(exc).removeprefix(f'{path}: ')}")
    return records, warnings


def _selected(value: str, wanted: str | Sequence[str] | None) -> bool:
    if wanted is None:
        return True
    return value in ((wanted,) if isinstance(wanted, str) else tuple(wanted))


def build_leaderboard(
    records: Iterable[Record],
    reported: Sequence[ReportedNumber] | None = None,
    preset: str | Sequence[str] | None = None,
    dataset: str | Sequence[str] | None = None,
    scheme: str | Sequence[str] | None = None,
) -> Leaderboard:
    """Group records (see ``load_records``) into tables; a pure function of its inputs.

    ``reported``: numbers from ``load_reported``, or None for no reported columns. The filters
    keep only records of the given preset(s), scheme(s) and dataset(s); a dataset filter matches
    the pretraining dataset or the pair written ``pretrain->finetune`` (``cifar10->stl10``).
    Tables come out ordered by preset, datasets, protocol, then attack setting.
    """
    groups: dict[tuple, list[Record]] = {}
    for rec in records:
        pair = f"{rec.dataset}->{rec.finetune_dataset}"
        if not (
            _selected(rec.preset, preset)
            and _selected(rec.scheme, scheme)
            and (_selected(rec.dataset, dataset) or _selected(pair, dataset))
        ):
            continue
        key = (
            rec.preset,
            rec.dataset,
            rec.finetune_dataset,
            rec.protocol,
            rec.threat_model,
            round(float(rec.eps), 7),
            rec.n_test,
            rec.backbone,
            rec.selection,
            attack_settings_key(rec.attacks),
        )
        groups.setdefault(key, []).append(rec)
    index = reported_index(reported or ())
    return Leaderboard(tuple(_build_table(key, groups[key], index) for key in sorted(groups)))


def _num(x: float | None) -> float | None:
    return None if x is None else float(x)  # a Record's metrics are finite numbers or None


def _build_table(key: tuple, records: list[Record], index: ReportedIndex) -> Table:
    preset, pre, fine, protocol, threat, _, n_test, backbone, selection, attacks = key
    eps = float(records[0].eps)
    schemes = tuple(sorted({r.scheme for r in records}, key=scheme_sort_key))
    others = {m for r in records for m in r.metrics} - set(METRICS)
    metrics = METRICS + tuple(sorted(others))
    # what every record of this protocol deviates in: in the legend, not in each row's flags
    common = common_deviations(protocol) if protocol in PROTOCOLS else ()
    shared = frozenset(Flag(PROTOCOL_DEVIATION, m) for m in common)

    # (method, scheme, seed) -> record; a re-run keeps the newest, and says so.
    by_run: dict[tuple[str, str, int], Record] = {}
    duplicates: dict[str, set[tuple[str, int]]] = {}
    for rec in records:
        run = (rec.row_name, rec.scheme, rec.seed)
        if run in by_run:
            duplicates.setdefault(rec.row_name, set()).add((rec.scheme, rec.seed))
            if str(rec.created) < str(by_run[run].created):
                continue
        by_run[run] = rec
    seeds_per: dict[tuple[str, str], set[int]] = {}
    for method, sch, seed in by_run:
        seeds_per.setdefault((method, sch), set()).add(seed)
    max_seeds = max(len(s) for s in seeds_per.values())

    rows = []
    for method in sorted({m for m, _, _ in by_run}):
        runs = {(s, seed): rec for (m, s, seed), rec in by_run.items() if m == method}
        cells = {
            s: {
                metric: _cell(
                    [(seed, rec) for (s2, seed), rec in sorted(runs.items()) if s2 == s], metric
                )
                for metric in metrics
            }
            for s in schemes
        }
        aa = [cells[s]["autoattack"].mean for s in schemes if cells[s]["autoattack"].n]
        reported = {}
        for s in schemes:
            ref = find_reported(index, runs[next(iter(runs))].method, preset, protocol, pre, fine, s, threat, eps)
            if ref is not None:
                reported[s] = _reported(ref, cells[s])
        flags = _row_flags(
            runs, schemes, metrics, fine, n_test, max_seeds, duplicates.get(method, set()), shared
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
        protocol=protocol,
        metrics=metrics,
        attacks=json.loads(attacks),
        notes=_protocol_notes(protocol, common),
    )


def _protocol_notes(protocol: str, common: Sequence[str]) -> tuple[str, ...]:
    """The legend's lines on a protocol other than the default one."""
    if protocol == DEFAULT_PROTOCOL:
        return ()
    if protocol != ROBUSTSSL:
        return (f"protocol {protocol}: finetuning protocol unknown to this acbench.",)
    text = (
        "protocol robustssl: each method finetuned as the RobustSSL benchmark finetuned its "
        "family (batch, lr, schedule, epochs, dual-BN AFF; docs/protocol.md)"
    )
    if common:
        text += "; acbench differs in every run: " + "; ".join(common)
    return (text + ".",)


def _cell(runs: list[tuple[int, Record]], metric: str) -> Cell:
    pairs = [(seed, _num(rec.metrics.get(metric))) for seed, rec in runs]
    pairs = [(seed, v) for seed, v in pairs if v is not None]
    return Cell(seeds=tuple(s for s, _ in pairs), values=tuple(v for _, v in pairs))


def _reported(ref: ReportedNumber, cells: Mapping[str, Cell]) -> Reported:
    repro_clean, repro_aa = cells["clean"].mean, cells["autoattack"].mean
    repro_ca = cells["corruption"].mean if "corruption" in cells else None

    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return Reported(
        name=ref.method,
        clean=ref.clean,
        autoattack=ref.autoattack,
        delta_clean=delta(repro_clean, ref.clean),
        delta_autoattack=delta(repro_aa, ref.autoattack),
        venue=ref.venue,
        note=ref.note,
        corruption=ref.corruption,
        delta_corruption=delta(repro_ca, ref.corruption),
    )


# --------------------------------------------------------------------------------------------
# Flags


def short_flag(flag: Flag) -> str:
    """Short form of a record's flag for the flags column (``autoattack-warning`` -> ``AA: ...``)."""
    kind = flag.kind.strip().lower()
    if kind in _AA_FLAG_KINDS:
        return short_autoattack_warning(flag.message)
    if kind == RECIPE_DEVIATION:
        return _clip(f"deviation: {flag.message}")
    if kind == PROTOCOL_DEVIATION:
        return _clip(f"protocol: {flag.message}")
    if kind == INVARIANT:  # the values differ between seeds: drop them, so that the flags merge
        return _clip("invariant: " + " ".join(w for w in flag.message.split() if not _numeral(w)))
    if kind == "note":  # an acbench.record/1 flag without a kind: its text as written
        return _clip(flag.message)
    return _clip(str(flag))


def _numeral(word: str) -> bool:
    return word.removeprefix("-").replace(".", "", 1).isdigit()


def short_autoattack_warning(message: str) -> str:
    """Short form of one AutoAttack reliability warning (``AA: zero gradients``)."""
    head, sep, rest = message.partition(":")
    if sep and head.strip().lower() in ("autoattack", "aa-lite"):  # the pipeline's prefix
        message = rest
    low = message.lower()
    for needle, short in _AA_WARNING_SHORT:
        if needle in low:
            return f"AA: {short}"
    return _clip(f"AA: {message.strip()}", 40)


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def record_flags(record: Record, omit: Collection[Flag] = ()) -> set[str]:
    """The short flags of one record: its own (but ``omit``), its AutoAttack warnings, its
    broken invariants."""
    flags = {short_flag(f) for f in record.flags if f not in omit}
    flags |= {short_autoattack_warning(w) for w in record.autoattack_warnings}
    flags |= {short_flag(f) for f in invariant_flags(record.metrics)}
    return flags


def _row_flags(
    runs: Mapping[tuple[str, int], Record],
    schemes: Sequence[str],
    metrics: Sequence[str],
    finetune_dataset: str,
    n_test: int,
    max_seeds: int,
    duplicates: set[tuple[str, int]],
    shared: Collection[Flag] = (),
) -> tuple[str, ...]:
    where: dict[str, set[tuple[str, int | None]]] = {}

    def add(text: str, locations: Iterable[tuple[str, int | None]]) -> None:
        where.setdefault(text, set()).update(locations)

    for (s, seed), rec in runs.items():
        for text in record_flags(rec, omit=shared):
            add(text, [(s, seed)])
        for metric in metrics:
            if _num(rec.metrics.get(metric)) is None:
                add(f"no {attack_label(metric)}", [(s, seed)])
    if duplicates:
        add("duplicate runs, newest kept", duplicates)
    protocol = PROTOCOL_N_TEST.get(finetune_dataset)
    if protocol is not None and n_test < protocol:
        add(f"n_test {n_test} < {protocol}", [])
    for s in schemes:
        seeds = {seed for s2, seed in runs if s2 == s}
        if not seeds:
            add(f"no {scheme_label(s)}", [])
        elif len(seeds) < max_seeds:
            add(f"seeds {len(seeds)}/{max_seeds}", [(s, None)])

    every_run = set(runs)
    flags = []
    for text in sorted(where):
        locations = where[text]
        if not locations or locations == every_run:
            flags.append(text)
        else:
            flags.append(f"{text} [{_locations(locations)}]")
    return tuple(flags)


def _locations(locations: set[tuple[str, int | None]]) -> str:
    parts = []
    for s in sorted({s for s, _ in locations}, key=scheme_sort_key):
        seeds = sorted(seed for s2, seed in locations if s2 == s and seed is not None)
        parts.append(f"{s} " + ",".join(f"s{seed}" for seed in seeds) if seeds else s)
    return "; ".join(parts)
