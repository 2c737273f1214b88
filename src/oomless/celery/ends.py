"""What a governed task's end leaves behind, in the worker's main process.

Once its slot is free (:meth:`oomless.celery.governor.Governor.finished`), a
task's end is told to everyone who keeps count, in this order:

* the counters by outcome (``top``, ``status``, the metrics' totals);
* its one log line, unless its pool child already wrote it (a killed or lost
  child never does), and its ``task-memory`` event when events are on;
* its attempt in the history (an append to the recorder's buffer, no I/O);
* learned sizes, which hear of a memory kill at once;
* the per-task Prometheus series;
* the plugins (``measured``, then ``ended``).

A task refused before it started (:func:`refused`) is counted, recorded and
told to the plugins the same way, without a peak.

What is not here: the decisions (kill, evict, escalate, refuse:
:mod:`oomless.celery.request`, :mod:`oomless.celery.governor`), the pool
child's own line (:mod:`oomless.celery.child`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import outcomes
from ..enforce.reports import KillReport
from ..errors import InfeasibleMemoryRequest
from ..history.attempt import Attempt
from ..spec import Memory
from .events import EVENT, events_on, log_finished, summary
from .republish import INPUT_SIZE, header_int

if TYPE_CHECKING:
    from .governor import Governor

__all__ = ["ended", "refused", "record"]


def ended(gov: Governor, req: Any, outcome: str, report: KillReport | None = None) -> None:
    """The task ``req`` ended with ``outcome`` (``report``: the governor's kill or eviction, if any)."""
    spec: Memory = req.oomless_spec
    peak: int | None = report.peak if report is not None else None
    gov.counts[outcome] += 1
    found = None
    events = events_on(req)
    wanted = (
        outcome != outcomes.OK or not gov.children_report or events
        or gov.recorder is not None or gov.metrics is not None
    )
    if report is None and outcome != outcomes.LOST and wanted:
        found = _finished_in_child(gov, req)
        if found is not None:
            peak = found.peak
    # A pool child logs every task it finishes; a killed or lost one never finishes.
    child_logged = gov.children_report and report is None and (outcome == outcomes.OK or found is not None)
    if not child_logged:
        log_finished(req.name, req.id, outcome, peak, spec, gov.mode)
    if events:
        req.send_event(
            EVENT, outcome=outcome, peak=peak, limit=spec.limit, request=spec.request, mode=gov.mode,
            memory=summary(outcome, peak, spec, gov.mode),
        )
    if gov.recorder is not None:
        record(gov, req, outcome, peak, found.input_size if found is not None else None)
    if gov.learned is not None and outcome == outcomes.MEMORY_KILLED and spec.limit is not None:
        size = header_int(req, INPUT_SIZE, -1, high=2**60)
        gov.learned.note_kill(req.name, size if size >= 0 else None, spec.limit)
        gov.task_specs.pop(req.name, None)
    if gov.metrics is not None:
        labels: dict[str, str] = {}
        for plugin in gov.plugins:
            labels.update(plugin.metric_labels(req))
        gov.metrics.ended(req.name, labels, outcome, peak, spec.request, spec.limit)
    for plugin in gov.plugins:
        plugin.measured(req, outcome, peak)
        plugin.ended(req, outcome, report)


def refused(gov: Governor, req: Any, exc: BaseException) -> None:
    """``req`` was refused before it started, for ``exc`` (infeasible or malformed)."""
    outcome = outcomes.INFEASIBLE if isinstance(exc, InfeasibleMemoryRequest) else outcomes.INVALID
    gov.counts[outcome] += 1
    if gov.recorder is not None:
        record(gov, req, outcome, None)
    for plugin in gov.plugins:
        plugin.refused(req, exc)


def record(gov: Governor, req: Any, outcome: str, peak: int | None, input_size: int | None = None) -> None:
    """One attempt into the history (an append to the recorder's buffer; no I/O here).

    ``input_size``: what the task reported from its pool child; else the message's hint.
    """
    assert gov.recorder is not None
    spec: Memory = req.oomless_spec
    if input_size is None:
        input_size = header_int(req, INPUT_SIZE, -1, high=2**60)
        input_size = None if input_size < 0 else input_size
    now = time.time()
    started = req.time_start or now
    extra: dict[str, Any] = {}
    for plugin in gov.plugins:
        extra.update(plugin.attempt_fields(req))
    gov.recorder.record(Attempt(
        task_name=req.name, task_id=req.id, outcome=outcome, started_at=started,
        duration=now - started if req.time_start else None, request=spec.request, limit=spec.limit,
        peak_rss=peak, peak_pss=gov.pss.take(req.id) if gov.pss is not None else None,
        input_size=input_size, mode=gov.mode, worker_host=req.hostname, worker_pid=req.worker_pid, **extra,
    ))


def _finished_in_child(gov: Governor, req: Any) -> Any:
    """What the pool child wrote of ``req`` in its slot (peak, input size), if it finished there."""
    pid = req.worker_pid
    table = gov.enforcer.table
    index = table.index_of(pid) if pid is not None else None
    return None if index is None else table.finished(index, req.id)
