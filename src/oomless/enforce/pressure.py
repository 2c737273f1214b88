"""The monitors' eviction check: read the worker's memory, apply the rules, evict one task.

Both monitors run the same scan: each look, they list the running tasks with
what each uses (:class:`Running`), and :meth:`PressureCheck.evict_for_pressure`
asks the rules of :mod:`.eviction` whether the worker is under pressure and
which task goes, then files the eviction report and has the enforcer kill that
slot.  What is available to the worker is its memory cgroup's limit less its
working set when that is limited, else the machine's MemAvailable; on cgroup v2
the worker group's own events and PSI count too.  :class:`Headroom` is the
watchdog's estimate of what is available between two readings, and the margin
it widens for fast allocators.

Not here: the rules themselves, pure (:mod:`.eviction`); what each task uses
(the monitors); what the worker itself holds (:mod:`.footprint`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..linux.cgroup.host import CgroupHost
from ..units import format_size
from .eviction import Use, choose_victim, group_pressure, pressure
from .readers import Readers, Signals
from .reports import KillReport
from .slots import SlotState

logger = logging.getLogger(__name__)

__all__ = ["Running", "PressureCheck", "Headroom"]


@dataclass
class Running:
    """The running tasks one look of a monitor found: what each uses, keyed by its slot, and its slot's state."""

    uses: list[Use] = field(default_factory=list)
    states: dict[int, SlotState] = field(default_factory=dict)

    def add(self, index: int, state: SlotState, used: int) -> None:
        """The task running in slot ``index`` (as ``state`` says) uses ``used`` bytes above its baseline."""
        self.uses.append(Use(index, state.request or 0, used, state.start_ns))
        self.states[index] = state


class PressureCheck:
    """Eviction for node memory pressure (a base of :class:`~oomless.enforce.base.Enforcer`); off until
    :meth:`configure_pressure` gives a budget."""

    mode: str
    readers: Readers
    #: Eviction for node memory pressure (see :mod:`oomless.enforce.eviction`); off until configured.
    budget: int | None = None
    eviction_margin = 0
    _group: tuple[int, str, int] | None = None  # (cgroup version, path, limit) of the worker
    _host: CgroupHost | None = None
    _signals: Signals | None = None  # cgroup v2: the worker group's PSI and events

    def configure_pressure(self, budget: int | None, margin: int, host: CgroupHost | None = None) -> None:
        """Evict a task when the running tasks together use more than ``budget`` and one is over its
        request, or when less than ``margin`` is available to the worker (its own memory cgroup, when
        limited, or the machine).  ``budget`` ``None``: only measure
        (:meth:`~oomless.enforce.footprint.Footprints.footprint`)."""
        self.budget, self.eviction_margin = budget, margin
        self._host = host
        self.follow_limit(None if host is None else host.limit)
        if host is not None and host.version == 2 and host.path is not None and budget is not None:
            self._signals = self.readers.group_signals(host.path)

    def follow_limit(self, limit: int | None) -> None:
        """The worker's cgroup limit is ``limit`` (``None``: none); the governor says so when it changes."""
        host = self._host
        self._group = (host.version, host.path, limit) if host and host.version and host.path and limit else None

    def available(self) -> int:
        """Bytes the worker can still get: the machine's MemAvailable, or less if its cgroup is limited."""
        free = self.readers.mem_available()
        if self._group is not None:
            version, path, limit = self._group
            used = self.readers.working_set(version, path)
            if used is not None:
                free = min(free, limit - used)
        return free

    def worker_used(self) -> tuple[int, str]:
        """What the worker's cgroup holds that cannot be reclaimed when it is limited, else what the
        machine has in use (MemTotal − MemAvailable); and which of the two, in words."""
        if self._group is not None:
            version, path, _ = self._group
            used = self.readers.working_set(version, path)
            if used is not None:
                return used, "the worker's cgroup"
        return self.readers.mem_total() - self.readers.mem_available(), "the machine"

    def pressure(
        self, uses: list[Use], check_available: bool, available: int | None = None, margin: int | None = None
    ) -> tuple[Use, str] | None:
        """The task to evict and why, or ``None`` (monitor thread).

        ``available``: a reading the caller just made (else read here when
        ``check_available``); ``margin``: the eviction margin to hold (default
        :attr:`eviction_margin`; the watchdog widens it by what it sees tasks allocate).
        """
        if self.budget is None or not uses:
            return None
        margin = self.eviction_margin if margin is None else margin
        total = sum(max(0, u.used) for u in uses)
        if available is None and check_available:
            available = self.available()
        why = pressure(total, self.budget, available, margin)
        if why is None and check_available and self._signals is not None:
            try:
                why = group_pressure(*self._signals.read())
            except (OSError, ValueError, KeyError):
                why = None
        if why is None:
            return None
        victim = choose_victim(uses)
        if victim is None:
            return None
        if victim.over <= 0 and (available is None or available >= self.eviction_margin):
            # Over a budget that shrank (the worker's footprint grew) under tasks that all keep
            # to their requests, or inside a margin widened for fast allocators: admission starts
            # nothing more until they end; nobody is evicted before the configured margin is crossed.
            return None
        return victim, why

    def evict_for_pressure(
        self, running: Running, check_available: bool, available: int | None = None, margin: int | None = None
    ) -> bool:
        """Evict the task :meth:`pressure` picks among ``running``, if any; whether one was."""
        found = self.pressure(running.uses, check_available, available, margin)
        if found is None:
            return False
        self.evict(running, *found)
        return True

    def evict_most_over(self, running: Running, why: str) -> bool:
        """Evict the task of ``running`` most over its request (the newest on a tie) for the memory
        pressure ``why``, which the caller found; whether a task ran to evict."""
        victim = choose_victim(running.uses)
        if victim is None:
            return False
        self.evict(running, victim, why)
        return True

    def evict(self, running: Running, victim: Use, why: str) -> None:
        """Kill ``victim``, one of ``running``, for the memory pressure ``why``."""
        index = int(victim.key)  # type: ignore[call-overload]
        self.kill_slot(index, self.eviction_report(running.states[index], victim, why))

    def eviction_report(self, state: SlotState, victim: Use, why: str, killed: tuple[int, ...] = ()) -> KillReport:
        logger.warning(
            "oomless: evicting %s for node memory pressure: %s; it uses %s against a request of %s, "
            "the most over its request",
            state.task_id, why, format_size(victim.used), format_size(victim.request),
        )
        return KillReport(
            state.task_id, state.pid, state.limit or 0, victim.used, self.mode, killed,
            reason="evicted", request=victim.request, detail=why, spared=state.spare_root,
        )

    def kill_slot(self, index: int, report: KillReport) -> None:
        """Kill the task running in slot ``index`` for ``report`` (filed first); each mode's monitor."""
        raise NotImplementedError(f"{self.mode} mode kills no task")

    def close_signals(self) -> None:
        """Close the worker group's pressure files (at stop)."""
        if self._signals is not None:
            self._signals.close()
            self._signals = None


class Headroom:
    """What is available to the worker between two readings, and the margin to keep, for the watchdog.

    Reading what is available (the worker's cgroup or /proc/meminfo) costs tens
    of microseconds: it is read every 0.1 s, and in between estimated as the
    last reading less what the tasks grew by since (their trees are polled
    every few ms anyway).  The margin grows with the fastest growth seen lately
    (decaying), times how long a look takes to come round and a kill to land:
    a fast allocator is evicted earlier than a slow one.
    """

    __slots__ = ("base", "interval", "last", "at", "total", "since", "rate", "dt")

    def __init__(self, margin: int, interval: float, now: float) -> None:
        self.base, self.interval = margin, interval
        self.last: int | None = None  # available at the last reading
        self.at = 0  # the tasks' total use at that reading
        self.total, self.since = 0, now
        self.rate = 0.0  # bytes/s, the fastest growth seen lately
        self.dt = interval  # seconds between the last two polls (longer than asked on a loaded machine)

    def tasks_use(self, total: int, now: float) -> None:
        """The tasks together use ``total`` at ``now`` (a monotonic time; every poll)."""
        dt = now - self.since
        if dt > 0:
            self.rate = max((total - self.total) / dt, self.rate * 0.98, 0.0)
        self.total, self.since = total, now
        self.dt = max(dt, self.interval)

    def margin(self) -> int:
        """The eviction margin to hold now: the configured one plus ~4 polls of the fastest growth
        (at most 4 times the configured one: beyond, only tasks over their requests are evicted)."""
        return self.base + min(4 * self.base, int(self.rate * 4 * self.dt))

    def near(self) -> bool:
        """Whether the estimate of what is available may be within twice the margin."""
        return self.last is None or self.last - (self.total - self.at) < 2 * self.margin()

    def read(self, available: int, total: int) -> int:
        self.last, self.at = available, total
        return available
