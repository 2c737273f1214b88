"""``oomless top``: a live terminal view of the governed workers of a Celery app.

Every ``--interval`` seconds ``top`` broadcasts the ``oomless_status``
remote-control command (:mod:`oomless.celery.control`) through the app's
broker, waits ``--timeout`` seconds for answers, and draws one block per
worker: mode, slots and outcome counts; reserved and used memory against the
budget; the running tasks with their live memory; the tasks waiting for room.

Polling (:func:`poll`, here) is kept apart from drawing
(:func:`oomless.cli.top_view.render`, a pure function of the replies), so a
frame can be drawn from replies saved with ``--once --json``.

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
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..urls import redact
from .common import AppNotLoaded, app_option, broker_option, json_option, load_app
from .top_view import COUNTS, render, split_workers

__all__ = ["top", "poll", "render", "COUNTS"]


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
    governed, _ = split_workers(replies)
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
