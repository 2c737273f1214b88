"""The pages of oomless's Airflow UI plugin, as HTML (no I/O: recorded tries in, a page out).

Four pages, each shown by Airflow's UI in a frame of its own (see :mod:`.ui`):

* a task instance's tries: request, limit, peak and outcome of each, with the
  sentence a kill or a refusal got, and the escalation ladder across tries;
* a task's peaks over its runs (an inline SVG chart), its limits, and what
  ``oomless recommend`` says it should declare;
* a DAG's tasks: sizes, waste, kills;
* every DAG with recorded tries.

Every value from the history (DAG, task and run ids) is escaped: the ids are
whatever DAG authors wrote.
"""

from __future__ import annotations

import html
import statistics
import time
from collections.abc import Iterable, Sequence
from urllib.parse import urlencode

from .. import outcomes
from ..history.attempt import Attempt
from ..history.recommend import Recommendation
from ..units import format_size

__all__ = ["ti_page", "task_page", "dag_page", "index_page", "unavailable", "outcome_sentence"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px;color:#1a202c;background:#fff}
h1{font-size:18px;margin:0 0 4px} h2{font-size:15px;margin:20px 0 6px} .sub{color:#4a5568;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0} th,td{padding:4px 10px;border-bottom:1px solid #e2e8f0;text-align:left}
th{font-weight:600;color:#4a5568} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#276749} .memory-killed,.kernel-oom-killed{color:#c53030;font-weight:600} .evicted{color:#b7791f}
.infeasible,.invalid{color:#6b46c1;font-weight:600} .failed,.lost{color:#c05621}
.ladder span{display:inline-block;padding:2px 8px;margin:2px;border-radius:4px;background:#edf2f7}
.ladder span.memory-killed{background:#fed7d7} .ladder span.ok{background:#c6f6d5}
.note{color:#4a5568;font-size:13px} a{color:#2b6cb0}
svg text{font:11px system-ui,sans-serif;fill:#4a5568}
"""

_WORDS = {
    outcomes.OK: "ok",
    outcomes.MEMORY_KILLED: "memory-killed",
    outcomes.EVICTED: "evicted",
    outcomes.INFEASIBLE: "refused",
    outcomes.INVALID: "refused",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _size(value: int | None) -> str:
    return "–" if value is None else format_size(value)


def _when(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def _link(path: str, text: str, **query: object) -> str:
    return f"<a href='{_e(path)}?{_e(urlencode(query))}'>{_e(text)}</a>"


def outcome_sentence(a: Attempt) -> str:
    """What happened to one try, in the words its log used."""
    peak, limit = _size(a.peak_rss), _size(a.limit)
    if a.outcome == outcomes.OK:
        return f"ok: peak {peak}" + (f" of its limit of {limit}" if a.limit else "")
    if a.outcome == outcomes.MEMORY_KILLED:
        return f"memory-killed: its task process tree exceeded its memory limit of {limit} (peak {peak})"
    if a.outcome == outcomes.EVICTED:
        return (f"evicted for node memory pressure: it used {peak} against a request of {_size(a.request)}, "
                f"within its limit")
    if a.outcome == outcomes.INFEASIBLE:
        return f"refused before it ran: a limit of {limit} is more than the worker's whole budget"
    if a.outcome == outcomes.INVALID:
        return "refused before it ran: its memory declaration is malformed (see the try's log)"
    if a.outcome == outcomes.KERNEL_OOM_KILLED:
        return "killed by the kernel's OOM killer before oomless acted"
    return f"{a.outcome} (not for memory): peak {peak}"


def _ladder(tries: Sequence[Attempt]) -> str:
    steps = []
    for a in tries:
        word = _WORDS.get(a.outcome, a.outcome)
        steps.append(f"<span class='{_e(a.outcome)}'>try {_e(a.try_number)}: {_e(_size(a.limit))} → {_e(word)}</span>")
    return f"<div class='ladder'>{' '.join(steps)}</div>"


def _rec_line(rec: Recommendation | None) -> str:
    if rec is None:
        return "<p class='note'>No recommendation yet: no try of this task has been measured.</p>"
    return (f"<p>Recommended: <b>request {_e(_size(rec.request))}, limit {_e(_size(rec.limit))}</b> "
            f"(from {rec.samples} tries: median peak {_e(_size(rec.median_peak))}, largest {_e(_size(rec.max_peak))}, "
            f"{rec.kills} memory kills; <code>oomless recommend --format airflow</code>).</p>")


def ti_page(dag_id: str, run_id: str, task_id: str, map_index: int, tries: Sequence[Attempt],
            rec: Recommendation | None, base: str) -> str:
    """One task instance: each try's memory and outcome, and the escalation across them."""
    where = f"{dag_id}.{task_id}" + (f"[{map_index}]" if map_index >= 0 else "")
    head = (f"<h1>Memory of {_e(where)}</h1><p class='sub'>run {_e(run_id)} · "
            f"{_link(base + 'task', 'all runs of this task', dag_id=dag_id, task_id=task_id)} · "
            f"{_link(base + 'dag', 'the DAG', dag_id=dag_id)}</p>")
    if not tries:
        return _page(where, head + "<p>No try of this task instance is in oomless's history (yet): it is written "
                                   "about once a second by the worker that ran it, if [oomless] history is set.</p>")
    rows = "".join(
        f"<tr><td class='n'>{_e(a.try_number)}</td><td class='{_e(a.outcome)}'>{_e(_WORDS.get(a.outcome, a.outcome))}"
        f"</td><td class='n'>{_e(_size(a.request))}</td><td class='n'>{_e(_size(a.limit))}</td>"
        f"<td class='n'>{_e(_size(a.peak_rss))}</td>"
        f"<td class='n'>{_e(f'{100 * a.peak_rss / a.limit:.0f} %' if a.peak_rss and a.limit else '–')}</td>"
        f"<td>{_e(outcome_sentence(a))}</td><td>{_e(a.worker_host or '–')} ({_e(a.mode or '–')})</td>"
        f"<td>{_e(_when(a.started_at))}</td></tr>"
        for a in tries
    )
    table = ("<table><tr><th>try</th><th>outcome</th><th>request</th><th>limit</th><th>peak</th><th>of limit</th>"
             f"<th>what happened</th><th>worker (mode)</th><th>started</th></tr>{rows}</table>")
    return _page(where, head + "<h2>Tries</h2>" + table + "<h2>Escalation</h2>" + _ladder(tries)
                 + "<h2>This task</h2>" + _rec_line(rec))


def _chart(tries: Sequence[Attempt], rec: Recommendation | None, width: int = 720, height: int = 240) -> str:
    """Each try's peak over time (dots, by outcome), its limit (ticks), and the recommendation (lines)."""
    points = [a for a in tries if a.peak_rss is not None or a.limit is not None]
    if not points:
        return "<p class='note'>No measured try to draw.</p>"
    top = max([a.peak_rss or 0 for a in points] + [a.limit or 0 for a in points]
              + ([rec.limit] if rec is not None else [])) * 1.1 or 1
    t0, t1 = points[0].started_at, points[-1].started_at
    left, right, pad = 64, width - 12, 16
    first, last = left + 12, right - 190  # the tries; the recommendation's labels go on the right

    def x(t: float) -> float:
        return first + (last - first) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.5)

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    colours = {outcomes.OK: "#38a169", outcomes.MEMORY_KILLED: "#e53e3e", outcomes.EVICTED: "#d69e2e"}
    parts = [f"<svg width='{width}' height='{height}' role='img' aria-label='peaks over runs'>",
             f"<line x1='{left}' y1='{y(0):.1f}' x2='{right}' y2='{y(0):.1f}' stroke='#cbd5e0'/>"]
    for frac in (0.25, 0.5, 0.75, 1.0):
        v = top / 1.1 * frac
        parts.append(f"<text x='4' y='{y(v) + 4:.1f}'>{_e(format_size(int(v)))}</text>"
                     f"<line x1='{left}' y1='{y(v):.1f}' x2='{right}' y2='{y(v):.1f}' stroke='#edf2f7'/>")
    if rec is not None:
        lines = ((rec.limit, "recommended limit", "6,3"), (rec.request, "recommended request", "2,3"))
        for value, label, dash in lines:
            parts.append(f"<line class='rec' x1='{left}' y1='{y(value):.1f}' x2='{right}' y2='{y(value):.1f}' "
                         f"stroke='#3182ce' stroke-dasharray='{dash}'/><text x='{last + 12}' y='{y(value) - 4:.1f}'>"
                         f"{label} {_e(format_size(value))}</text>")
    for a in points:
        cx = x(a.started_at)
        if a.limit is not None:
            parts.append(f"<line class='limit' x1='{cx - 5:.1f}' y1='{y(a.limit):.1f}' x2='{cx + 5:.1f}' "
                         f"y2='{y(a.limit):.1f}' stroke='#718096' stroke-width='2'/>")
        if a.peak_rss is not None:
            parts.append(f"<circle class='peak {_e(a.outcome)}' cx='{cx:.1f}' cy='{y(a.peak_rss):.1f}' r='4' "
                         f"fill='{colours.get(a.outcome, '#a0aec0')}'><title>{_e(a.run_id)} try {_e(a.try_number)}: "
                         f"{_e(outcome_sentence(a))}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def task_page(dag_id: str, task_id: str, tries: Sequence[Attempt], rec: Recommendation | None, base: str) -> str:
    """One task across its runs: a chart of its peaks and limits, and what it should declare."""
    name = f"{dag_id}.{task_id}"
    kills = sum(a.outcome == outcomes.MEMORY_KILLED for a in tries)
    head = (f"<h1>Memory of {_e(name)}</h1><p class='sub'>{len(tries)} tries recorded, {kills} memory-killed · "
            f"{_link(base + 'dag', 'the DAG', dag_id=dag_id)}</p>")
    legend = ("<p class='note'>Dots: each try's peak (green ok, red memory-killed, amber evicted); grey ticks: its "
              "limit; blue lines: the recommended request and limit.</p>")
    return _page(name, head + _rec_line(rec) + _chart(tries, rec) + legend)


def _waste(tries: Iterable[Attempt]) -> int | None:
    unused = [a.request - a.peak_rss for a in tries
              if a.outcome == outcomes.OK and a.request and a.peak_rss is not None and a.request > a.peak_rss]
    return int(statistics.fmean(unused)) if unused else None


def dag_page(dag_id: str, tries: Sequence[Attempt], recs: dict[str, Recommendation], base: str) -> str:
    """A DAG's tasks: their declared and recommended sizes, what they waste, their kills."""
    by_task: dict[str, list[Attempt]] = {}
    for a in tries:
        by_task.setdefault(a.af_task_id or "?", []).append(a)
    rows = []
    for task_id, mine in sorted(by_task.items()):
        rec = recs.get(task_id)
        peaks = sorted(a.peak_rss for a in mine if a.peak_rss is not None)
        last = mine[-1]
        rows.append(
            f"<tr><td>{_link(base + 'task', task_id, dag_id=dag_id, task_id=task_id)}</td>"
            f"<td class='n'>{len(mine)}</td>"
            f"<td class='n memory-killed'>{sum(a.outcome == outcomes.MEMORY_KILLED for a in mine) or ''}</td>"
            f"<td class='n'>{sum(a.outcome == outcomes.EVICTED for a in mine) or ''}</td>"
            f"<td class='n'>{_e(_size(peaks[-1] if peaks else None))}</td>"
            f"<td class='n'>{_e(_size(last.request))} / {_e(_size(last.limit))}</td>"
            f"<td class='n'>{_e(_size(rec.request) if rec else '–')} / {_e(_size(rec.limit) if rec else '–')}</td>"
            f"<td class='n'>{_e(_size(_waste(mine)))}</td></tr>"
        )
    table = ("<table><tr><th>task</th><th>tries</th><th>memory kills</th><th>evictions</th><th>largest peak</th>"
             "<th>latest request / limit</th><th>recommended</th><th>unused request per ok try</th></tr>"
             + "".join(rows) + "</table>")
    head = (f"<h1>Memory of DAG {_e(dag_id)}</h1><p class='sub'>{len(tries)} tries recorded · "
            f"<a href='{_e(base)}'>all DAGs</a></p>")
    return _page(dag_id, head + table)


def index_page(dags: Sequence[tuple[str, int, int, float]], base: str, where: str) -> str:
    """Every DAG with recorded tries the user may read."""
    rows = "".join(
        f"<tr><td>{_link(base + 'dag', dag_id, dag_id=dag_id)}</td><td class='n'>{tries}</td>"
        f"<td class='n memory-killed'>{kills or ''}</td><td>{_e(_when(latest))}</td></tr>"
        for dag_id, tries, kills, latest in dags
    )
    body = (f"<h1>oomless: memory of Airflow tasks</h1><p class='sub'>from {_e(where)}</p>"
            "<table><tr><th>DAG</th><th>tries</th><th>memory kills</th><th>latest try</th></tr>" + rows + "</table>")
    if not dags:
        body += "<p>No Airflow try is recorded yet.</p>"
    return _page("oomless", body)


def unavailable(why: str) -> str:
    """The page when the history cannot be read, saying why."""
    return _page("oomless", f"<h1>oomless: memory of Airflow tasks</h1><p>{_e(why)}.</p>")
