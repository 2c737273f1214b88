"""What ``oomless top`` draws: one frame from the workers' ``oomless_status`` replies (a pure function).

:func:`render` turns the replies of one poll into rich renderables; it reads
nothing and sends nothing, so a frame can be drawn from replies saved with
``oomless top --once --json``.  Polling and the command are in :mod:`oomless.cli.top`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import outcomes
from ..units import format_size

__all__ = ["render", "split_workers", "COUNTS", "NEAR_LIMIT"]

#: Outcome counters always shown in a worker's header, in this order; others appear once non-zero.
COUNTS = (outcomes.OK, outcomes.FAILED, outcomes.MEMORY_KILLED, outcomes.EVICTED, outcomes.ESCALATED)

#: Share of a task's limit above which its "% limit" cell turns red: the next allocation may kill it.
NEAR_LIMIT = 0.9

_COUNT_STYLE = {
    outcomes.FAILED: "red", outcomes.MEMORY_KILLED: "bold red",
    outcomes.EVICTED: "yellow", outcomes.ESCALATED: "yellow",
}
_BAR_WIDTH = 30
_ID_CHARS = 8


def split_workers(replies: list[dict[str, Any]]) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
    """Split replies into governed workers (node, status) and the others (node, why not), each sorted by node."""
    governed: list[tuple[str, dict[str, Any]]] = []
    others: list[tuple[str, str]] = []
    for reply in replies:
        for node, body in reply.items():
            if isinstance(body, dict) and body.get("governed") is True:
                governed.append((node, body))
            elif isinstance(body, dict) and "error" in body:
                # kombu answers an unknown command with {"error": "KeyError('oomless_status')"}.
                others.append((node, f"no oomless in its app (it answered {body['error']})"))
            elif isinstance(body, dict) and body.get("governed") is False:
                others.append((node, "oomless is installed but this worker runs no governor"))
            else:
                others.append((node, f"unexpected answer {str(body)[:80]}"))
    return sorted(governed, key=lambda w: w[0]), sorted(others)


def _duration(seconds: float | None) -> str:
    """``4.2 s``, ``3m07s``, ``2h05m``: short enough for a table cell."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _size(n_bytes: int | None) -> str:
    return "–" if n_bytes is None else format_size(n_bytes)


def _bar(label: str, part: int, budget: int) -> Table:
    share = part / budget if budget > 0 else 0.0
    style = "red" if share > NEAR_LIMIT else "yellow" if share > 0.75 else "green"
    row = Table.grid(padding=(0, 1))
    row.add_column(width=8, no_wrap=True)
    row.add_column(width=_BAR_WIDTH)
    row.add_column(no_wrap=True)
    row.add_row(
        label,
        ProgressBar(total=max(budget, 1), completed=min(part, budget), width=_BAR_WIDTH,
                    complete_style=style, finished_style=style),
        f"{format_size(part)} of {format_size(budget)} ({share * 100:.0f}%)",
    )
    return row


def _header(node: str, status: dict[str, Any]) -> Group:
    who = Text()
    who.append(node, style="bold")
    admission = "admission on" if status.get("admission") else "admission off"
    who.append(f"  {status.get('mode', '?')} · {status.get('slots', '?')} slots · {admission} · "
               f"pid {status.get('pid', '?')}")
    counts = dict(status.get("counts") or {})
    names = list(COUNTS) + sorted(k for k, v in counts.items() if k not in COUNTS and v)
    outcomes = Text()
    for i, name in enumerate(names):
        n = int(counts.get(name, 0))
        outcomes.append(("  " if i else "") + f"{name} {n}", style=_COUNT_STYLE.get(name, "") if n else "")
    return Group(who, outcomes)


def _running(status: dict[str, Any]) -> RenderableType:
    tasks = status.get("running") or []
    if not tasks:
        return Text(f"running: none (0 of {status.get('slots', '?')} slots)", style="dim")
    table = Table(title=f"running ({len(tasks)} of {status.get('slots', '?')} slots)", title_justify="left",
                  box=None, header_style="bold", pad_edge=False)
    for name, justify in (("id", "left"), ("task", "left"), ("used", "right"), ("request", "right"),
                          ("limit", "right"), ("% limit", "right"), ("runtime", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for task in tasks:
        used, limit = task.get("used"), task.get("limit")
        share = Text("–")
        if used is not None and limit:
            share = Text(f"{used / limit * 100:.0f}%", style="bold red" if used > NEAR_LIMIT * limit else "")
        table.add_row(
            escape(str(task.get("id") or "?")[:_ID_CHARS]),
            escape(str(task.get("name") or "?")),
            _size(used),
            _size(task.get("request")),
            format_size(limit),  # None reads "no limit"
            share,
            _duration(task.get("runtime")),
        )
    return table


def _waiting(status: dict[str, Any]) -> RenderableType:
    tasks = status.get("waiting") or []
    if not tasks:
        return Text("waiting: none", style="dim")
    table = Table(title=f"waiting ({len(tasks)})", title_justify="left", box=None, header_style="bold",
                  pad_edge=False)
    for name, justify in (("id", "left"), ("task", "left"), ("request", "right"), ("waited", "right"),
                          ("room", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for task in tasks:
        table.add_row(
            escape(str(task.get("id") or "?")[:_ID_CHARS]),
            escape(str(task.get("name") or "?")),
            _size(task.get("request")),
            _duration(task.get("waited")),
            Text("fits", style="green") if task.get("fits") else Text("no room", style="yellow"),
        )
    return table


def _worker(node: str, status: dict[str, Any]) -> Panel:
    budget = int(status.get("budget") or 0)
    parts: list[RenderableType] = [
        _header(node, status),
        _bar("reserved", int(status.get("reserved") or 0), budget),
        _bar("used", int(status.get("used") or 0), budget),
        *([Text(str(status["breakdown"]), style="dim")] if status.get("breakdown") else []),
        _running(status),
        _waiting(status),
    ]
    return Panel(Group(*parts), expand=True, padding=(0, 1))


def render(
    replies: list[dict[str, Any]],
    *,
    source: str,
    timeout: float,
    last_answer: float | None = None,
    interval: float | None = None,
) -> RenderableType:
    """One frame of ``oomless top`` for the replies of one poll.

    ``replies`` is what :func:`poll` returned (``[{nodename: body}, ...]``);
    ``source`` names the broker in messages (pass it with its password
    redacted); ``timeout`` is how long the poll waited; ``last_answer`` is the
    epoch time any worker last answered (shown in the footer; defaults to the
    newest ``at`` in the replies); ``interval`` is the live refresh period
    (None for a single frame).
    """
    governed, others = split_workers(replies)
    parts: list[RenderableType] = [_worker(node, status) for node, status in governed]
    for node, why in others:
        parts.append(Text.assemble((node, "bold"), f": not governed: {why}"))
    if not governed:
        parts.insert(0, Text(
            f"no governed worker answered within {float(timeout)} s on {source}. Workers answer through the "
            "broker: check that they use this broker (and virtual host), are governed (oomless.install(app), or "
            "oomless's CELERY_CONFIG on Airflow) and have remote control enabled (worker_enable_remote_control, "
            "on by default). See docs/top.md.",
            style="bold yellow",
        ))
    if last_answer is None:
        stamps = [float(s["at"]) for _, s in governed if isinstance(s.get("at"), (int, float))]
        last_answer = max(stamps) if stamps else None
    when = "never" if last_answer is None else datetime.fromtimestamp(last_answer).strftime("%H:%M:%S")
    answered = len(governed) + len(others)
    footer = (f"last answer {when} · {answered} worker{'s' if answered != 1 else ''} answered "
              f"({len(governed)} governed) on {source}")
    if interval is not None:
        footer += f" · every {interval:g} s · Ctrl-C quits"
    parts.append(Text(footer, style="dim"))
    return Group(*parts)
