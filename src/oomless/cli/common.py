"""Pieces the CLI commands share: loading ``-A``'s app, the options more than one command takes, a progress bar.

Each shared option is declared once here (as rq's CLI does), so ``-A`` or
``--history`` mean the same, and read the same environment variable, in every
command.  Connection options (a broker, the history store) can be set in the
environment: ``OOMLESS_BROKER_URL``, ``OOMLESS_HISTORY``.

Not here: parsing what an option's value means (``--since`` in
:mod:`.recommend`), or the options of one command only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

__all__ = [
    "AppNotLoaded", "load_app", "progress_bar",
    "app_option", "broker_option", "history_option", "since_option", "json_option",
]

#: ``-A``: the Celery app a command reads (settings, tasks, broker).
app_option = click.option(
    "-A", "--app", "app_spec", metavar="MODULE:APP",
    help="The Celery app (its oomless_* settings, tasks and broker), imported as `celery -A` does.",
)

#: ``-b``: a broker to reach the workers through, without (or instead of) the app's.
broker_option = click.option(
    "-b", "--broker", metavar="URL", envvar="OOMLESS_BROKER_URL", show_envvar=True,
    help="Broker URL; without -A, a bare Celery app on this broker asks the workers (e.g. Airflow's).",
)

#: ``--history``: the history store's SQLAlchemy URL (``url`` in the command's arguments).
history_option = click.option(
    "--history", "url", metavar="URL", default=None, envvar="OOMLESS_HISTORY", show_envvar=True,
    help="SQLAlchemy URL of the history store (default: the SQLite file workers use, see oomless_history).",
)

#: ``--since``: only what started since then; the command parses it (:func:`oomless.cli.recommend.parse_since`).
since_option = click.option(
    "--since", metavar="WHEN", default=None,
    help="Only attempts started since then: a duration ago (7d, 12h, 30m) or an ISO date (UTC unless it has "
    "an offset).",
)

#: ``--json``: machine-readable output on stdout (``as_json`` in the command's arguments).
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of text.")


class AppNotLoaded(Exception):
    """``-A`` named an app that cannot be imported."""


def load_app(spec: str) -> Any:
    """The Celery app ``spec`` (``module`` or ``module:attr``), imported the way ``celery -A`` does."""
    from celery.app.utils import find_app

    # `celery -A` imports from the current directory; do the same.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return find_app(spec)
    except (ImportError, AttributeError) as exc:
        raise AppNotLoaded(f"cannot load the Celery app {spec!r}: {exc}") from exc


def progress_bar(what: str, disable: bool = False) -> Any:
    """A rich progress bar on stderr (rows read of rows to read), gone once done: stdout keeps only the result."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=disable,
    )
