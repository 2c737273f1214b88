"""What a governor kill turns into: the exception Celery's error path stores and reports.

A memory kill becomes :class:`~oomless.errors.MemoryLimitExceeded` (with the
limits of earlier attempts under an escalation policy), an eviction
:class:`~oomless.errors.EvictedForMemoryPressure`; both wrapped in billiard's
``ExceptionInfo`` as Celery's ``on_failure`` expects.

What is not here: when a task is killed (:mod:`oomless.enforce`), what happens to
its message afterwards (:mod:`oomless.celery.request`).
"""

from __future__ import annotations

from typing import Any

from billiard.einfo import ExceptionInfo

from ..enforce.reports import KillReport
from ..errors import EvictedForMemoryPressure, MemoryLimitExceeded
from ..escalate import Escalate
from .republish import EVICTIONS, TRIED, header_int

__all__ = ["einfo_of", "memory_exceeded_einfo", "tried_limits"]


def einfo_of(exc: BaseException) -> ExceptionInfo:
    """``exc`` with a traceback, as billiard's ``ExceptionInfo``."""
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


def memory_exceeded_einfo(req: Any, report: KillReport) -> ExceptionInfo:
    """The failure a governor kill turns into, as Celery's error callbacks expect it."""
    if report.reason == "evicted":
        evictions = header_int(req, EVICTIONS) + 1
        return einfo_of(
            EvictedForMemoryPressure(req.name, req.id, report.peak, report.request, evictions, report.detail)
        )
    return einfo_of(
        MemoryLimitExceeded(req.name, req.id, report.limit, report.peak, report.mode, tried_limits(req, report))
    )


def tried_limits(req: Any, report: KillReport) -> list[int]:
    """Limits of this task's earlier memory-killed attempts (from the message) and of this one,
    when it has an escalation policy (else none)."""
    if not isinstance(getattr(req.task, "memory_retry", None), Escalate):
        return []
    raw = req.request_dict.get(TRIED)
    earlier = raw[:64] if isinstance(raw, list) else []
    return [t for t in earlier if isinstance(t, int) and not isinstance(t, bool) and t > 0] + [report.limit]
