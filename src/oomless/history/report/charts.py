"""The report's plotly figures, drawn from :class:`~.aggregate.ReportData`'s plain numbers.

Three kinds: memory over time per worker (stacked areas), requested vs peak per task name
(grouped bars), and kills, evictions and refusals on the timeline (markers).  Each function only
formats: sizes in MiB or GiB, times as UTC, one colour per task name across every chart.

Not here: which workers, task names and attempts are drawn (:mod:`.aggregate` chose them), the
page and its captions (:mod:`.page`).  plotly is imported on first use: ``oomless[report]``.
"""

from __future__ import annotations

import html
from typing import Any

from ... import outcomes
from ...units import format_size
from .aggregate import MARKED, OTHER, Mark, ReportData, TaskPeaks, WorkerMemory
from .text import utc

__all__ = ["memory_figures", "waste_figure", "marks_figure"]

#: the colour of each outcome marked on the timeline (one per aggregate.MARKED)
MARK_COLOURS = {outcomes.MEMORY_KILLED: "#d62728", outcomes.EVICTED: "#ff7f0e", outcomes.INFEASIBLE: "#7f7f7f"}
OTHER_COLOUR = "#c7c7c7"
_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
            "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363",
            "#e6550d", "#969696", "#6baed6", "#74c476", "#9e9ac8", "#fd8d3c", "#a1d99b", "#bcbddc")


def _scale(largest: float) -> tuple[float, str]:
    """A divisor and unit for a chart's byte axis (plotly formats only decimal units itself)."""
    return (float(2**30), "GiB") if largest >= 2**30 else (float(2**20), "MiB")


def _colours(totals: dict[str, float]) -> dict[str, str]:
    """One colour per task name across every chart, by total byte-seconds."""
    ranked = sorted(totals, key=lambda name: (-totals[name], name))
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(ranked)}


def memory_figures(data: ReportData) -> list[Any]:
    """One stacked-area figure per charted worker, on one byte scale (the largest stack of any of them)."""
    largest = max((max(map(sum, zip(*m.values, strict=True)), default=0.0) for m in data.memory), default=0.0)
    divisor, unit = _scale(largest)
    x, colours = [utc(t) for t in data.grid.edges()], _colours(data.byte_seconds)
    return [_memory_figure(m, x, colours, divisor, unit) for m in data.memory]


def _memory_figure(memory: WorkerMemory, x: list[str], colours: dict[str, str], divisor: float, unit: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, series in zip(memory.names, memory.values, strict=True):
        fig.add_trace(go.Scatter(
            x=x, y=[round(v / divisor, 3) for v in series] + [0.0], name=name, mode="lines", stackgroup="one",
            line={"shape": "hv", "width": 0.5, "color": OTHER_COLOUR if name == OTHER else colours.get(name)},
            hovertemplate=f"%{{fullData.name}}: %{{y:.2f}} {unit}<extra></extra>",
        ))
    fig.update_layout(
        title={"text": html.escape(memory.worker)}, template="plotly_white", hovermode="x unified", height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 40}, legend={"traceorder": "reversed"},  # as stacked
        xaxis={"title": {"text": "time (UTC)"}},
        yaxis={"title": {"text": f"sum of running attempts' peaks ({unit})"}, "rangemode": "tozero"},
    )
    return fig


def waste_figure(peaks: list[TaskPeaks]) -> Any:
    """Grouped bars per task name, in the order given: mean request, p95 peak, max peak."""
    import plotly.graph_objects as go

    largest = max([max(p.mean_request or 0, p.max_peak) for p in peaks] + [1])
    divisor, unit = _scale(largest)
    custom = [[format_size(p.mean_request) if p.mean_request is not None else "none declared",
               format_size(p.p95_peak), format_size(p.max_peak),
               format_size(p.waste) if p.waste is not None else "n/a (no request)", f"{p.measured:,}"] for p in peaks]
    hover = ("<b>%{y}</b><br>mean request %{customdata[0]}<br>p95 peak %{customdata[1]}<br>max peak "
             "%{customdata[2]}<br>waste (mean request − peak) %{customdata[3]}<br>%{customdata[4]} measured "
             "attempts<extra>%{fullData.name}</extra>")
    y = [p.name for p in peaks]
    columns = (("mean request", [p.mean_request for p in peaks], "#9ecae1"),
               ("p95 peak", [p.p95_peak for p in peaks], "#3182bd"),
               ("max peak", [p.max_peak for p in peaks], "#08519c"))
    fig = go.Figure()
    for label, values, colour in columns:
        fig.add_trace(go.Bar(
            y=y, x=[None if v is None else round(v / divisor, 3) for v in values], name=label,
            orientation="h", marker={"color": colour}, customdata=custom, hovertemplate=hover,
        ))
    fig.update_layout(
        template="plotly_white", barmode="group", height=140 + 48 * len(peaks),
        margin={"l": 60, "r": 20, "t": 30, "b": 40},
        xaxis={"title": {"text": unit}}, yaxis={"autorange": "reversed", "type": "category"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def marks_figure(marks: list[Mark]) -> Any:
    """One row of markers per worker, one trace per outcome, at each attempt's start."""
    import plotly.graph_objects as go

    by_outcome: dict[str, list[Mark]] = {outcome: [] for outcome in MARKED}
    for mark in marks:
        by_outcome[mark.outcome].append(mark)
    workers = sorted({mark.worker for mark in marks})
    fig = go.Figure()
    for outcome, shown in by_outcome.items():
        if not shown:
            continue
        fig.add_trace(go.Scatter(
            x=[utc(m.started) for m in shown], y=[m.worker for m in shown], mode="markers", name=outcome,
            marker={"color": MARK_COLOURS[outcome], "size": 10,
                    "symbol": "x" if outcome == outcomes.MEMORY_KILLED else "circle", "line": {"width": 0}},
            customdata=[[m.task_name, m.task_id, format_size(m.limit),
                         "not measured" if m.peak is None else format_size(m.peak), format_size(m.request)]
                        for m in shown],
            hovertemplate=("<b>%{customdata[0]}</b>[%{customdata[1]}]<br>" + outcome + " at %{x} UTC<br>limit "
                           "%{customdata[2]}, peak %{customdata[3]}, request %{customdata[4]}<br>%{y}<extra></extra>"),
        ))
    fig.update_layout(
        template="plotly_white", height=160 + 40 * len(workers), hovermode="closest",
        margin={"l": 60, "r": 20, "t": 30, "b": 40}, xaxis={"title": {"text": "time (UTC)"}},
        yaxis={"type": "category", "categoryorder": "array", "categoryarray": workers},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig
