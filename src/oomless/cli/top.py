"""``oomless top``: a live terminal view of the governed workers of a Celery app.

Every ``--interval`` seconds ``top`` broadcasts the ``oomless_status``
remote-control command (:mod:`oomless.celery.control`) through the app's
broker, waits ``--timeout`` seconds for answers, and draws one block per
worker: mode, slots and outcome counts; reserved and used memory against the
budget; the running tasks with their live memory; the tasks waiting for room.

Polling (:func:`poll`) is kept apart from drawing (:func:`render`, a pure
function of the replies), so a frame can be drawn from replies saved with
``--once --json``.

Not covered here: what happened before (the history store, ``oomless
report``), and workers that cannot answer: remote control disabled
(``worker_enable_remote_control = False``) or connected to another broker or
virtual host.  A worker without oomless answers with an error and is listed
as not governed.  Usage: docs/top.md.

Exit status of ``--once``: 0 when at least one governed worker answered, 1
when none did, 2 when the app cannot be loaded or the broker cannot be
reached.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import outcomes
from ..units import format_size
from ..urls import redact
from .common import AppNotLoaded, app_option, broker_option, json_option, load_app

__all__ = ["top", "poll", "render", "COUNTS"]

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


class _Unavailable(Exception):
    """The app cannot be loaded or the broker cannot be reached; the message says why."""


def poll(app: Any, timeout: float, destination: list[str] | None = None) -> list[dict[str, Any]]:
    """Ask every worker of ``app`` (or only the ``destination`` node names) for its ``oomless_status``.

    Returns the raw replies, one ``{nodename: body}`` per worker that answered
    within ``timeout`` seconds.  With ``destination``, returns as soon as all of
    them answered.
    """
    from ..celery.control import COMMAND

    replies = app.control.broadcast(
        COMMAND, reply=True, timeout=timeout, destination=destination or None,
        limit=len(destination) if destination else None,
    )
    return list(replies or [])


def _workers(replies: list[dict[str, Any]]) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
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
    governed, others = _workers(replies)
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


def _load(app_spec: str | None, broker: str | None) -> Any:
    """The Celery app to broadcast with: ``-A`` imported as ``celery -A`` does, ``-b`` overriding its broker."""
    from celery import Celery

    if app_spec is None:
        return Celery("oomless-top", broker=broker, set_as_current=False)
    try:
        app = load_app(app_spec)
    except AppNotLoaded as exc:
        raise _Unavailable(str(exc)) from exc
    if broker is not None:
        app.conf.broker_url = broker
    return app


def _source(app: Any) -> str:
    url = app.conf.broker_url
    if not url:
        with app.connection_for_write() as conn:
            url = conn.as_uri()
    return redact(url if isinstance(url, str) else ";".join(url))


def _poll_or_say(app: Any, timeout: float, destination: list[str] | None, source: str) -> list[dict[str, Any]]:
    from kombu.exceptions import OperationalError

    try:
        return poll(app, timeout, destination)
    except (OperationalError, OSError) as exc:
        raise _Unavailable(f"cannot reach the broker {source}: {exc}") from exc


def _once(app: Any, timeout: float, destination: list[str] | None, source: str, as_json: bool) -> int:
    replies = _poll_or_say(app, timeout, destination, source)
    governed, _ = _workers(replies)
    if as_json:
        click.echo(json.dumps(replies))
        if not governed:
            click.echo(f"oomless top: no governed worker answered within {float(timeout)} s on {source}", err=True)
    else:
        Console(highlight=False).print(render(replies, source=source, timeout=timeout))
    return 0 if governed else 1


def _live(app: Any, timeout: float, interval: float, destination: list[str] | None, source: str) -> None:
    from rich.live import Live

    last_answer: float | None = None
    waiting = Text(f"asking the workers on {source} …", style="dim")
    with Live(waiting, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        while True:
            started = time.monotonic()
            try:
                replies = _poll_or_say(app, timeout, destination, source)
            except _Unavailable as exc:
                # A broker restart should not end the view: say so and ask again.
                live.update(Text(f"{exc}; retrying every {interval:g} s · Ctrl-C quits", style="bold red"),
                            refresh=True)
            else:
                if replies:
                    last_answer = time.time()
                live.update(render(replies, source=source, timeout=timeout, last_answer=last_answer,
                                   interval=interval), refresh=True)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


@click.command()
@app_option
@broker_option
@click.option("-d", "--destination", metavar="NODE[,NODE…]", multiple=True,
              help="Only these workers (node names such as w1@host), as `celery inspect -d`.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between two polls (a poll itself lasts up to --timeout).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds to wait for the workers' answers in each poll.")
@click.option("--once", is_flag=True, help="Print one frame and exit (1 if no governed worker answered).")
@json_option
def top(app_spec: str | None, broker: str | None, destination: tuple[str, ...], interval: float, timeout: float,
        once: bool, as_json: bool) -> None:
    """Show the governed workers live: memory budget, running and waiting tasks, outcomes.

    Workers answer the oomless_status remote-control command through the
    broker. Ctrl-C quits. --json (with --once) prints the raw replies.
    """
    if app_spec is None and broker is None:
        raise click.UsageError("say whose workers to show: -A module:app, or -b broker-url")
    if as_json and not once:
        raise click.UsageError("--json prints a single answer: use it with --once")
    nodes = [n.strip() for d in destination for n in d.split(",") if n.strip()] or None
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    app = None
    code = 0
    try:
        app = _load(app_spec, broker)
        source = _source(app)
        if once:
            code = _once(app, timeout, nodes, source, as_json)
        else:
            _live(app, timeout, interval, nodes, source)
    except _Unavailable as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        code = 2
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the live view ends
    finally:
        if app is not None:
            try:
                app.close()
            except Exception:
                pass  # a connection Ctrl-C left half-closed must not turn a clean exit into a traceback
    sys.exit(code)
