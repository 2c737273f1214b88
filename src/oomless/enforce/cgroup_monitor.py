"""cgroup mode's monitor thread: what wakes it, what it charges a task, and the kill of a slot.

v1: with ``oom_kill_disable`` the kernel pauses a slot at its limit and
signals an eventfd; the monitor reads the peak, files the report, and
SIGKILLs every member of the slot group.  v2 has no such pause: the slot's
``memory.high`` is its limit, where the kernel starts to throttle it and
notifies ``memory.events``; the monitor, woken by that (or by its own poll),
finds the task over its limit and kills it as on v1 (only the subprocesses of
a ``memory_scope="subprocesses"`` task).

Memory an earlier task left in the slot is in the next task's baseline; were
that task to free it, the kernel limit (baseline + limit) would let it use
that much more.  So when a task starts on top of such leftovers (the slot row's
``held``, see :meth:`~oomless.enforce.cgroup.CgroupEnforcer.held`), the monitor
polls its slot every 10 ms and charges it what it grew by above the lowest the
slot's non-tmpfs memory has been during the task, plus tmpfs above what the
slot held at its start; over its limit, it is killed like any other breach.
tmpfs leftovers freed by anyone are never credited to the task; non-tmpfs
leftovers freed and reused within one poll are (the kernel limit still holds
the slot to baseline + limit).

The slots together may be held to what the worker has left
(:meth:`~CgroupMonitor.fit_slots`): at that shared limit the kernel stalls
them and the monitor evicts, so the kernel never has to pick a victim.

Not here: making the groups and the pool child's half (:mod:`.cgroup`); when to
evict (:mod:`.pressure`, :mod:`.eviction`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import time

from ..linux import cgroup
from ..units import format_size
from .base import Enforcer
from .pressure import Running
from .readers import Killer, Readers
from .reports import KillReport
from .slots import SlotState, SlotTable

logger = logging.getLogger(__name__)

#: The least the slots' shared limit leaves them above what they hold when there is room to give.
MIN_ROOM = 16 * 2**20

__all__ = ["CgroupMonitor"]


class CgroupMonitor(Enforcer):
    """The main-process half of :class:`~oomless.enforce.cgroup.CgroupEnforcer`: its monitor thread."""

    mode = "cgroup"

    def __init__(self, table: SlotTable, groups: cgroup.SlotGroups,
                 readers: Readers | None = None, killer: Killer | None = None) -> None:
        super().__init__(table, readers, killer)
        self.groups = groups
        self._eventfds: dict[int, int | None] = {}  # eventfd -> slot index (None: the slots' shared group)
        self._events: dict[int, int | None] = {}  # v2: memory.events fd -> slot index (None: the base group)
        self._shared_limit: int | None = None
        self._wake_r, self._wake_w = -1, -1
        #: slot -> [row seq of the task, lowest non-tmpfs usage of the slot during it]
        self._lowest: dict[int, list[int]] = {}
        #: slot -> [row seq of the task, highest use sampled] (when ``sampling``)
        self._sampled: dict[int, list[int]] = {}
        #: cgroup v2 before Linux 6.12: sample every running task's use and publish its highest
        self.sampling = False

    def monitor(self) -> None:
        poller = select.epoll()
        for efd in self._eventfds:
            poller.register(efd, select.EPOLLIN)
        for efd in self._events:
            # kernfs files always poll readable; a change shows as POLLPRI (plus POLLERR).
            poller.register(efd, select.EPOLLPRI)
        poller.register(self._wake_r, select.EPOLLIN)
        timeout = 0.1
        checks = 0
        try:
            while not self._stopping.is_set():
                for fd, _ in poller.poll(timeout):
                    if fd == self._wake_r:
                        return
                    if fd in self._events:
                        index = self._events[fd]
                        if index is not None:
                            self._over_high(index, fd)
                            continue
                        os.pread(fd, 4096, 0)  # re-arms the notice
                    else:
                        try:
                            os.read(fd, 8)
                        except BlockingIOError:
                            continue
                        index = self._eventfds[fd]
                        if index is not None:
                            if isinstance(self.groups, cgroup.SlotGroupsV1) and self.groups.under_oom(index):
                                self.kill_slot(index)
                            continue
                    if self.groups.at_total_limit():
                        self._at_shared_limit()
                checks += 1
                timeout = self._check_slots(checks)
        finally:
            poller.close()

    def _check_slots(self, checks: int) -> float:
        """Kill a task that freed leftovers to go over its limit, evict if the running tasks together
        are over the budget; returns the next poll timeout.

        Polls every 10 ms while a running task that declared a request may
        grow past it (no limit, or a limit above the request) or runs on top
        of leftovers, every 100 ms otherwise (tasks without any spec, and the
        memory available to the worker).
        """
        found, fast = Running(), False
        evicting = self.budget is not None
        for index in range(self.table.size):
            state = self.table.read(index)
            if not state.running or (not evicting and state.held is None and not self.sampling):
                continue
            try:
                used = self._task_use(index, state)
            except OSError:
                continue
            if self.sampling:
                fast = True
                self._sample(index, state.seq, used)
            if state.held is not None:
                fast = True
                if state.limit is not None and used > state.limit:
                    self.kill_slot(index, self._freed_leftovers(state, used))
                    continue
            if self._events and state.limit is not None and used > state.limit:
                self.kill_slot(index, self.limit_report(state, used))  # v2: a memory.events notice missed
                continue
            request = state.request or 0
            # A task that declared a request it may outgrow; tasks with no spec at all are
            # checked at the slower pace, so plain Celery tasks pay (almost) nothing.
            fast = fast or (state.request is not None and (state.limit is None or state.limit > request))
            found.add(index, state, used)
        if evicting:
            self.evict_for_pressure(found, check_available=not fast or checks % 10 == 0)
        return 0.01 if fast else 0.1

    def fit_slots(self, headroom: int) -> int | None:
        """Limit what the slots hold together to what they hold now plus what the worker still has
        available, less ``headroom`` (governor, once a second); returns the limit set.

        At that limit the kernel stalls the slots instead of OOM-killing (v1: the
        shared group's limit with the OOM killer off pauses them; v2: the base
        group's ``memory.high`` throttles them, the worker's leaf included) and
        notifies, and :meth:`_at_shared_limit` evicts: the kernel never has to pick
        a victim in the worker's cgroup while the worker itself (main process)
        stays within ``headroom`` of what it held at the last call.
        """
        held = self.groups.shared_usage()
        room = self.available() - headroom
        limit = held + max(room, MIN_ROOM)
        if room < MIN_ROOM and self._shared_limit is not None:
            # Nothing left to give: never raise the limit the slots stall at (v2's memory.high
            # would otherwise follow them up MIN_ROOM a second, a slow creep towards the
            # worker's own limit that stalls every task and evicts none).
            limit = min(limit, self._shared_limit)
        if self._shared_limit is not None and abs(limit - self._shared_limit) < 2**20:
            return self._shared_limit
        try:
            self.groups.set_total_limit(limit)
        except OSError as exc:  # the slots hold more than that in memory the kernel cannot reclaim
            logger.debug("oomless: could not limit the slots together to %s: %s", format_size(limit), exc)
            return self._shared_limit
        self._shared_limit = limit
        return limit

    def _at_shared_limit(self) -> None:
        """The slots together reached their shared limit and the kernel stalls them: evict the task
        most over its request (the newest on a tie), until the kernel lets the slots run again."""
        limit = self._shared_limit
        why = (f"the slots together reached the memory left to tasks in the worker "
               f"({format_size(limit) if limit else 'their limit'})")
        for _ in range(self.table.size + 1):
            found = Running()
            for index in range(self.table.size):
                state = self.table.read(index)
                if state.running:
                    try:
                        found.add(index, state, self._task_use(index, state))
                    except OSError:
                        continue
            if not self.evict_most_over(found, why):
                # Pool children alone fill it (no task runs): lift the limit; the next fit sets it again.
                logger.warning("oomless: the slots together reached their shared limit of %s with no task "
                               "running; lifting it", format_size(limit or 0))
                self.groups.set_total_limit(None)
                self._shared_limit = None
                return
            for _ in range(40):  # the kernel resumes the slots once the victim's memory is freed
                if not self.groups.at_total_limit():
                    return
                time.sleep(0.005)

    def _task_use(self, index: int, state: SlotState) -> int:
        """What the running task uses above its baseline, leftovers it freed not credited (see above)."""
        usage, shmem = self.groups.usage_shmem(index)
        if state.held is None:
            return usage - state.baseline
        lowest = self._lowest.get(index)
        if lowest is None or lowest[0] != state.seq:
            lowest = self._lowest[index] = [state.seq, state.baseline - state.held]
        other = usage - shmem
        if other < lowest[1]:
            lowest[1] = other
        return other - lowest[1] + max(0, shmem - state.held)

    def _over_high(self, index: int, fd: int) -> None:
        """v2: the slot's memory.events changed (it went over memory.high, its task's limit, or the
        kernel acted); kill its task if what it holds that cannot be reclaimed is over its limit."""
        os.pread(fd, 4096, 0)  # re-arms the notice
        state = self.table.read(index)
        if not state.running or state.limit is None:
            return
        try:
            used = self._task_use(index, state)
        except OSError:
            return
        if used > state.limit:
            self.kill_slot(index, self.limit_report(state, used))

    def _sample(self, index: int, seq: int, used: int) -> None:
        """Publish the highest use seen of the task that started at row sequence ``seq``."""
        seen = self._sampled.get(index)
        if seen is None or seen[0] != seq:
            seen = self._sampled[index] = [seq, -1]
        if used > seen[1]:
            seen[1] = used
            self.table.publish_tree_peak(index, seq, used)

    def _freed_leftovers(self, state: SlotState, used: int) -> KillReport:
        logger.warning(
            "oomless: %s uses %s, over its limit of %s, although its slot is under the kernel's limit: it freed "
            "memory an earlier task left in the slot (tmpfs held at its start: %s), which is not its to use",
            state.task_id, format_size(used), format_size(state.limit), format_size(state.held),
        )
        return self.limit_report(state, used)

    def kill_slot(self, index: int, report: KillReport | None = None) -> None:
        """Kill the slot's tree: at its kernel limit (``report`` is ``None``), or for ``report``."""
        state = self.table.read(index)
        peak = max(0, self.groups.peak(index) - state.baseline)
        # A task with memory_scope="subprocesses" keeps its pool child (Airflow's supervisor).
        spare = state.pid if state.running and state.spare_root else None
        members = [pid for pid in self.groups.procs(index) if pid != spare]
        if spare is not None and not members:
            spare, members = None, self.groups.procs(index)  # the child itself is over: nothing else to kill
        if report is None and state.running and state.limit is not None:
            report = self.limit_report(state, peak)  # at its kernel limit
        if report is not None:
            if report.task_id != state.task_id or not state.running:
                return  # the task ended meanwhile
            self.file_report(dataclasses.replace(report, killed=tuple(members), spared=spare is not None))
        else:
            logger.warning("oomless: slot %d hit its memory limit with no task running; killing %s", index, members)
        if spare is None and members and isinstance(self.groups, cgroup.SlotGroupsV2):
            self.groups.kill_all(index)  # the whole slot at once; what is left below gets SIGKILL by PID
        if members:
            self.killer.pids(members)
            if spare is not None:
                # v1 (oom_kill_disable): the spared child may itself be paused at the limit, and a
                # killed member in a non-killable wait; lifting the limit wakes them (the kernel's
                # OOM recovery), and no one else is left to charge it before the task ends (disarm).
                self.groups.release(index)
        if state.running and report is not None:
            # Every member is signalled and the releaser is freeing their memory: the task fails
            # now, not once the last of them has exited (5 ms polls below).
            self.announce_kill(state.task_id)
        deadline = time.monotonic() + 5
        while members and time.monotonic() < deadline:
            time.sleep(0.005)
            if spare is not None and self.table.seq(index) != state.seq:
                break  # the spared child finished that task; what it starts now is not ours to kill
            # A killed process stays listed until its parent reaps it; for a spared child that
            # is the task's business (Airflow's supervisor), and waiting for it would hold up
            # this thread and every other slot.
            members = [pid for pid in self.groups.procs(index) if pid != spare and not self.readers.exited(pid)]
            if members:
                self.killer.pids(members)
        if members:
            logger.error("oomless: slot %d still has members %s 5 s after SIGKILL", index, members)
