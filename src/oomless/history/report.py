"""The memory report: one self-contained HTML file drawn from the history store.

:func:`build_report` reads a :class:`~oomless.history.store.Store` and writes
one HTML page that opens with no network (plotly.js is inlined once), with:

1. **Memory over time per worker, tasks stacked.**  For every bucket of time,
   the sum of the peaks of the attempts that were running in it, stacked by
   task name (the 12 names with the most byte-seconds on that worker; the
   rest as "other").  The history holds one peak per attempt, not a series of
   samples: an attempt counts with its whole peak in every bucket it ran in,
   so a chart is an upper bound of what was in use, never a measured curve.
   An attempt without a measured peak counts with its request.
2. **Requested vs peak per task name**: mean request, p95 and max of the
   measured peaks (``ok`` and ``failed`` attempts), and the waste: the mean of
   request − peak.
3. **Kills, evictions and refusals on the timeline**, per worker (the newest
   5,000; the page says how many more there were).
4. **Recommendations**: :func:`oomless.history.recommend.recommend_all`.

Scale: the store is never loaded.  One query finds the period (so the time
buckets are fixed before any row is read), one streamed pass over
:meth:`Store.timeline` fills fixed-size arrays of buckets per (worker, task
name), and :func:`~oomless.history.recommend.recommend_all` makes its own pass
over :meth:`Store.samples`.  What is kept is bounded by workers × task names ×
buckets, never by the number of attempts: p95 peaks come from a log-scale
histogram (bins under 0.8 % wide), the markers from a heap of the newest 5,000.

What is not here: how recommendations are computed (:mod:`.recommend`), the
``oomless report`` command and its options (:mod:`oomless.cli.report`).
"""

from __future__ import annotations

import heapq
import html
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..paths import write_atomic
from ..units import format_size
from ..urls import redact

if TYPE_CHECKING:
    from .store import Store

__all__ = ["build_report", "ReportSummary", "TooManyBuckets", "MAX_BUCKETS", "MAX_MARKERS"]

#: Buckets per memory chart when the width is chosen automatically.
AUTO_BUCKETS = 600
#: The most buckets an explicit ``bucket`` width may produce per chart.
MAX_BUCKETS = 2_000
#: Task names stacked individually per worker; the rest are summed as "other".
MAX_STACKED = 12
#: Workers that get a memory chart (those with the most byte-seconds).
MAX_WORKER_CHARTS = 16
#: Individual markers on the kills timeline (the newest).
MAX_MARKERS = 5_000
#: Task names in the requested-vs-peak chart (those that waste the most in total).
MAX_BARS = 40
PROGRESS_EVERY = 10_000

MEASURED = ("ok", "failed")
#: outcomes drawn as markers on the timeline, with their colour
MARKED = {"memory-killed": "#d62728", "evicted": "#ff7f0e", "infeasible": "#7f7f7f"}
OTHER = "other"
OTHER_COLOUR = "#c7c7c7"
#: "nice" automatic bucket widths, in seconds
_NICE_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                2 * 86400, 7 * 86400)
_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
            "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363",
            "#e6550d", "#969696", "#6baed6", "#74c476", "#9e9ac8", "#fd8d3c", "#a1d99b", "#bcbddc")

Progress = Callable[[int, int], None]


class TooManyBuckets(ValueError):
    """An explicit bucket width would cut the period into more than :data:`MAX_BUCKETS` buckets."""


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`build_report` wrote."""

    path: str
    size: int  # bytes of the HTML file
    store: str  # the store's URL, password hidden
    attempts: int
    outcomes: dict[str, int]
    first: float | None  # earliest start (seconds since the epoch); None: no attempts
    last: float | None  # latest end
    workers: int
    task_names: int
    figures: int  # plotly figures on the page
    bucket: float | None  # seconds per bucket of the memory charts
    markers: int  # kills, evictions and refusals drawn
    markers_left_out: int  # beyond MAX_MARKERS
    recommendations: int


class _TaskStats:
    """One task name's numbers for the requested-vs-peak chart, in constant space per distinct peak bin."""

    __slots__ = ("measured", "peak_max", "bins", "request_sum", "request_n", "waste_sum")

    def __init__(self) -> None:
        self.measured = 0
        self.peak_max = 0
        self.bins: dict[int, int] = {}  # log-scale bin of a peak -> attempts
        self.request_sum = 0
        self.request_n = 0
        self.waste_sum = 0  # sum of max(0, request - peak)

    def add(self, peak: int, request: int | None) -> None:
        self.measured += 1
        b = _peak_bin(peak)
        self.bins[b] = self.bins.get(b, 0) + 1
        if peak > self.peak_max:
            self.peak_max = peak
        if request is not None:
            self.request_sum += request
            self.request_n += 1
            if request > peak:
                self.waste_sum += request - peak

    def quantile(self, q: float) -> int:
        """The ``q`` quantile of the peaks (nearest rank; the middle of its bin, at most the max)."""
        rank = max(1, math.ceil(q * self.measured))
        seen = 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= rank:
                return min(self.peak_max, _bin_middle(b))
        return self.peak_max


def _peak_bin(peak: int) -> int:
    """A peak's histogram bin: its bit length and next 7 bits (bins under 0.8 % wide; exact below 256 B)."""
    bits = peak.bit_length()
    return peak if bits <= 8 else (bits << 7) | ((peak >> (bits - 8)) & 127)


def _bin_middle(b: int) -> int:
    if b < 256:
        return b
    bits, fraction = b >> 7, b & 127
    return ((2 * (128 + fraction) + 1) << (bits - 8)) // 2


def _worker(host: str | None) -> str:
    return host or "(unknown worker)"


@dataclass(frozen=True)
class _Grid:
    """The time buckets of the memory charts."""

    start: float  # seconds since the epoch, a multiple of width
    width: float
    count: int

    def edges(self) -> list[str]:
        """Bucket starts and the end of the last one, as UTC date strings plotly reads."""
        return [_utc(self.start + i * self.width) for i in range(self.count + 1)]


def _grid(first: float, last: float, bucket: float | None) -> _Grid:
    span = max(last - first, 1.0)
    if bucket is not None:
        width = bucket
        if math.ceil(span / width) + 1 > MAX_BUCKETS:
            raise TooManyBuckets(
                f"a bucket of {bucket:g} s cuts the {_duration(span)} covered into {math.ceil(span / width) + 1:,} "
                f"buckets per chart, more than {MAX_BUCKETS:,}: use a bucket of at least "
                f"{math.ceil(span / (MAX_BUCKETS - 1)):,} s, or a shorter --since"
            )
    else:
        fits = [w for w in _NICE_WIDTHS if math.ceil(span / w) + 1 <= AUTO_BUCKETS]
        width = float(fits[0] if fits else math.ceil(span / (AUTO_BUCKETS - 1)))
    start = math.floor(first / width) * width
    return _Grid(start, width, max(1, math.ceil((last - start) / width)))


@dataclass
class _Totals:
    """Everything one pass over the attempts leaves behind: bounded by workers × task names, not by rows."""

    grid: _Grid
    rows: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    #: per (worker_host, task name): [byte-seconds, difference array of bytes per bucket].  Byte-seconds
    #: are peak (or request) × duration of the attempts that ran.  A running attempt's peak is added at
    #: its first bucket and taken off after its last: O(1) per attempt however many buckets it spans.
    used: dict[tuple[str | None, str], list[Any]] = field(default_factory=dict)
    tasks: dict[str, _TaskStats] = field(default_factory=dict)
    #: min-heap of (started_at, n, row): the newest MAX_MARKERS memory-killed, evicted and infeasible attempts
    marks: list[tuple[float, int, tuple[Any, ...]]] = field(default_factory=list)
    marked: int = 0

    def stacks(self) -> dict[str | None, tuple[list[str], list[list[float]]]]:
        """Per charted worker (the MAX_WORKER_CHARTS with the most byte-seconds): its series names, biggest
        first (the rest summed as "other"), and bytes per bucket for each."""
        per_worker: dict[str | None, dict[str, float]] = {}
        for (host, name), (byte_seconds, _) in self.used.items():
            per_worker.setdefault(host, {})[name] = byte_seconds
        ranked = sorted(per_worker.items(), key=lambda item: (-sum(item[1].values()), _worker(item[0])))
        out: dict[str | None, tuple[list[str], list[list[float]]]] = {}
        for host, names in ranked[:MAX_WORKER_CHARTS]:
            order = sorted(names, key=lambda name: (-names[name], name))
            series = [self.used[(host, name)][1] for name in order[:MAX_STACKED]]
            if len(order) > MAX_STACKED:
                other = [0.0] * (self.grid.count + 1)
                for name in order[MAX_STACKED:]:
                    for i, d in enumerate(self.used[(host, name)][1]):
                        other[i] += d
                series.append(other)
            labels = order[:MAX_STACKED] + ([OTHER] if len(order) > MAX_STACKED else [])
            out[host] = (labels, [_running_sum(diff) for diff in series])
        return out

    def byte_seconds(self) -> dict[str, float]:
        """Per task name, over all workers."""
        out: dict[str, float] = {}
        for (_, name), (byte_seconds, _) in self.used.items():
            out[name] = out.get(name, 0.0) + byte_seconds
        return out


def _running_sum(diff: list[float]) -> list[float]:
    total, values = 0.0, []
    for d in diff[:-1]:
        total += d
        values.append(total if total > 0 else 0.0)  # float error must not draw a sliver below zero
    return values


def _read(rows: Iterable[tuple[Any, ...]], grid: _Grid, tick: Callable[[int], None]) -> _Totals:
    """One pass over :meth:`Store.timeline` rows (any order).  The hottest loop of a report: locals, no
    calls that can be avoided."""
    totals = _Totals(grid)
    outcomes: dict[str, int] = {}
    per_key, tasks, marks = totals.used, totals.tasks, totals.marks
    start, width, last = grid.start, grid.width, grid.count - 1
    zeros = [0.0] * (grid.count + 1)
    ceil = math.ceil
    n = marked = 0
    for row in rows:
        name, outcome, started, duration, request, _limit, peak, host, _task_id, dag_id, af_task_id = row
        if dag_id and af_task_id:
            name = f"{dag_id}.{af_task_id}"  # every Airflow try runs as one Celery task: name it as Airflow does
        n += 1
        if n % PROGRESS_EVERY == 0:
            tick(n)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # Refused attempts (infeasible, invalid) have no duration: they never ran and used no memory.
        used = peak if peak is not None else request
        if duration is not None and used:
            key = (host, name)
            acc = per_key.get(key)
            if acc is None:
                acc = per_key[key] = [0.0, zeros.copy()]
            acc[0] += used * duration
            b0 = int((started - start) // width)
            # An attempt ending exactly on an edge does not run in the bucket that starts there.
            b1 = ceil((started + duration - start) / width) - 1
            # Rows written after the period was measured may fall outside the grid: clamp them.
            b0 = 0 if b0 < 0 else last if b0 > last else b0
            b1 = b0 if b1 < b0 else last if b1 > last else b1
            diff = acc[1]
            diff[b0] += used
            diff[b1 + 1] -= used
        if peak is not None and (outcome == "ok" or outcome == "failed"):
            stats = tasks.get(name)
            if stats is None:
                stats = tasks[name] = _TaskStats()
            stats.add(peak, request)
        elif outcome in MARKED:
            marked += 1
            entry = (started, marked, (name, *row[1:9]))
            if len(marks) < MAX_MARKERS:
                heapq.heappush(marks, entry)
            elif started > marks[0][0]:
                heapq.heapreplace(marks, entry)
    tick(n)
    totals.rows, totals.marked = n, marked
    totals.outcomes.update(outcomes)
    return totals


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _width(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _scale(largest: float) -> tuple[float, str]:
    """A divisor and unit for a chart's byte axis (plotly formats only decimal units itself)."""
    return (float(2**30), "GiB") if largest >= 2**30 else (float(2**20), "MiB")


def _colours(totals: dict[str, float]) -> dict[str, str]:
    """One colour per task name across every chart, by total byte-seconds."""
    ranked = sorted(totals, key=lambda name: (-totals[name], name))
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(ranked)}


def _memory_figure(worker: str, names: Sequence[str], values: Sequence[Sequence[float]], x: Sequence[str],
                   colours: dict[str, str], divisor: float, unit: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, series in zip(names, values, strict=True):
        fig.add_trace(go.Scatter(
            x=x, y=[round(v / divisor, 3) for v in series] + [0.0], name=name, mode="lines", stackgroup="one",
            line={"shape": "hv", "width": 0.5, "color": OTHER_COLOUR if name == OTHER else colours.get(name)},
            hovertemplate=f"%{{fullData.name}}: %{{y:.2f}} {unit}<extra></extra>",
        ))
    fig.update_layout(
        title={"text": html.escape(worker)}, template="plotly_white", hovermode="x unified", height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 40}, legend={"traceorder": "reversed"},  # as stacked
        xaxis={"title": {"text": "time (UTC)"}},
        yaxis={"title": {"text": f"sum of running attempts' peaks ({unit})"}, "rangemode": "tozero"},
    )
    return fig


def _waste_figure(tasks: dict[str, _TaskStats]) -> tuple[Any, int]:
    """Grouped bars per task name (those that waste the most first); also how many names were left out."""
    import plotly.graph_objects as go

    ranked = sorted(tasks, key=lambda name: (-tasks[name].waste_sum, name))
    shown = ranked[:MAX_BARS]
    rows: list[tuple[str, int | None, int, int, int | None, int]] = []
    for name in shown:
        s = tasks[name]
        mean_request = s.request_sum // s.request_n if s.request_n else None
        waste = s.waste_sum // s.request_n if s.request_n else None
        rows.append((name, mean_request, s.quantile(0.95), s.peak_max, waste, s.measured))
    largest = max([max(r[1] or 0, r[3]) for r in rows] + [1])
    divisor, unit = _scale(largest)
    custom = [[format_size(r[1]) if r[1] is not None else "none declared", format_size(r[2]), format_size(r[3]),
               format_size(r[4]) if r[4] is not None else "n/a (no request)", f"{r[5]:,}"] for r in rows]
    hover = ("<b>%{y}</b><br>mean request %{customdata[0]}<br>p95 peak %{customdata[1]}<br>max peak "
             "%{customdata[2]}<br>waste (mean request − peak) %{customdata[3]}<br>%{customdata[4]} measured "
             "attempts<extra>%{fullData.name}</extra>")
    y = [r[0] for r in rows]
    columns = (("mean request", [r[1] for r in rows], "#9ecae1"), ("p95 peak", [r[2] for r in rows], "#3182bd"),
               ("max peak", [r[3] for r in rows], "#08519c"))
    fig = go.Figure()
    for label, values, colour in columns:
        fig.add_trace(go.Bar(
            y=y, x=[None if v is None else round(v / divisor, 3) for v in values], name=label,
            orientation="h", marker={"color": colour}, customdata=custom, hovertemplate=hover,
        ))
    fig.update_layout(
        template="plotly_white", barmode="group", height=140 + 48 * len(rows),
        margin={"l": 60, "r": 20, "t": 30, "b": 40},
        xaxis={"title": {"text": unit}}, yaxis={"autorange": "reversed", "type": "category"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig, len(ranked) - len(shown)


def _marks_figure(marks: list[tuple[float, int, tuple[Any, ...]]]) -> Any:
    import plotly.graph_objects as go

    by_outcome: dict[str, list[tuple[Any, ...]]] = {outcome: [] for outcome in MARKED}
    for _, _, row in sorted(marks):
        by_outcome[row[1]].append(row)
    workers = sorted({_worker(row[7]) for _, _, row in marks})
    fig = go.Figure()
    for outcome, rows in by_outcome.items():
        if not rows:
            continue
        fig.add_trace(go.Scatter(
            x=[_utc(r[2]) for r in rows], y=[_worker(r[7]) for r in rows], mode="markers", name=outcome,
            marker={"color": MARKED[outcome], "size": 10, "symbol": "x" if outcome == "memory-killed" else "circle",
                    "line": {"width": 0}},
            customdata=[[r[0], r[8], format_size(r[5]), "not measured" if r[6] is None else format_size(r[6]),
                         format_size(r[4])] for r in rows],
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


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
       background: #fafafa; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 24px 48px; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 32px 0 4px; border-top: 1px solid #ddd;
     padding-top: 16px; }
.meta { color: #555; margin: 0 0 8px; } .caption { color: #444; max-width: 900px; }
.note { color: #8a5300; } code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 3px 7px; text-align: right; vertical-align: top;
         white-space: nowrap; }
td.fit { white-space: normal; text-align: left; min-width: 220px; }
th[colspan] { text-align: center; } .wide { overflow-x: auto; }
th { background: #f5f5f5; font-weight: 600; } td.name, th.name { text-align: left; }
.bad { color: #b00020; font-weight: 600; } .warn { color: #8a5300; }
#oomless-errors { color: #b00020; background: #fff0f0; border: 1px solid #b00020; padding: 8px; white-space: pre-wrap; }
nav a { margin-right: 14px; }
"""

# Installed before anything else draws: a failure to draw is shown on the page (and found by the tests),
# and data-rendered on <body> says how many figures finished drawing once all of them have.
_HARNESS = """
<pre id="oomless-errors" hidden></pre>
<script>
(function () {
  var errors = [];
  function show(message) {
    errors.push(message);
    var box = document.getElementById("oomless-errors");
    box.textContent = "This page failed to draw:\\n" + errors.join("\\n");
    box.hidden = false;
    document.body.dataset.errors = String(errors.length);
  }
  window.onerror = function (message, source, line) { show(message + " (" + source + ":" + line + ")"); };
  window.addEventListener("unhandledrejection", function (event) {
    var reason = event.reason;
    show("unhandled rejection: " + (reason && reason.stack ? reason.stack : reason));
  });
  var drawn = 0;
  window.oomlessDrawn = function () {
    drawn += 1;
    if (drawn === Number(document.body.dataset.figures)) { document.body.dataset.rendered = String(drawn); }
  };
})();
</script>
"""

_DONE_IF_NO_FIGURES = """
<script>
if (document.body.dataset.figures === "0") { document.body.dataset.rendered = "0"; }
</script>
"""


class _Page:
    """The page's parts in order; figures are added through plotly so that plotly.js is inlined once."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures = 0

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, fig: Any) -> None:
        import plotly.io as pio

        self.parts.append(pio.to_html(
            fig, full_html=False, include_plotlyjs=self.figures == 0, post_script="window.oomlessDrawn();",
            default_height=f"{int(fig.layout.height or 400)}px", config={"displaylogo": False, "responsive": True},
        ))
        self.figures += 1

    def render(self, title: str) -> str:
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f'<body data-figures="{self.figures}">\n{_HARNESS}\n<main>\n' + "\n".join(self.parts)
            + f"\n</main>\n{_DONE_IF_NO_FIGURES}\n</body></html>\n"
        )


def _outcome_table(outcomes: Counter[str]) -> str:
    order = ["ok", "failed", "memory-killed", "evicted", "infeasible", "invalid", "lost", "retry"]
    names = [o for o in order if o in outcomes] + sorted(o for o in outcomes if o not in order)
    head = "".join(f"<th>{html.escape(o)}</th>" for o in names)
    cells = "".join(
        f'<td class="{"bad" if o in MARKED and outcomes[o] else ""}">{outcomes[o]:,}</td>' for o in names
    )
    return f'<table class="outcomes"><tr><th class="name">attempts</th>{head}</tr>' \
           f'<tr><td class="name">{sum(outcomes.values()):,}</td>{cells}</tr></table>'


def _size_fit(rec: Any) -> str:
    fit = rec.by_size
    if fit is None:
        return ""
    request, limit = rec.for_size(fit.largest)
    return (
        f"peak ≈ {format_size(int(fit.base))} + {fit.slope:.3g} × input size ({fit.samples:,} attempts, inputs "
        f"{format_size(fit.smallest)}–{format_size(fit.largest)}); for {format_size(fit.largest)}: request "
        f"{format_size(request)}, limit {format_size(limit)}"
    )


def _recommendation_table(recs: Sequence[Any]) -> str:
    head = (
        "<tr><th class='name' rowspan='2'>task</th><th rowspan='2'>samples</th><th rowspan='2'>kills</th>"
        "<th rowspan='2'>confidence</th><th colspan='2'>current</th><th colspan='2'>recommended</th>"
        "<th colspan='2'>peak</th><th rowspan='2'>waste</th><th rowspan='2'>lack</th>"
        "<th class='name' rowspan='2'>by input size</th></tr>"
        "<tr><th>request</th><th>limit</th><th>request</th><th>limit</th><th>p95</th><th>max</th></tr>"
    )
    rows = []
    for r in recs:
        low = ' class="warn"' if r.confidence != "ok" else ""
        lack = ' class="bad"' if r.lack else ""
        current_request = "none" if r.current_request is None else format_size(r.current_request)
        rows.append(
            f"<tr><td class='name'>{html.escape(r.task_name)}</td><td>{r.samples:,}</td><td>{r.kills:,}</td>"
            f"<td{low}>{html.escape(r.confidence)}</td><td>{current_request}</td>"
            f"<td>{format_size(r.current_limit)}</td><td><b>{format_size(r.request)}</b></td>"
            f"<td><b>{format_size(r.limit)}</b></td><td>{format_size(r.p95_peak)}</td>"
            f"<td>{format_size(r.max_peak)}</td><td>{format_size(r.waste)}</td>"
            f"<td{lack}>{format_size(r.lack) if r.lack else '—'}</td>"
            f"<td class='fit'>{html.escape(_size_fit(r))}</td></tr>"
        )
    return f"<div class='wide'><table class='recommendations'>{head}{''.join(rows)}</table></div>"


def build_report(store: Store, out_path: str | os.PathLike[str], since: float | None = None,
                 progress: Progress | None = None, bucket: float | None = None) -> ReportSummary:
    """Write the HTML report of ``store`` (attempts started at or after ``since``) to ``out_path``.

    ``progress(done, total)`` is called every 10,000 rows read; ``total`` is
    twice the number of attempts (the store is read twice).
    ``bucket`` is the width of a memory chart's time bucket in seconds
    (default: a round width that gives at most 600 buckets); raises
    :class:`TooManyBuckets` when it would give more than :data:`MAX_BUCKETS`.
    The file is written whole or not at all (a temporary file, then renamed).
    """
    from .recommend import recommend_all

    url = redact(store.url)
    generated = time.time()
    # version 0: an empty database; counting would create the tables, and a report never writes
    count, first, last = store.span(since) if store.version() else (0, None, None)
    total = 2 * count

    def tick_at(offset: int) -> Callable[[int], None]:
        if progress is None:
            return lambda _: None
        return lambda done: progress(offset + done, total)

    page = _Page()
    page.add(f"<h1>oomless memory report</h1><p class='meta'>generated {_utc(generated)} UTC from "
             f"<code>{html.escape(url)}</code></p>")
    if first is None or last is None:
        period = f" since {_utc(since)} UTC" if since is not None else ""
        page.add(f"<p><b>No attempts recorded yet{period}.</b> A governed worker records every attempt when "
                 f"<code>oomless_history</code> is set in its Celery config (<code>'default'</code> or an "
                 f"SQLAlchemy URL such as this store's); then run <code>oomless report</code> again.</p>")
        return _write(out_path, page, url, Counter(), None, None, 0, 0, None, 0, 0, 0)
    grid = _grid(first, last, bucket)
    totals = _read(store.timeline(since), grid, tick_at(0))
    # The same rows and numbers as `oomless recommend` (a read of its own: it needs them oldest first).
    recs = recommend_all(store.samples(since=since), progress=tick_at(count))

    workers = {host for host, _ in totals.used}
    names = {name for _, name in totals.used} | set(totals.tasks)
    period = (f"{_utc(first)} to {_utc(last)} UTC ({_duration(last - first)})"
              + (f"; attempts started since {_utc(since)} UTC" if since is not None else ""))
    page.add(f"<p class='meta'>period: {period}; {len(workers):,} workers, {len(names):,} task names</p>")
    page.add(_outcome_table(totals.outcomes))
    page.add("<nav><a href='#memory'>memory over time</a><a href='#waste'>requested vs peak</a>"
             "<a href='#kills'>kills and evictions</a><a href='#recommendations'>recommendations</a></nav>")

    # 1. memory over time
    page.add("<h2 id='memory'>Memory over time per worker</h2>")
    page.add(
        f"<p class='caption'>For every {_width(grid.width)} bucket, the <b>sum of the peaks</b> of the attempts "
        f"running in it, stacked by task name. The history keeps <b>one peak per attempt</b>, not a continuous "
        f"sample: an attempt counts with its whole peak in every bucket it ran in, so this is an upper bound of "
        f"the memory in use, not a measured curve. An attempt without a measured peak counts with its request; "
        f"refused attempts (infeasible, invalid) never ran and are not counted. Per worker, the "
        f"{MAX_STACKED} task names with the most byte-seconds are drawn; the rest are summed as "
        f"<i>{OTHER}</i>.</p>"
    )
    stacks = totals.stacks()
    if len(workers) > len(stacks):
        page.add(f"<p class='note'>{len(workers) - len(stacks):,} more workers ran tasks in this period; "
                 f"the {len(stacks)} with the most byte-seconds are drawn.</p>")
    if stacks:
        largest = max(max(map(sum, zip(*values, strict=True)), default=0.0) for _, values in stacks.values())
        divisor, unit = _scale(largest)
        x, colours = grid.edges(), _colours(totals.byte_seconds())
        for host, (labels, values) in stacks.items():
            page.figure(_memory_figure(_worker(host), labels, values, x, colours, divisor, unit))
    else:
        page.add("<p>No attempt in this period ran with a known peak or request.</p>")

    # 2. requested vs peak
    page.add("<h2 id='waste'>Requested vs peak per task name</h2>")
    page.add(
        "<p class='caption'>Per task name, over its measured attempts (ok and failed): the mean request, the "
        "95th percentile and the maximum of the peaks (p95 to within 0.4 %), and in the hover the <b>waste</b>: "
        "the mean of request − peak, memory reserved in the budget that the task never used. Ordered by total "
        f"waste; at most {MAX_BARS} names.</p>"
    )
    if totals.tasks:
        fig, left_out = _waste_figure(totals.tasks)
        page.figure(fig)
        if left_out:
            page.add(f"<p class='note'>{left_out:,} more task names waste less; they are in the "
                     f"recommendations below.</p>")
    else:
        page.add("<p>No attempt in this period ended with a measured peak.</p>")

    # 3. kills, evictions, refusals
    page.add("<h2 id='kills'>Kills and evictions on the timeline</h2>")
    page.add(
        "<p class='caption'>Each <b>memory-killed</b> attempt (over its limit), <b>evicted</b> attempt (stopped "
        "under its limit because the worker ran out of memory; requeued) and <b>infeasible</b> request (larger "
        "than the worker's budget; refused), at its start time, per worker. Hover for the task, its id, limit "
        "and peak.</p>"
    )
    marks = totals.marks
    if marks:
        page.figure(_marks_figure(marks))
        if totals.marked > len(marks):
            page.add(f"<p class='note'>The newest {len(marks):,} are drawn; {totals.marked - len(marks):,} "
                     f"older ones are left out (the totals above count them all). Use --since for an earlier "
                     f"window.</p>")
    else:
        page.add("<p>None in this period.</p>")

    # 4. recommendations
    page.add("<h2 id='recommendations'>Recommendations</h2>")
    page.add(
        "<p class='caption'>What history says each task name should declare as <code>memory=</code>: request = "
        "p95 of the peaks × 1.15, limit = max × 1.2 (a memory kill counts as a peak above its limit). "
        "<i>current</i> is the newest attempt's spec; <b>lack</b>: how far the current limit is below the "
        "recommended one (tasks will be killed); confidence is low under 20 samples. See "
        "<code>oomless.history.recommend</code>.</p>"
    )
    page.add(_recommendation_table(recs) if recs else "<p>No task name has a measured attempt yet.</p>")
    return _write(out_path, page, url, totals.outcomes, first, last, len(workers), len(names), grid.width,
                  len(marks), totals.marked - len(marks), len(recs))


def _write(out_path: str | os.PathLike[str], page: _Page, url: str, outcomes: Counter[str], first: float | None,
           last: float | None, workers: int, names: int, bucket: float | None, markers: int, left_out: int,
           recommendations: int) -> ReportSummary:
    text = page.render("oomless memory report")
    path = os.path.abspath(os.fspath(out_path))
    write_atomic(path, text, mode=0o644)
    return ReportSummary(
        path=path, size=os.path.getsize(path), store=url, attempts=sum(outcomes.values()), outcomes=dict(outcomes),
        first=first, last=last, workers=workers, task_names=names, figures=page.figures, bucket=bucket,
        markers=markers, markers_left_out=left_out, recommendations=recommendations,
    )
