"""Plots of a ``Leaderboard`` (matplotlib, Agg, PNG).

Per table: a scatter of clean vs AutoAttack accuracy (one point per method and scheme, error bars
= sample std over seeds, reported numbers as hollow markers in paper tables), and per scheme a
grouped bar chart (methods x clean / PGD-20 / AutoAttack / any other metric of the table).
``benchmark.render`` writes them to PNG files and embeds them in its HTML page. matplotlib is
imported only when a figure is drawn, so the text renderers do not load it.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterator
from typing import TYPE_CHECKING

from attacks import attack_label
from benchmark.leaderboard_types import Table
from benchmark.schemes import scheme_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCHEME_MARKERS = {"slf": "o", "alf": "s", "aff": "^"}
METRIC_COLORS = {"clean": "#4c72b0", "pgd20": "#dd8452", "autoattack": "#c44e52"}
DPI = 110


def _figure(figsize: tuple[float, float]) -> Figure:
    """A constrained-layout figure on an Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _method_colors(table: Table) -> dict[str, tuple]:
    from matplotlib import colormaps

    methods = sorted(row.method for row in table.rows)
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _wrapped_title(table: Table, suffix: str = "") -> str:
    return "\n".join(textwrap.wrap(table.title + suffix, width=70))


def scatter_figure(table: Table) -> Figure:
    """Clean (x) vs AutoAttack (y) accuracy per method (colour) and scheme (marker)."""
    from matplotlib.lines import Line2D

    fig = _figure((8.5, 5.5))
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
            [],
            [],
            color="0.3",
            marker=SCHEME_MARKERS.get(s, "D"),
            linestyle="",
            label=scheme_label(s),
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
    from matplotlib import colormaps

    rows = [r for r in table.rows if any(r.cells[scheme][m].n for m in table.metrics)]
    methods = [row.method for row in rows]
    fig = _figure((max(6.0, 1.1 * len(methods) + 2.5), 4.8))
    ax = fig.subplots()
    width = 0.78 / len(table.metrics)  # 0.26 for the three standard metrics
    others = colormaps["tab10"]
    for j, metric in enumerate(table.metrics):
        xs, heights, errs = [], [], []
        for i, row in enumerate(rows):
            cell = row.cells[scheme][metric]
            if cell.n:
                xs.append(i + (j - (len(table.metrics) - 1) / 2) * width)
                heights.append(cell.mean)
                errs.append(cell.std or 0.0)
        bars = ax.bar(
            xs,
            heights,
            width,
            yerr=errs,
            capsize=2,
            color=METRIC_COLORS.get(metric, others((j + 1) % others.N)),
            label=attack_label(metric),
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
    ax.set_title(_wrapped_title(table, f" — {scheme_label(scheme)}"), fontsize=9)
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
