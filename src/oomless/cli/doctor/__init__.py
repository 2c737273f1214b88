"""``oomless doctor``: what this host offers a governed worker, the mode it would run, the budget.

The command diagnoses (:func:`~.diagnose.diagnose`: typed results, nothing
printed) and then renders: :func:`render` prints one line per
:class:`~.facts.Check`, ``--json`` prints :meth:`~.facts.Diagnosis.to_dict`.
The parts: :mod:`.facts` (the result types), :mod:`.diagnose` (host, settings,
mode, budget, tasks), :mod:`.backend` (result backend, serializers, claim
check), :mod:`.checks` (the wording of each line).

Everything is seen from the process running ``doctor``: run it the way the
worker runs (same user, same container or systemd unit), or the cgroup it
inspects is not the worker's.

Exit status: 0 when a worker started with these settings would run; 2 when it
would refuse to start (the requested enforcement mode cannot work here, or the
configuration is invalid).  ``--json`` prints one JSON object either way.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ...enforce.modes import MODES
from ..common import app_option, json_option
from .diagnose import diagnose
from .facts import Check, Diagnosis

__all__ = ["doctor", "diagnose", "render", "Check", "Diagnosis", "POOLS"]

POOLS = ("prefork", "solo", "threads")


@click.command()
@app_option
@click.option(
    "--enforcement",
    type=click.Choice(MODES),
    default=None,
    help="Mode to check (default: the app's oomless_enforcement, else auto).",
)
@click.option(
    "--memory-budget", metavar="SIZE", default=None, help="Budget as the worker option would set it, e.g. 6GiB."
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default=None,
    help="Worker pool to check (default: the app's worker_pool, else prefork).",
)
@json_option
def doctor(app_spec: str | None, enforcement: str | None, memory_budget: str | None, pool: str | None,
           as_json: bool) -> None:
    """Say what this host supports, which enforcement mode a worker would run and why, and its budget.

    Exits 2 if a worker with these settings would refuse to start. --json
    prints the same findings as one JSON object (docs/guide.md §2).
    """
    found = diagnose(app_spec, enforcement, memory_budget, pool)
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=None, sort_keys=False))
    else:
        render(found)
    if not found.ok:
        sys.exit(2)


def render(found: Diagnosis, out: Console | None = None, err: Console | None = None) -> None:
    """Print ``found`` for people: a line per check (a grid on a terminal), then warnings; the error on stderr."""
    out = out or Console(highlight=False)
    lines = [(key, value) for check in found.checks
             for key, value in [(check.name, check.sentence), *(("", note) for note in check.notes)]]
    if out.is_terminal:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for key, value in lines:
            grid.add_row(escape(key), escape(value))
        out.print(grid)
    else:
        # Plain lines for logs and pipes: one fact per line, never wrapped.
        for key, value in lines:
            out.print(escape(f"{key:<9} {value}"), soft_wrap=True)
    for warning in found.warnings:
        out.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if found.error:
        err = err or Console(stderr=True, highlight=False)
        err.print(f"[bold red]error:[/] {escape(found.error)}", soft_wrap=True)
