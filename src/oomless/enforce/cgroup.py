"""cgroup mode: the kernel enforces each slot's limit; the governor decides and proves.

Each pool child lives in its own memory cgroup from birth (``slot-<index>``
below ``<worker group>/oomless-<pid>-<start>``).  Before a task runs the child
sets ``limit = baseline + task limit``, so the kernel never lets the slot's
tree (child and every subprocess, however it daemonizes) go over: overshoot 0.

v1: with ``oom_kill_disable`` the kernel pauses the slot at its limit and
signals an eventfd; the monitor thread reads the peak, files the report, and
SIGKILLs every member of the slot group.  v2 has no such pause: the slot's
``memory.high`` is its limit, where the kernel starts to throttle it and
notifies ``memory.events``; the monitor, woken by that (or by its own poll),
finds the task over its limit and kills it as on v1 (only the subprocesses of
a ``memory_scope="subprocesses"`` task).  ``memory.max`` sits
:func:`backstop` above: only a task that outruns the monitor meets the
kernel's OOM killer, which then takes the slot's whole tree
(``memory.oom.group``; only the largest process for a subprocess-scoped task)
and ``memory.events`` proves it when Celery reports the pool child lost.

Memory an earlier task left in the slot (a file in /dev/shm, a pool child's
global it filled) is in the next task's baseline; were that task to free it,
the kernel limit (baseline + limit) would let it use that much more.  So when
a task starts on top of such leftovers (more than :data:`LEFTOVER_SHMEM` of
tmpfs, or :data:`LEFTOVER_WATCH` of other memory, above the pool child's
first baseline), the monitor polls its slot every 10 ms and charges it what it grew
by above the lowest the slot's non-tmpfs memory has been during the task,
plus tmpfs above what the slot held at its start; over its limit, it is
killed like any other breach.  tmpfs leftovers freed by anyone are never
credited to the task; non-tmpfs leftovers freed and reused within one poll
are (the kernel limit still holds the slot to baseline + limit).

Not covered here: page cache the task caused counts in the slot's usage (the
kernel charges it), so a task's reported peak includes cache it read; the
kernel reclaims that cache before it would ever reach the limit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import time

from ..linux import cgroup, proc
from ..linux.kill import kill_pids
from ..units import format_size
from .base import Enforcer, KillReport
from .eviction import Use, choose_victim
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


class CgroupEnforcer(Enforcer):
    """Per-slot memory cgroups below the worker's own group."""

    mode = "cgroup"

    def __init__(self, table: SlotTable, host: cgroup.CgroupHost, worker_pid: int | None = None) -> None:
        super().__init__(table)
        assert host.path is not None
        self.host = host
        base = os.path.join(host.path, cgroup.group_name(worker_pid))
        self.groups = cgroup.slot_groups(host.version, base)
        self._eventfds: dict[int, int | None] = {}  # eventfd -> slot index (None: the slots' shared group)
        self._events: dict[int, int | None] = {}  # v2: memory.events fd -> slot index (None: the base group)
        self._whole: bool | None = None  # v2 pool child: its slot's memory.oom.group as last written
        self._shared_limit: int | None = None
        self._wake_r, self._wake_w = -1, -1
        #: monitor: slot -> [row seq of the task, lowest non-tmpfs usage of the slot during it]
        self._lowest: dict[int, list[int]] = {}
        #: monitor: slot -> [row seq of the task, highest use sampled] (when ``sampling``)
        self._sampled: dict[int, list[int]] = {}
        self.sampling = False
        # pool-child half: non-tmpfs usage at the child's first task, tmpfs at the running task's start
        self._clean: tuple[int, int] | None = None
        self._shmem0 = 0
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
                                self._kill_slot(index)
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
        uses, states, fast = [], {}, False
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
                    self._kill_slot(index, self._freed_leftovers(state, used))
                    continue
            if self._events and state.limit is not None and used > state.limit:
                self._kill_slot(index, self._over_limit(state, used))  # v2: a memory.events notice missed
                continue
            request = state.request or 0
            # A task that declared a request it may outgrow; tasks with no spec at all are
            # checked at the slower pace, so plain Celery tasks pay (almost) nothing.
            fast = fast or (state.request is not None and (state.limit is None or state.limit > request))
            uses.append(Use(index, request, used, state.start_ns))
            states[index] = state
        if not evicting:
            return 0.01 if fast else 0.1
        found = self.pressure(uses, check_available=not fast or checks % 10 == 0)
        if found is not None:
            victim, why = found
            index = int(victim.key)  # type: ignore[call-overload]
            self._kill_slot(index, self.eviction_report(states[index], victim, why))
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
        limit = max(held + 16 * 2**20, held + self.available() - headroom)
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
            uses, states = [], {}
            for index in range(self.table.size):
                state = self.table.read(index)
                if state.running:
                    try:
                        uses.append(Use(index, state.request or 0, self._task_use(index, state), state.start_ns))
                    except OSError:
                        continue
                    states[index] = state
            victim = choose_victim(uses)
            if victim is None:
                # Pool children alone fill it (no task runs): lift the limit; the next fit sets it again.
                logger.warning("oomless: the slots together reached their shared limit of %s with no task "
                               "running; lifting it", format_size(limit or 0))
                self.groups.set_total_limit(None)
                self._shared_limit = None
                return
            index = int(victim.key)  # type: ignore[call-overload]
            self._kill_slot(index, self.eviction_report(states[index], victim, why))
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
            self._kill_slot(index, self._over_limit(state, used))

    def _over_limit(self, state: SlotState, used: int) -> KillReport:
        assert state.limit is not None
        return KillReport(state.task_id, state.pid, state.limit, used, self.mode, spared=state.spare_root)

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
        assert state.limit is not None
        return KillReport(state.task_id, state.pid, state.limit, used, self.mode, spared=state.spare_root)

    def _kill_slot(self, index: int, given: KillReport | None = None) -> None:
        """Kill the slot's tree: at its kernel limit (``given`` is ``None``), or for the reason ``given``."""
        state = self.table.read(index)
        peak = max(0, self.groups.peak(index) - state.baseline)
        # A task with memory_scope="subprocesses" keeps its pool child (Airflow's supervisor).
        spare = state.pid if state.running and state.spare_root else None
        members = [pid for pid in self.groups.procs(index) if pid != spare]
        if spare is not None and not members:
            spare, members = None, self.groups.procs(index)  # the child itself is over: nothing else to kill
        if given is not None:
            if given.task_id != state.task_id or not state.running:
                return  # the task ended meanwhile
            self.file_report(dataclasses.replace(given, killed=tuple(members), spared=spare is not None))
        elif state.running and state.limit is not None:
            self.file_report(KillReport(
                state.task_id, state.pid, state.limit, peak, self.mode, tuple(members), spared=spare is not None
            ))
        else:
            logger.warning("oomless: slot %d hit its memory limit with no task running; killing %s", index, members)
        if spare is None and members and isinstance(self.groups, cgroup.SlotGroupsV2):
            self.groups.kill_all(index)  # the whole slot at once; what is left below gets SIGKILL by PID
        deadline = time.monotonic() + 5
        first = True
        while members and time.monotonic() < deadline:
            kill_pids(members)
            if first and spare is not None:
                # v1 (oom_kill_disable): the spared child may itself be paused at the limit, and a
                # killed member in a non-killable wait; lifting the limit wakes them (the kernel's
                # OOM recovery), and no one else is left to charge it before the task ends (disarm).
                self.groups.release(index)
            first = False
            time.sleep(0.005)
            if spare is not None and self.table.seq(index) != state.seq:
                break  # the spared child finished that task; what it starts now is not ours to kill
            # A killed process stays listed until its parent reaps it; for a spared child that
            # is the task's business (Airflow's supervisor), and waiting for it would hold up
            # this thread and every other slot.
            members = [pid for pid in self.groups.procs(index) if pid != spare and not proc.exited(pid)]
        if members:
            logger.error("oomless: slot %d still has members %s 5 s after SIGKILL", index, members)
        if state.running and (state.limit is not None or given is not None):
            self.announce_kill(state.task_id)

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
            killed = kill_pids(left)
            logger.warning("oomless: slot %d held %d processes of its previous pool child's task; killed %s "
                           "before pool child %d runs a task", index, len(killed), killed, pid)
        super().child_init(index, pid)

    def measure_baseline(self, index: int, pid: int) -> int:
        self.groups.reset_peak(index)
        usage, self._shmem0 = self.groups.usage_shmem(index)
        if self._clean is None:
            self._clean = (usage - self._shmem0, self._shmem0)
        if not self.groups.peak_resets(index):
            # cgroup v2 before Linux 6.12: memory.peak is the slot's lifetime peak (see measure_peak).
            self._peak0 = self.groups.peak(index)
            self.own.reset_peak()
            self._own0 = self.own.rss()
        return usage

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
