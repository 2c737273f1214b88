"""The worker main process's governor: the spec each task gets, infeasibility, per-task reports.

One :class:`Governor` per worker process, created by the bootstep before the
pool forks (pool children inherit it and use only the enforcer's child half).
"""

from __future__ import annotations

import logging
from typing import Any

from ..enforce.base import Enforcer, KillReport
from ..enforce.modes import Choice
from ..errors import InfeasibleMemoryRequest
from ..spec import Memory
from ..units import format_size
from .config import Settings

logger = logging.getLogger("oomless")

__all__ = ["Governor", "current", "EVENT"]

#: Celery event sent when a task ends, with its memory figures.
EVENT = "task-memory"

current: Governor | None = None


class Governor:
    """State and decisions of one governed worker (main process)."""

    def __init__(self, settings: Settings, choice: Choice, enforcer: Enforcer) -> None:
        self.settings = settings
        self.choice = choice
        self.enforcer = enforcer
        self.budget = settings.budget.bytes
        self._stopped = False

    @property
    def mode(self) -> str:
        return self.enforcer.mode

    def check_feasible(self, task_name: str, task_id: str, spec: Memory) -> None:
        need = max(spec.limit or 0, spec.request or 0)
        if need > self.budget:
            raise InfeasibleMemoryRequest(task_name, task_id, need, self.budget)

    def finished(self, req: Any, outcome: str, report: KillReport | None = None) -> None:
        """Log one line and send one event with the task's memory figures."""
        spec: Memory = req._oomless_spec
        if report is not None:
            peak: int | None = report.peak
        else:
            peak = None
            pid = req.worker_pid
            if pid is not None:
                index = self.enforcer.table.index_of(pid)
                if index is not None:
                    found = self.enforcer.table.finished(index, req.id)
                    peak = found.peak if found is not None else None
            sampled = self.enforcer.sampled_peak(req.id)
            if sampled is not None:
                peak = max(peak or 0, sampled)
        logger.info(
            "oomless: %s[%s] %s: peak %s, limit %s, request %s [%s]",
            req.name,
            req.id,
            outcome,
            "unknown" if peak is None else format_size(peak),
            format_size(spec.limit),
            format_size(spec.request) if spec.request is not None else "none",
            self.mode,
        )
        req.send_event(
            EVENT, outcome=outcome, peak=peak, limit=spec.limit, request=spec.request, mode=self.mode
        )

    def shutdown(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.enforcer.stop()
