"""What a governed worker is doing right now, as one JSON-ready dict.

:func:`snapshot` is read by ``oomless top`` (through the ``oomless_status``
remote-control command, see :mod:`oomless.celery.control`) and by the
Prometheus collector (:mod:`oomless.celery.metrics`).  It runs in the worker
main process, on the event loop or on the metrics server's thread: it reads
the slot table and the admission ledger and opens a /proc or cgroup file per
running task, nothing more.  Sizes are bytes, times seconds.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..budget import breakdown
from ..enforce.slots import ID_BYTES, SlotState, SlotTable

if TYPE_CHECKING:
    from .governor import Governor

__all__ = ["snapshot", "running_slots"]


def _active() -> dict[tuple[str, int], str]:
    """``(task id, pool child pid) -> task name`` of the requests Celery holds as running."""
    from celery.worker.state import active_requests

    # Keyed as the slot table stores ids (custom ids longer than its field are cut there).
    return {
        (req.id.encode()[:ID_BYTES].decode(errors="ignore"), req.worker_pid): req.name
        for req in list(active_requests) if req.worker_pid
    }


def running_slots(table: SlotTable, active: dict[tuple[str, int], str]) -> list[tuple[int, SlotState, str]]:
    """``(slot, its row, task name)`` of each slot whose task is running now.

    A slot whose child was killed keeps its last row until a new child claims
    it, and a task memory-killed and retried runs again under the same id in
    another slot: a row counts only while Celery holds that task as accepted
    by that very pool child (one just started may show from the next look).
    """
    found = []
    for index in range(table.size):
        state = table.read(index)
        name = active.get((state.task_id, state.pid)) if state.running else None
        if name is not None:
            found.append((index, state, name))
    return found


def snapshot(gov: Governor, hostname: str | None = None) -> dict[str, Any]:
    """Budget, reservations, live use, running and waiting tasks, and counters of one worker."""
    # The counters first: the governor frees a task's slot before it counts the task's end, so a
    # task counted here is never still running below, even when the event loop ends it meanwhile
    # (this may run on the metrics thread, and the reads below let it switch).
    counts = dict(gov.counts)
    table = gov.enforcer.table
    wall = time.time()
    running: list[dict[str, Any]] = []
    for index, state, name in running_slots(table, _active()):
        running.append({
            "id": state.task_id,
            "name": name,
            "slot": index,
            "pid": state.pid,
            "request": state.request,
            "limit": state.limit,
            "used": gov.enforcer.usage(index, state),
            "runtime": max(0.0, wall - state.start_ns / 1e9),
        })
    waiting: list[dict[str, Any]] = []
    gate = gov.gate
    if gate is not None:
        adm = gate.adm
        now = gate.clock()
        for w in list(adm.waiting):
            req = w.key
            waiting.append({
                "id": getattr(req, "id", str(req)),
                "name": getattr(req, "name", "?"),
                "request": w.request,
                "waited": max(0.0, now - w.since),
                "fits": w.request <= adm.free,
            })
        # what admission holds a slot and memory for: counted from the same ledger as ``reserved``
        # (a task just admitted shows in ``running`` once its pool child has started it)
        reserved, slots, admitted = adm.reserved, adm.slots, len(adm.running)
    else:
        reserved, slots, admitted = sum(t["request"] or 0 for t in running), table.size, len(running)
    return {
        "hostname": hostname,
        "pid": os.getpid(),
        "mode": gov.mode,
        "budget": gov.budget,
        "capacity": gov.capacity,
        "footprint": None if gov.footprint is None else {
            "total": gov.footprint.total, "main": gov.footprint.main, "children": gov.footprint.children,
            "slots": gov.footprint.slots, "growth": gov.footprint.growth, "other": gov.footprint.other,
            "unstarted": gov.footprint.unstarted,
            "scope": gov.footprint.scope,
        },
        "breakdown": None if gov.footprint is None else breakdown(gov.live.config, gov.budget, gov.footprint),
        "reserved": reserved,
        "used": sum(t["used"] or 0 for t in running),
        # what the worker can still get: the machine's MemAvailable, less where its cgroup is limited
        "available": gov.enforcer.available(),
        "ceiling": gov.live.config.ceiling,
        "slots": slots,
        "admission": gate is not None,
        "running": sorted(running, key=lambda t: -(t["used"] or 0)),
        "admitted": admitted,
        "waiting": waiting,
        "counts": counts,
        "at": wall,
    }
