"""Plots and the self-contained HTML page of a ``Leaderboard`` (matplotlib, Agg, PNG).

``benchmark.leaderboard.write_plots`` writes these figures to files. Per table: a scatter of clean vs AutoAttack accuracy (one point per method and scheme, error bars =
sample std over seeds, reported numbers as hollow markers in paper tables), and per scheme a
grouped bar chart (methods x clean / PGD-20 / AutoAttack). The HTML page embeds the same figures
as base64 PNG, so it opens from disk without a server.
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from collections.abc import Iterator

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from benchmark.leaderboard import METRIC_LABELS, METRICS, Leaderboard, Table, table_cells

SCHEME_MARKERS = {"slf": "o", "alf": "s", "aff": "^"}
METRIC_COLORS = {"clean": "#4c72b0", "pgd20": "#dd8452", "autoattack": "#c44e52"}
DPI = 110


def _method_colors(table: Table) -> dict[str, tuple]:
    methods = sorted(row.method for row in table.rows)
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _wrapped_title(table: Table, suffix: str = "") -> str:
    return "\n".join(textwrap.wrap(table.title + suffix, width=70))


def scatter_figure(table: Table) -> Figure:
    """Clean (x) vs AutoAttack (y) accuracy per method (colour) and scheme (marker)."""
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = _method_colors(table)
    plotted = []  # methods with at least one point, in rank order
    for row in table.rows:
        for s in table.schemes:
            clean, aa = row.cells[s]["clean"], row.cells[s]["autoattack"]
            if clean.n and aa.n:
                if row.method not in plotted:
                    plotted.append(row.method)
                ax.errorbar(
                    clean.mean,
                    aa.mean,
                    xerr=clean.std or 0.0,
                    yerr=aa.std or 0.0,
                    fmt=SCHEME_MARKERS.get(s, "D"),
                    color=colors[row.method],
                    markersize=8,
                    capsize=3,
                    elinewidth=1,
                )
            ref = row.reported.get(s)
            if ref is not None and ref.clean is not None and ref.autoattack is not None:
                if clean.n and aa.n:  # reported -> reproduction
                    ax.plot(
                        [ref.clean, clean.mean],
                        [ref.autoattack, aa.mean],
                        ":",
                        color=colors[row.method],
                        linewidth=1,
                    )
                ax.plot(
                    ref.clean,
                    ref.autoattack,
                    SCHEME_MARKERS.get(s, "D"),
                    markerfacecolor="none",
                    markeredgecolor=colors[row.method],
                    markersize=10,
                    markeredgewidth=1.5,
                )
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_title(_wrapped_title(table), fontsize=9)
    ax.grid(True, alpha=0.3)
    method_handles = [
        Line2D([], [], color=colors[m], marker="o", linestyle="", label=m) for m in plotted
    ]
    scheme_handles = [
        Line2D(
            [], [], color="0.3", marker=SCHEME_MARKERS.get(s, "D"), linestyle="", label=s.upper()
        )
        for s in table.schemes
    ]
    if table.show_reported:
        scheme_handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                markerfacecolor="none",
                linestyle="",
                label="reported",
            )
        )
    if plotted:
        fig.legend(handles=method_handles, title="method", loc="outside right upper")
    else:
        ax.text(0.5, 0.5, "no method has clean and AutoAttack", ha="center", transform=ax.transAxes)
    fig.legend(handles=scheme_handles, title="scheme", loc="outside right lower")
    return fig


def bars_figure(table: Table, scheme: str) -> Figure:
    """Grouped bars for one scheme: methods (in rank order) x clean / PGD-20 / AutoAttack."""
    rows = [r for r in table.rows if any(r.cells[scheme][m].n for m in METRICS)]
    methods = [row.method for row in rows]
    fig = Figure(figsize=(max(6.0, 1.1 * len(methods) + 2.5), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.26
    for j, metric in enumerate(METRICS):
        xs, heights, errs = [], [], []
        for i, row in enumerate(rows):
            cell = row.cells[scheme][metric]
            if cell.n:
                xs.append(i + (j - 1) * width)
                heights.append(cell.mean)
                errs.append(cell.std or 0.0)
        bars = ax.bar(
            xs,
            heights,
            width,
            yerr=errs,
            capsize=2,
            color=METRIC_COLORS[metric],
            label=METRIC_LABELS[metric],
        )
        if len(methods) <= 8:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(
        range(len(methods)),
        methods,
        rotation=20 if len(methods) > 4 else 0,
        ha="right" if len(methods) > 4 else "center",
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(_wrapped_title(table, f" — {scheme.upper()}"), fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.legend(title="metric", loc="outside right upper")
    return fig


def table_figures(table: Table) -> Iterator[tuple[str, Figure]]:
    """(file stem, figure) for each plot of one table."""
    yield f"{table.slug}_scatter", scatter_figure(table)
    for s in table.schemes:
        yield f"{table.slug}_bars_{s}", bars_figure(table, s)


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f3f3f3; }
td { text-align: right; white-space: nowrap; }
td.method, td.flags { text-align: left; }
td.flags { white-space: normal; color: #a33; max-width: 30em; }
ul.legend { font-size: 0.85em; color: #555; }
img { max-width: 100%; margin: 0.5em 1em 0.5em 0; border: 1px solid #eee; }
"""


def render_html(board: Leaderboard) -> str:
    """A self-contained page: every table, its legend and its plots (base64 PNG)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>acbench leaderboard</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>acbench leaderboard</h1>",
    ]
    if not board.tables:
        out.append("<p>No records.</p>")
    for table in board.tables:
        headers, rows = table_cells(table)
        out.append(f"<h2>{html.escape(table.title)}</h2>")
        out.append("<table><thead><tr>")
        out += [f"<th>{html.escape(h)}</th>" for h in headers]
        out.append("</tr></thead><tbody>")
        for line in rows:
            cells = []
            for h, value in zip(headers, line):
                cls = (
                    ' class="method"' if h == "method" else ' class="flags"' if h == "flags" else ""
                )
                cells.append(f"<td{cls}>{html.escape(value)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        out.append(
            '<ul class="legend">'
            + "".join(f"<li>{html.escape(x)}</li>" for x in table.legend())
            + "</ul>"
        )
        for stem, fig in table_figures(table):
            data = base64.b64encode(png_bytes(fig)).decode("ascii")
            out.append(f'<img alt="{html.escape(stem)}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
