"""The words for how a task attempt ended, said once.

They appear in the worker's log lines, the ``task-memory`` event, the metrics'
labels, the history's ``outcome`` column, ``oomless top``, the report and the
recommender; every module imports them from here.
"""

from __future__ import annotations

__all__ = [
    "OK", "FAILED", "MEMORY_KILLED", "EVICTED", "LOST", "RETRY", "INFEASIBLE", "INVALID",
    "ESCALATED", "KERNEL_OOM_KILLED", "ENDED", "REFUSED",
]

#: The task returned.
OK = "ok"
#: The task raised (not for memory).
FAILED = "failed"
#: Killed at its own memory limit (or refused memory there).
MEMORY_KILLED = "memory-killed"
#: Killed for the worker's memory pressure while it broke no limit of its own; requeued.
EVICTED = "evicted"
#: Its pool child died, and no oomless kill explains it.
LOST = "lost"
#: The task asked Celery to retry it.
RETRY = "retry"
#: Refused before it ran: its memory can never fit this worker.
INFEASIBLE = "infeasible"
#: Refused before it ran: its memory spec is malformed.
INVALID = "invalid"

#: Counted beside the outcomes (not an attempt's end): a memory-killed task republished with more memory.
ESCALATED = "escalated"
#: Counted beside the outcomes: the kernel's OOM killer took a task's pool child.
KERNEL_OOM_KILLED = "kernel-oom-killed"

#: How an attempt that ran can end.
ENDED = (OK, FAILED, MEMORY_KILLED, EVICTED, LOST, RETRY)
#: How an attempt refused before it ran ends.
REFUSED = (INFEASIBLE, INVALID)
