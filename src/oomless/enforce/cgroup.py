"""cgroup mode: the kernel enforces each slot's limit; the governor decides and proves.

Each pool child lives in its own memory cgroup from birth (``slot-<index>``
below ``<worker group>/oomless-<pid>-<start>``).  Before a task runs the child
sets ``limit = baseline + task limit``, so the kernel never lets the slot's
tree (child and every subprocess, however it daemonizes) go over: overshoot 0.

v1: with ``oom_kill_disable`` the kernel pauses the slot at its limit, and the
monitor kills it.  v2 has no such pause: the slot's ``memory.high`` is its
limit, where the kernel starts to throttle it and notifies the monitor, which
kills it; ``memory.max`` sits :func:`backstop` above: only a task that outruns
the monitor meets the kernel's OOM killer, which then takes the slot's whole
tree (``memory.oom.group``; only the largest process for a subprocess-scoped
task) and ``memory.events`` proves it when Celery reports the pool child lost.

Memory an earlier task left in the slot (a file in /dev/shm, a pool child's
global it filled) is in the next task's baseline; were that task to free it,
the kernel limit (baseline + limit) would let it use that much more.  So when
a task starts on top of such leftovers (more than :data:`LEFTOVER_SHMEM` of
tmpfs, or :data:`LEFTOVER_WATCH` of other memory, above the pool child's
first baseline), the monitor watches its slot closely and charges it what it
frees of them (see :mod:`.cgroup_monitor`).

Not covered here: the monitor thread, what wakes it and how a slot is killed
(:mod:`.cgroup_monitor`).  Page cache the task caused counts in the slot's
usage (the kernel charges it), so a task's reported peak includes cache it
read; the kernel reclaims that cache before it would ever reach the limit.
"""

from __future__ import annotations

import logging
import os

from ..linux import cgroup, proc
from .cgroup_monitor import CgroupMonitor
from .readers import Killer, Readers
from .reports import KillReport
from .slots import SlotState, SlotTable

logger = logging.getLogger(__name__)

__all__ = ["CgroupEnforcer", "LEFTOVER_WATCH"]

#: Non-tmpfs memory a pool child holds above its first task's baseline before the slot's
#: next tasks are watched for freeing it (allocator slack below this is not worth a poll).
LEFTOVER_WATCH = 64 * 2**20
#: tmpfs the slot holds above what it held at the pool child's first task before the same
#: (shared pages the child touched, such as its row of the slot table, are not leftovers)
LEFTOVER_SHMEM = 2**20


def backstop(limit: int) -> int:
    """cgroup v2: how far above a task's limit the kernel's hard limit (``memory.max``) sits."""
    return max(32 * 2**20, limit // 8)


#: memory.stat is read again as a task starts when the slot's charge moved by more than this …
STAT_MOVED = 2**20
#: … or after this many tasks
STAT_EVERY = 16


class CgroupEnforcer(CgroupMonitor):
    """Per-slot memory cgroups below the worker's own group."""

    mode = "cgroup"

    def __init__(self, table: SlotTable, host: cgroup.CgroupHost, worker_pid: int | None = None,
                 readers: Readers | None = None, killer: Killer | None = None) -> None:
        assert host.path is not None
        base = os.path.join(host.path, cgroup.group_name(worker_pid))
        super().__init__(table, cgroup.slot_groups(host.version, base), readers, killer)
        self.host = host
        self._whole: bool | None = None  # v2 pool child: its slot's memory.oom.group as last written
        # pool-child half: non-tmpfs usage at the child's first task, tmpfs at the running task's start
        self._clean: tuple[int, int] | None = None
        self._shmem0 = 0
        self._stat: tuple[int, int, int] | None = None  # (charge, cache, shmem) when memory.stat was last read
        self._stat_age = 0  # tasks started since
        self._peak0 = self._own0 = 0  # where memory.peak cannot be reset: the slot's and the child's at task start

    # -- main process ---------------------------------------------------------
    def prepare(self) -> None:
        assert self.host.path is not None
        for stale in cgroup.stale_groups(self.host.path):
            try:
                killed = type(self.groups)(stale).remove(kill=True)
            except OSError as exc:
                logger.warning("oomless: slot cgroups %s of a worker that is gone remain: %s", stale, exc)
                continue
            logger.warning(
                "oomless: removed slot cgroups %s left by a worker that is gone%s",
                stale,
                f" (killed {len(killed)} leftover processes: {killed})" if killed else "",
            )
        self.groups.create(self.table.size)
        # cgroup v2 before Linux 6.12: memory.peak cannot be reset per task; the monitor samples
        # every running task's use and publishes its highest (see measure_peak).
        self.sampling = isinstance(self.groups, cgroup.SlotGroupsV2) and not cgroup.v2_peak_resets(
            self.groups.slot_dir(0)
        )
        if isinstance(self.groups, cgroup.SlotGroupsV1):
            for index in range(self.table.size):
                self._eventfds[self.groups.oom_eventfd(index)] = index
            self._eventfds[self.groups.oom_eventfd(None)] = None
        elif isinstance(self.groups, cgroup.SlotGroupsV2):
            for index in [*range(self.table.size), None]:
                self._events[self.groups.events_fd(index)] = index
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def usage(self, index: int, state: SlotState) -> int | None:
        try:
            return max(0, self._task_use(index, state))
        except OSError:
            return None

    def tasks_hold(self, running: int, children: int) -> int:
        """Everything the slots hold beyond their live children's own memory: running tasks, and what
        a killed slot is still freeing (no one's footprint)."""
        try:
            return max(running, self.groups.total_usage() - children)
        except OSError:
            return running

    def child_memory(self, index: int, state: SlotState) -> int | None:
        """What the slot holds with no task in it (its baseline while a task runs): the kernel
        charges the slot only the pages its members touched first."""
        if state.running:
            return state.baseline
        try:
            return self.groups.usage(index)
        except OSError:
            return None

    def claim_kill(self, task_id: str, pid: int | None) -> KillReport | None:
        report = super().claim_kill(task_id, pid)
        if report is None and isinstance(self.groups, cgroup.SlotGroupsV2) and pid is not None:
            report = self._v2_kill_proof(task_id, pid)
        return report

    def _v2_kill_proof(self, task_id: str, pid: int) -> KillReport | None:
        index = self.table.index_of(pid)
        if index is None:
            return None
        state = self.table.read(index)
        assert isinstance(self.groups, cgroup.SlotGroupsV2)
        if state.task_id != task_id or state.limit is None or self.groups.oom_kills(index) <= state.oom_kills:
            return None
        # The main process never reset memory.peak through its own fd (v2 resets
        # are per fd), so this is a lifetime peak; at an OOM kill the slot was
        # at its hard limit, which bounds the task's peak.
        peak = min(max(0, self.groups.peak(index) - state.baseline), state.limit + backstop(state.limit))
        return KillReport(task_id, pid, state.limit, peak, self.mode)

    def stop(self) -> None:
        self._stopping.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        super().stop()
        for efd in [*self._eventfds, *self._events]:
            os.close(efd)
        self._eventfds.clear()
        self._events.clear()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        killed = self.groups.remove(kill=True)
        if killed:
            logger.warning("oomless: killed %d processes still in slot cgroups at shutdown: %s", len(killed), killed)

    # -- pool child -----------------------------------------------------------
    def child_init(self, index: int, pid: int) -> None:
        self.groups.join(index, pid)
        self.groups.set_limit(index, None)
        # billiard gives a slot index to a new child only after the one before it exited:
        # whatever else is in the slot's group is what that child's task left behind.
        left = [member for member in self.groups.procs(index) if member != pid and not proc.exited(member)]
        if left:
            killed = self.killer.pids(left)
            logger.warning("oomless: slot %d held %d processes of its previous pool child's task; killed %s "
                           "before pool child %d runs a task", index, len(killed), killed, pid)
        super().child_init(index, pid)

    def measure_baseline(self, index: int, pid: int) -> int:
        self.groups.reset_peak(index)
        usage, self._shmem0 = self._start_usage(index)
        if self._clean is None:
            self._clean = (usage - self._shmem0, self._shmem0)
        if not self.groups.peak_resets(index):
            # cgroup v2 before Linux 6.12: memory.peak is the slot's lifetime peak (see measure_peak).
            self._peak0 = self.groups.peak(index)
            self._own0 = self.own.reset_peak()
        return usage

    def _start_usage(self, index: int) -> tuple[int, int]:
        """The slot's :meth:`~oomless.linux.cgroup.SlotGroups.usage_shmem` as a task starts.

        ``memory.stat`` (the page cache to leave out) is read again only when the
        slot's whole charge moved by more than :data:`STAT_MOVED` since the last
        reading, or after :data:`STAT_EVERY` tasks: between two short tasks it
        seldom moves, and reading it was a quarter of what a pool child spent on
        oomless per task.  Between readings the cache figure is stale by at most what
        the charge moved, unless anonymous memory and page cache moved by the same
        amount in opposite directions; the reading every ``STAT_EVERY`` tasks bounds that.
        """
        charge = self.groups.charge(index)
        last = self._stat
        if last is None or abs(charge - last[0]) > STAT_MOVED or self._stat_age >= STAT_EVERY:
            cache, shmem = self.groups.cache_shmem(index)
            self._stat, self._stat_age = (charge, cache, shmem), 0
        else:
            _, cache, shmem = last
            self._stat_age += 1
        return cgroup.unreclaimable(charge, cache, shmem), shmem

    def held(self, index: int) -> int | None:
        other, shmem = self._clean or (0, 0)
        left_shmem, left_other = self._shmem0 - shmem, self._baseline - self._shmem0 - other
        return self._shmem0 if left_shmem > LEFTOVER_SHMEM or left_other > LEFTOVER_WATCH else None

    def measure_peak(self, index: int, pid: int) -> int:
        peak = self.groups.peak(index)
        if self.groups.peak_resets(index) or peak > self._peak0:
            return peak  # per task; or, lifetime, a new high for the slot set by this task
        # cgroup v2 before Linux 6.12, and the task stayed below the slot's earlier high: its
        # peak is at most that high; the pool child's own high-water mark (as in watchdog mode)
        # above its start, what the slot holds now, and what the monitor sampled every 10 ms
        # (task_end takes the highest) bound it from below.
        return max(self.groups.usage(index), self._baseline + max(0, self.own.peak() - self._own0))

    def refused_at_limit(self, index: int) -> tuple[int, int] | None:
        if self._limit is None:
            return None
        peak = max(0, self.groups.peak(index) - self._baseline)
        # The charge that failed was one page or one write short of the limit.
        return (self._limit, peak) if peak >= self._limit - 2 * 2**20 else None

    def oom_count(self, index: int) -> int:
        if isinstance(self.groups, cgroup.SlotGroupsV2):
            return self.groups.oom_kills(index)
        return 0

    def arm(self, index: int, limit: int | None) -> None:
        if limit is None:
            return
        if not isinstance(self.groups, cgroup.SlotGroupsV2):
            self.groups.set_limit(index, self._baseline + limit)
            return
        if self._whole is not (not self._spare):
            self._whole = not self._spare
            self.groups.set_oom_group(index, self._whole)
        high = self._baseline + limit
        self.groups.set_limit(index, high + backstop(limit), high=high)

    def disarm(self, index: int) -> None:
        if self._limit is not None:
            self.groups.set_limit(index, None)
