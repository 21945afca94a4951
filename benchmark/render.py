"""Renderers of a :class:`~benchmark.leaderboard.Leaderboard`: markdown, CSV, JSON and HTML.

Each is a thin function of the board that ``benchmark.leaderboard`` builds; nothing here
recomputes a number. Markdown is GitHub's (tabulate "github"); CSV has one row per (table,
method) with numbers as numbers; JSON holds everything, cells with their seeds and values; the
HTML page fills the templates in ``benchmark/templates/`` (every record-derived string escaped)
and embeds the plots of ``benchmark.report`` as base64 PNG, so it opens from disk;
:func:`write_plots` writes the same plots as PNG files. Also here: :func:`robustbench_entry`, one
record as a RobustBench model card.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from tabulate import tabulate

from attacks import attack_label
from benchmark.errors import check_choice
from benchmark.leaderboard import PROTOCOL_N_TEST, record_flags
from benchmark.leaderboard_types import (
    DEFAULT_PROTOCOL,
    EMPTY,
    Cell,
    Leaderboard,
    Table,
)
from benchmark.records import Record
from benchmark.report import png_bytes, table_figures
from benchmark.schemes import scheme_label, scheme_sort_key

LEADERBOARD_SCHEMA = "acbench.leaderboard/1"
FORMATS = ("md", "csv", "json", "html")


def render(board: Leaderboard, fmt: str = "md") -> str:
    """The leaderboard as ``md`` (GitHub markdown), ``csv``, ``json`` or ``html`` (a
    self-contained page: tables and plots embedded as base64 PNG)."""
    renderer = {"md": render_md, "csv": render_csv, "json": render_json, "html": render_html}
    return renderer[check_choice("format", fmt, FORMATS)](board)


# --------------------------------------------------------------------------------------------
# Table cells, shared by markdown and HTML


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
        headers += [f"{scheme_label(s)} {attack_label(m)}" for m in table.metrics]
    headers.append("mean AA")
    ca = "corruption" in table.metrics  # the reported CA beside the reproduced one
    if table.show_reported:
        for s in table.schemes:
            label = scheme_label(s)
            headers += [f"{label} clean reported (Δ)", f"{label} AA reported (Δ)"]
            headers += [f"{label} CA reported (Δ)"] if ca else []
    headers.append("flags")
    rows = []
    for row in table.rows:
        line = [str(row.rank), row.method]
        for s in table.schemes:
            line += [fmt_cell(row.cells[s][m]) for m in table.metrics]
        partial = row.mean_autoattack is not None and row.autoattack_schemes < len(table.schemes)
        line.append(_fmt(row.mean_autoattack) + ("*" if partial else ""))
        if table.show_reported:
            for s in table.schemes:
                ref = row.reported.get(s)
                if ref is None:
                    line += [EMPTY, EMPTY] + ([EMPTY] if ca else [])
                else:
                    line += [
                        _fmt_reported(ref.clean, ref.delta_clean),
                        _fmt_reported(ref.autoattack, ref.delta_autoattack),
                    ]
                    line += [_fmt_reported(ref.corruption, ref.delta_corruption)] if ca else []
        line.append("; ".join(row.flags))
        rows.append(line)
    return headers, rows


# --------------------------------------------------------------------------------------------
# Markdown, CSV, JSON


def render_md(board: Leaderboard) -> str:
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


def render_csv(board: Leaderboard) -> str:
    """One row per (table, method); numbers as numbers (std empty for one seed). The columns
    ``protocol`` and ``attacks`` (the settings id of the table title) appear only when some table
    has a protocol other than uniform, or records that carry attack settings; the reported
    columns only when some table shows reported numbers (``robustssl`` tables of the paper
    preset)."""
    schemes = sorted({s for t in board.tables for s in t.schemes}, key=scheme_sort_key)
    metrics: list[str] = []
    for t in board.tables:
        metrics += [m for m in t.metrics if m not in metrics]
    key_columns = [
        "preset",
        "pretrain_dataset",
        "finetune_dataset",
        "n_test",
        "threat_model",
        "eps",
    ]
    key_columns += ["backbone", "selection"]
    if any(t.protocol != DEFAULT_PROTOCOL for t in board.tables):
        key_columns.append("protocol")
    if any(t.attacks for t in board.tables):
        key_columns.append("attacks")
    columns = [*key_columns, "rank", "method"]
    for s in schemes:
        for m in metrics:
            columns += [f"{s}_{m}_mean", f"{s}_{m}_std", f"{s}_{m}_n"]
    columns += ["mean_autoattack", "autoattack_schemes"]
    ca = any(t.show_reported and "corruption" in t.metrics for t in board.tables)
    for s in schemes if any(t.show_reported for t in board.tables) else ():
        columns += [
            f"{s}_reported_clean",
            f"{s}_delta_clean",
            f"{s}_reported_autoattack",
            f"{s}_delta_autoattack",
        ]
        columns += [f"{s}_reported_corruption", f"{s}_delta_corruption"] if ca else []
    columns.append("flags")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for t in board.tables:
        for row in t.rows:
            line: dict[str, Any] = {
                "preset": t.preset,
                "pretrain_dataset": t.dataset,
                "finetune_dataset": t.finetune_dataset,
                "n_test": t.n_test,
                "threat_model": t.threat_model,
                "eps": _r(t.eps, 7),
                "backbone": t.backbone,
                "selection": t.selection,
                "protocol": t.protocol,
                "attacks": t.attacks_id,
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
                line[f"{s}_reported_corruption"] = ref.corruption
                line[f"{s}_delta_corruption"] = _r(ref.delta_corruption)
            writer.writerow({c: line.get(c) for c in columns})
    return buf.getvalue()


def render_json(board: Leaderboard) -> str:
    data = {"schema": LEADERBOARD_SCHEMA, "tables": [table_dict(t) for t in board.tables]}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def table_dict(t: Table) -> dict[str, Any]:
    """One table as JSON data: its key, legend and every cell with its seeds and values."""
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
        "protocol": t.protocol,
        "attacks_id": t.attacks_id,
        "attacks": t.attacks,
        "metrics": list(t.metrics),
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
                        **({"corruption": ref.corruption, "delta_corruption": _r(ref.delta_corruption, 6)}
                           if "corruption" in t.metrics else {}),
                    }
                    for s, ref in row.reported.items()
                },
                "flags": list(row.flags),
            }
            for row in t.rows
        ],
    }


# --------------------------------------------------------------------------------------------
# HTML


def _template(name: str) -> Template:
    return Template((files("benchmark") / "templates" / name).read_text(encoding="utf-8"))


def render_html(board: Leaderboard) -> str:
    """A self-contained page: every table, its legend and its plots (base64 PNG)."""
    section = _template("leaderboard_table.html")
    esc = html.escape
    tables = []
    for table in board.tables:
        headers, rows = table_cells(table)
        body = []
        for line in rows:
            cells = []
            for h, value in zip(headers, line):
                cls = (
                    ' class="method"' if h == "method" else ' class="flags"' if h == "flags" else ""
                )
                cells.append(f"<td{cls}>{esc(value)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        plots = []
        for stem, fig in table_figures(table):
            data = base64.b64encode(png_bytes(fig)).decode("ascii")
            plots.append(f'<img alt="{esc(stem)}" src="data:image/png;base64,{data}">')
        tables.append(
            section.substitute(
                title=esc(table.title),
                headers="\n".join(f"<th>{esc(h)}</th>" for h in headers),
                rows="\n".join(body),
                legend="".join(f"<li>{esc(x)}</li>" for x in table.legend()),
                plots="\n".join(plots),
            )
        )
    return _template("leaderboard.html").substitute(
        tables="".join(tables) if tables else "<p>No records.</p>\n"
    )


def write_plots(board: Leaderboard, out_dir: Path) -> list[Path]:
    """Write each table's PNG plots into ``out_dir`` (created): ``<slug>_scatter.png`` (clean vs
    AutoAttack) and ``<slug>_bars_<scheme>.png``; returns the paths written."""
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

_ARCHITECTURES = {"resnet18": "ResNet-18", "resnet18-imagenet": "ResNet-18"}


def robustbench_entry(record: Record) -> dict[str, Any]:
    """The finetuned classifier as a RobustBench model card (``model_info/<dataset>/<threat>/
    <name>.json``: link, name, authors, additional_data, number_forward_passes, dataset, venue,
    architecture, eps, clean_acc, reported, autoattack_acc, footnote, unreliable), with numbers
    as numbers (RobustBench's own files store accuracies as strings) and acbench's provenance
    added (threat_model, n_examples, pgd20_acc, method, pretrain_dataset, scheme, seed, preset,
    selection, checkpoint, flags).

    ``unreliable`` is true when AutoAttack warned or an accuracy invariant is broken; a test
    subset below RobustBench's full test set is stated in the footnote.
    """
    metrics = record.metrics
    flags = sorted(record_flags(record))
    notes = [
        f"{record.method} pretrained on {record.dataset} ({record.preset} preset), "
        f"{scheme_label(record.scheme)} finetuning, seed {record.seed}, selection {record.selection}."
    ]
    protocol = PROTOCOL_N_TEST.get(record.finetune_dataset)
    if protocol is not None and record.n_test < protocol:
        notes.append(f"Evaluated on the first {record.n_test} of {protocol} test images.")
    if flags:
        notes.append("Flags: " + "; ".join(flags) + ".")
    return {
        "link": None,
        "name": f"acbench {record.method} {scheme_label(record.scheme)} (seed {record.seed})",
        "authors": None,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": record.finetune_dataset,
        "venue": "acbench",
        "architecture": _ARCHITECTURES.get(record.backbone, record.backbone),
        "eps": float(record.eps),
        "clean_acc": _number(metrics.get("clean")),
        "reported": None,
        "autoattack_acc": _number(metrics.get("autoattack")),
        "footnote": " ".join(notes),
        "unreliable": any(f.startswith(("AA:", "invariant:")) for f in flags),
        "threat_model": record.threat_model,
        "n_examples": record.n_test,
        "pgd20_acc": _number(metrics.get("pgd20")),
        "method": record.method,
        "pretrain_dataset": record.dataset,
        "scheme": record.scheme,
        "seed": record.seed,
        "preset": record.preset,
        "selection": record.selection,
        "checkpoint": record.checkpoint or None,
        "flags": flags,
    }


def _number(x: object) -> float | None:
    return None if x is None else float(x)  # a Record's metrics are numbers or None
