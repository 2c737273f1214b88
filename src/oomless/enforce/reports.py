"""Kill reports: the proof an enforcer files before it kills a task, and the notice after.

The monitor thread files a :class:`KillReport` *before* it signals, so that
when Celery later sees the pool child die the report is already there; it
then writes the task's id to a pipe the worker's event loop reads, which fails
the task at once (:mod:`oomless.celery.governor`).  Each report is claimed once.

Not here: when a task is killed (the monitors: :mod:`.watchdog`,
:mod:`.cgroup_monitor`; eviction: :mod:`.pressure`), how (:mod:`.readers`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .slots import SlotState

logger = logging.getLogger(__name__)

__all__ = ["KillReport", "BoundedDict", "KillReports"]


@dataclass(frozen=True)
class KillReport:
    """Proof that the governor killed a task for memory, filed before the kill."""

    task_id: str
    pid: int
    limit: int
    peak: int  # for an eviction: what the task used when it was evicted
    mode: str
    killed: tuple[int, ...] = field(default=())
    at: float = field(default_factory=time.time)
    reason: str = "limit"  # "limit": over its own limit; "evicted": node memory pressure
    request: int = 0
    detail: str = ""  # for an eviction: the pressure, in words
    spared: bool = False  # the pool child was spared; only its subprocesses were killed


class BoundedDict(OrderedDict):
    """A dict that forgets its oldest entries beyond ``maxlen`` (reports nobody claimed)."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def put(self, key: str, value: object) -> None:
        self[key] = value
        while len(self) > self.maxlen:
            self.popitem(last=False)


class KillReports:
    """An enforcer's kill reports and its notice pipe (a base of :class:`~oomless.enforce.base.Enforcer`).

    The monitor thread files and announces; the worker's event loop drains the
    notices and claims the reports.
    """

    mode: str  # the enforcer's, named in each report

    def __init__(self) -> None:
        self._reports: BoundedDict = BoundedDict(4096)
        #: called with each report right before its kill (see :meth:`file_report`)
        self.before_kill: list[Callable[[KillReport], None]] = []
        # The monitor thread writes a killed task's id here; the worker's event
        # loop reads it and fails the task at once (see celery.governor).
        self.notify_r, self.notify_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def limit_report(self, state: SlotState, used: int) -> KillReport:
        """The report of the task running in ``state``, over its own limit at ``used`` bytes."""
        assert state.limit is not None
        return KillReport(state.task_id, state.pid, state.limit, used, self.mode, spared=state.spare_root)

    def file_report(self, report: KillReport) -> None:
        """Record why a task is about to be killed (call *before* signalling it), and tell
        the :attr:`before_kill` hooks (monitor thread; they must be quick and never raise)."""
        self._reports.put(report.task_id, report)
        for hook in self.before_kill:
            try:
                hook(report)
            except Exception:
                logger.exception("oomless: a before-kill hook failed for task %s", report.task_id)

    def withdraw_report(self, task_id: str) -> None:
        """Forget the report filed for ``task_id``: the kill found nothing left to signal."""
        self._reports.pop(task_id, None)

    def take_spared(self, task_id: str) -> KillReport | None:
        """Claim the report of a kill that spared the task's own process (its subprocesses died)."""
        report = self._reports.get(task_id)
        if report is None or not report.spared:
            return None
        return self._reports.pop(task_id, None)

    def announce_kill(self, task_id: str) -> None:
        """Tell the worker's event loop that ``task_id`` was killed (call *after* signalling)."""
        try:
            os.write(self.notify_w, task_id.encode()[:200] + b"\n")
        except BlockingIOError:
            pass  # the pipe is full of notices; Celery's own WorkerLostError path still applies

    def killed_task_ids(self) -> list[str]:
        """Drain the kill notices (worker event loop)."""
        data = b""
        while True:
            try:
                chunk = os.read(self.notify_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        return [line.decode() for line in data.split(b"\n") if line]

    def peek_kill(self, task_id: str) -> KillReport | None:
        return self._reports.get(task_id)

    def claim_kill(self, task_id: str, pid: int | None) -> KillReport | None:
        """The report for ``task_id`` if the governor killed it (each report is claimed once)."""
        return self._reports.pop(task_id, None)

    def close_notices(self) -> None:
        """Close the notice pipe (at stop)."""
        for fd in (self.notify_r, self.notify_w):
            try:
                os.close(fd)
            except OSError:
                pass
