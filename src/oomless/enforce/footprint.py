"""What the worker itself holds, apart from its tasks: the footprint the live budget subtracts.

:meth:`Footprints.footprint` measures, in the main process, the worker's main
process, its pool children's own memory, what pool children still to come will
need, and what the worker's cgroup (or the machine) holds beyond the running
tasks; each mode says what a task uses (:meth:`~Footprints.usage`) and what a
pool child holds (:meth:`~Footprints.child_memory`) as it sees them.

Not here: turning a footprint into a budget (:mod:`oomless.celery.footprint`,
:class:`oomless.budget.Footprint`); what is available to the worker (:mod:`.pressure`).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from ..budget import Footprint
from ..linux import proc
from .readers import Readers
from .slots import SlotState, SlotTable

__all__ = ["Footprints"]


class Footprints:
    """The footprint measurement of an :class:`~oomless.enforce.base.Enforcer` (one of its bases)."""

    table: SlotTable
    readers: Readers
    _child_cost_seen = 0  # what an idle pool child held privately, last seen

    if TYPE_CHECKING:  # from PressureCheck, the Enforcer's other base

        def worker_used(self) -> tuple[int, str]: ...

    def footprint(self) -> Footprint:
        """Measure what the worker itself holds now (main process, any thread; a few file reads a slot).

        ``worker``: the unreclaimable memory of the worker's cgroup when it is
        limited, else of the machine (MemTotal − MemAvailable), less what the
        running tasks hold above their baselines.  ``growth``: pool children that
        have run no task yet are expected to reach the median of those that have
        (what they hold already is in ``children``), and a slot with no live
        child will get one that does (an autoscaled pool may start it whenever
        Celery's autoscaler decides, a replacement is on its way).
        """
        tasks, mine, fresh, ran, unstarted, idle = 0, 0, [], [], 0, []
        for index in range(self.table.size):
            state = self.table.read(index)
            if state.pid <= 0 or self.readers.exited(state.pid):
                unstarted += 1
                continue
            if state.running:
                tasks += max(0, self.usage(index, state) or 0)
            else:
                idle.append(state.pid)
            own = self.child_memory(index, state)
            if own is None:
                continue
            mine += own
            if self.table.ran(index):
                ran.append(own)
            else:
                fresh.append(own)
        used, scope = self.worker_used()
        typical = sorted(ran)[len(ran) // 2] if ran else 0
        start = self._child_cost(idle) if unstarted else 0
        main = self.readers.rss(os.getpid())
        return Footprint(
            worker=max(main + mine, used - self.tasks_hold(tasks, mine)), main=main, children=mine,
            slots=len(fresh) + len(ran), growth=sum(max(0, typical - own) for own in fresh) + unstarted * start,
            scope=scope, unstarted=unstarted if start else 0,
        )

    def _child_cost(self, idle: list[int]) -> int:
        """What one more pool child costs: the median private memory (USS) of up to 3 idle ones
        (the last one seen while every child runs a task).

        Not their slot's own memory: most of what a child costs, it copied from the
        worker's heap while starting, before it claimed its slot.
        """
        costs = []
        for pid in idle[:3]:
            with contextlib.suppress(OSError, LookupError):
                costs.append(self.readers.uss(pid))
        if costs:
            self._child_cost_seen = sorted(costs)[len(costs) // 2]
        return self._child_cost_seen

    def usage(self, index: int, state: SlotState) -> int | None:
        """What the task running in slot ``index`` uses now, above its baseline (any main-process thread).

        Not for the monitor's fast loop: it opens a /proc file.  Here: the pool
        child's own RSS (``off`` mode); the other modes see the whole tree.
        """
        try:
            return max(0, self.readers.rss(state.pid) - state.baseline)
        except proc.GONE:
            return None

    def child_memory(self, index: int, state: SlotState) -> int | None:
        """The pool child's own memory in slot ``index`` (its baseline while a task runs), ``None`` if none.

        Here: its RSS above what it had when it claimed the slot (pages it still
        shares with the worker are the main process's); cgroup mode reads the slot.
        """
        try:
            rss = state.baseline if state.running else self.readers.rss(state.pid)
        except proc.GONE:
            return None
        return max(0, rss - self.table.born_rss(index))

    def tasks_hold(self, running: int, children: int) -> int:
        """What tasks hold of the worker's memory, given what running tasks use above their baselines
        and what the live pool children hold themselves (:meth:`footprint`)."""
        return running
