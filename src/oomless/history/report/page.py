"""The report's HTML page: one self-contained file, its sections and their captions, around the figures.

:func:`report_page` lays out what :mod:`.aggregate` counted and :mod:`.charts` drew, with the
recommendations (:func:`oomless.history.recommend.recommend_all`) as a table; :func:`empty_page`
says that nothing was recorded yet and how to record.  plotly.js is inlined once, with the first
figure, so the page opens with no network.  A small script on the page shows any failure to draw in
a red box and marks ``<body data-rendered>`` once every figure is drawn (the tests read both).

Not here: the numbers (:mod:`.aggregate`), the figures (:mod:`.charts`), reading the store and
writing the file (:mod:`.build`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from ... import outcomes
from ...units import format_size
from ..recommend import Recommendation
from .aggregate import MARKED, MAX_BARS, MAX_STACKED, OTHER, ReportData
from .charts import marks_figure, memory_figures, waste_figure
from .text import bucket_width, duration, utc

__all__ = ["Page", "report_page", "empty_page"]

TITLE = "oomless memory report"

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


class Page:
    """The page's parts in order; figures are added through plotly so that plotly.js is inlined once."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures = 0

    def add(self, markup: str) -> None:
        """Append ``markup`` (already escaped)."""
        self.parts.append(markup)

    def figure(self, fig: Any) -> None:
        """Append a plotly figure (plotly.js itself with the first one)."""
        import plotly.io as pio

        self.parts.append(pio.to_html(
            fig, full_html=False, include_plotlyjs=self.figures == 0, post_script="window.oomlessDrawn();",
            default_height=f"{int(fig.layout.height or 400)}px", config={"displaylogo": False, "responsive": True},
        ))
        self.figures += 1

    def html(self) -> str:
        """The whole page."""
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(TITLE)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f'<body data-figures="{self.figures}">\n{_HARNESS}\n<main>\n' + "\n".join(self.parts)
            + f"\n</main>\n{_DONE_IF_NO_FIGURES}\n</body></html>\n"
        )


def _outcome_table(counts: dict[str, int]) -> str:
    order = [outcomes.OK, outcomes.FAILED, outcomes.MEMORY_KILLED, outcomes.EVICTED, outcomes.INFEASIBLE,
             outcomes.INVALID, outcomes.LOST, outcomes.RETRY]
    names = [o for o in order if o in counts] + sorted(o for o in counts if o not in order)
    head = "".join(f"<th>{html.escape(o)}</th>" for o in names)
    cells = "".join(
        f'<td class="{"bad" if o in MARKED and counts[o] else ""}">{counts[o]:,}</td>' for o in names
    )
    return f'<table class="outcomes"><tr><th class="name">attempts</th>{head}</tr>' \
           f'<tr><td class="name">{sum(counts.values()):,}</td>{cells}</tr></table>'


def _size_fit(rec: Recommendation) -> str:
    fit = rec.by_size
    if fit is None:
        return rec.size_note or ""
    request, limit = rec.for_size(fit.largest)
    return (
        f"peak ≈ {fit.describe()}, R² {fit.r2:.2f} ({fit.samples:,} attempts, inputs "
        f"{format_size(fit.smallest)}–{format_size(fit.largest)}); for {format_size(fit.largest)}: request "
        f"{format_size(request)}, limit {format_size(limit)}"
    )


def _recommendation_table(recs: Sequence[Recommendation]) -> str:
    head = (
        "<tr><th class='name' rowspan='2'>task</th><th rowspan='2'>samples</th><th rowspan='2'>kills</th>"
        "<th rowspan='2'>confidence</th><th colspan='2'>current</th><th colspan='2'>recommended</th>"
        "<th colspan='2'>peak</th><th rowspan='2'>waste</th><th rowspan='2'>lack</th>"
        "<th class='name' rowspan='2'>by input size</th></tr>"
        "<tr><th>request</th><th>limit</th><th>request</th><th>limit</th><th>median</th><th>max</th></tr>"
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
            f"<td><b>{format_size(r.limit)}</b></td><td>{format_size(r.median_peak)}</td>"
            f"<td>{format_size(r.max_peak)}</td><td>{format_size(r.waste)}</td>"
            f"<td{lack}>{format_size(r.lack) if r.lack else '—'}</td>"
            f"<td class='fit'>{html.escape(_size_fit(r))}</td></tr>"
        )
    return f"<div class='wide'><table class='recommendations'>{head}{''.join(rows)}</table></div>"




def _header(page: Page, store_url: str, generated: float) -> None:
    page.add(f"<h1>{TITLE}</h1><p class='meta'>generated {utc(generated)} UTC from "
             f"<code>{html.escape(store_url)}</code></p>")


def empty_page(store_url: str, generated: float, since: float | None) -> Page:
    """The page of a store with no attempts (since ``since``): what to set to record some."""
    page = Page()
    _header(page, store_url, generated)
    period = f" since {utc(since)} UTC" if since is not None else ""
    page.add(f"<p><b>No attempts recorded yet{period}.</b> A governed worker records every attempt when "
             f"<code>oomless_history</code> is set in its Celery config (<code>'default'</code> or an "
             f"SQLAlchemy URL such as this store's); then run <code>oomless report</code> again.</p>")
    return page


def report_page(data: ReportData, recs: Sequence[Recommendation], store_url: str, generated: float,
                first: float, last: float, since: float | None) -> Page:
    """The page of ``data`` and ``recs``: attempts started from ``first`` to ``last`` (``since`` asked)."""
    page = Page()
    _header(page, store_url, generated)
    period = (f"{utc(first)} to {utc(last)} UTC ({duration(last - first)})"
              + (f"; attempts started since {utc(since)} UTC" if since is not None else ""))
    page.add(f"<p class='meta'>period: {period}; {data.workers:,} workers, {data.task_names:,} task names</p>")
    page.add(_outcome_table(data.outcomes))
    page.add("<nav><a href='#memory'>memory over time</a><a href='#waste'>requested vs peak</a>"
             "<a href='#kills'>kills and evictions</a><a href='#recommendations'>recommendations</a></nav>")
    _memory_section(page, data)
    _waste_section(page, data)
    _marks_section(page, data)
    _recommendations_section(page, recs)
    return page


def _memory_section(page: Page, data: ReportData) -> None:
    page.add("<h2 id='memory'>Memory over time per worker</h2>")
    page.add(
        f"<p class='caption'>For every {bucket_width(data.grid.width)} bucket, the <b>sum of the peaks</b> of the "
        f"attempts running in it, stacked by task name. The history keeps <b>one peak per attempt</b>, not a "
        f"continuous sample: an attempt counts with its whole peak in every bucket it ran in, so this is an upper "
        f"bound of the memory in use, not a measured curve. An attempt without a measured peak counts with its "
        f"request; refused attempts (infeasible, invalid) never ran and are not counted. Per worker, the "
        f"{MAX_STACKED} task names with the most byte-seconds are drawn; the rest are summed as "
        f"<i>{OTHER}</i>.</p>"
    )
    if data.workers > len(data.memory):
        page.add(f"<p class='note'>{data.workers - len(data.memory):,} more workers ran tasks in this period; "
                 f"the {len(data.memory)} with the most byte-seconds are drawn.</p>")
    if data.memory:
        for fig in memory_figures(data):
            page.figure(fig)
    else:
        page.add("<p>No attempt in this period ran with a known peak or request.</p>")


def _waste_section(page: Page, data: ReportData) -> None:
    page.add("<h2 id='waste'>Requested vs peak per task name</h2>")
    page.add(
        "<p class='caption'>Per task name, over its measured attempts (ok and failed): the mean request, the "
        "95th percentile and the maximum of the peaks (p95 to within 0.4 %), and in the hover the <b>waste</b>: "
        "the mean of request − peak, memory reserved in the budget that the task never used. Ordered by total "
        f"waste; at most {MAX_BARS} names.</p>"
    )
    if data.peaks:
        page.figure(waste_figure(data.peaks))
        if data.peaks_left_out:
            page.add(f"<p class='note'>{data.peaks_left_out:,} more task names waste less; they are in the "
                     f"recommendations below.</p>")
    else:
        page.add("<p>No attempt in this period ended with a measured peak.</p>")


def _marks_section(page: Page, data: ReportData) -> None:
    page.add("<h2 id='kills'>Kills and evictions on the timeline</h2>")
    page.add(
        "<p class='caption'>Each <b>memory-killed</b> attempt (over its limit), <b>evicted</b> attempt (stopped "
        "under its limit because the worker ran out of memory; requeued) and <b>infeasible</b> request (larger "
        "than the worker's budget; refused), at its start time, per worker. Hover for the task, its id, limit "
        "and peak.</p>"
    )
    if data.marks:
        page.figure(marks_figure(data.marks))
        if data.marks_left_out:
            page.add(f"<p class='note'>The newest {len(data.marks):,} are drawn; {data.marks_left_out:,} "
                     f"older ones are left out (the totals above count them all). Use --since for an earlier "
                     f"window.</p>")
    else:
        page.add("<p>None in this period.</p>")


def _recommendations_section(page: Page, recs: Sequence[Recommendation]) -> None:
    page.add("<h2 id='recommendations'>Recommendations</h2>")
    page.add(
        "<p class='caption'>What history says each task name should declare as <code>memory=</code>: request = "
        "p95 of the peaks × 1.15, limit = max × 1.2 (a memory kill counts as a peak above its limit). "
        "<i>current</i> is the newest attempt's spec; <b>lack</b>: how far the current limit is below the "
        "recommended one (tasks will be killed); confidence is low under 20 samples. See "
        "<code>oomless.history.recommend</code>.</p>"
    )
    page.add(_recommendation_table(recs) if recs else "<p>No task name has a measured attempt yet.</p>")
