"""watchdog mode: poll every running slot's process tree and kill it on breach.

For hosts where cgroups are not writable (most containers).  A thread in the
worker *main* process polls; no task code runs there, so the poller is never
stuck behind a task's allocation loop holding the GIL (a poller sharing a GIL
with the allocating task overshot by up to 190 MiB when measured).

Fast path, every ``interval`` (default 5 ms): for each running slot, ``pread``
the kept-open ``/proc/PID/statm`` of the pool child and of each known
descendant (≈1.6 µs each).  New children of known members are picked up on
every poll from the main thread's ``children`` file; children forked by other
threads on a full rescan every ``rescan`` polls.

A task's usage = (pool child RSS − its RSS at task start) + Σ (descendant RSS −
its RSS when first seen).  Subtracting the start RSS removes the pages the
child shares copy-on-write with the worker; subtracting a descendant's
first-seen RSS removes what a process forked *without* exec shares with its
parent (Airflow's task runner is such a fork of its supervisor: its RSS at
birth is the whole Airflow worker image, which it does not own).  The price:
a subprocess's footprint in its first poll interval (a few MiB for a freshly
exec'd program) is not charged.  Overshoot is bounded by allocation rate ×
interval (about 1.5 MiB median at 1 GB/s with 5 ms polls, see bench/RESULTS.md).

tmpfs (``/dev/shm``, memfd): pages written with ``write()`` and never mapped
are in no process's RSS.  The watchdog looks through the tree's open files
when their number changes (Linux >= 6.2 reports it cheaply; older kernels
every ``rescan`` polls), re-reads the size of every tmpfs file it found on
every poll while the file exists, and charges what those files grew by during
the task, less the growth of the tree's mapped shared memory (already in RSS).
What it cannot see: a tmpfs file written and closed between two looks, and a
file another process (outside the tree) writes for the task.  cgroup mode has
neither gap: the kernel charges tmpfs pages to the writer's slot.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time

from ..linux import proc
from ..linux.kill import kill_tree, pidfd, send_signal
from .base import Enforcer, KillReport
from .eviction import Use
from .slots import SlotState, SlotTable

logger = logging.getLogger(__name__)

__all__ = ["WatchdogEnforcer"]


class _Tree:
    """What the watchdog knows of one pool child's process tree and its current task.

    Kept across tasks while the pool child lives: a new task only swaps
    :attr:`state` and resets :attr:`peak`, so short tasks cost the poller
    almost nothing.
    """

    __slots__ = ("state", "root", "root_start", "members", "born", "peak", "peak_now", "tmpfs", "shmem_base")

    def __init__(self, state: SlotState, tmpfs_devices: frozenset[int] = frozenset()) -> None:
        self.state = state
        self.root = proc.StatmReader(state.pid)
        self.root_start = proc.start_time(state.pid)
        self.members: dict[int, proc.StatmReader] = {}
        self.born: dict[int, int] = {}  # member pid -> its RSS when first seen
        self.peak = 0
        self.peak_now = 0  # usage at the last poll
        self.tmpfs = proc.TmpfsFiles(tmpfs_devices)
        self.shmem_base: int | None = None  # mapped shared memory of the tree when a tmpfs file was first found
        self.discover(full=True)

    def next_task(self, state: SlotState) -> None:
        """The pool child started another task: it is charged only from here on."""
        self.state, self.peak = state, 0
        self.tmpfs.rebase()
        self.shmem_base = None

    def discover(self, full: bool) -> None:
        list_children = proc.all_children if full else proc.children
        todo = [self.root.pid, *self.members]
        tmpfs = self.tmpfs
        if tmpfs.devices:
            for pid in todo:
                tmpfs.look(pid, force=full)
        while todo:
            for child in list_children(todo.pop()):
                if child not in self.members:
                    try:
                        reader = proc.StatmReader(child)
                    except (FileNotFoundError, ProcessLookupError):
                        continue
                    self.members[child] = reader
                    self.born[child] = reader.read() or 0
                    todo.append(child)

    def usage(self) -> int | None:
        own = self.root.read()
        if own is None:
            return None
        total = own - self.state.baseline
        gone = []
        born = self.born
        for pid, reader in self.members.items():
            value = reader.read()
            if value is None:
                gone.append(pid)
            else:
                grown = value - born[pid]
                if grown > 0:
                    total += grown
        for pid in gone:
            del self.members[pid], born[pid]
        if self.tmpfs.known():
            total += self.tmpfs_bytes()
        return total

    def tmpfs_bytes(self) -> int:
        """What the tree's tmpfs files grew by in this task and is not mapped (so not in any RSS)."""
        grown = self.tmpfs.refresh()
        if not grown:
            return 0
        mapped = sum(proc.rss_shmem(pid) for pid in (self.root.pid, *self.members))
        if self.shmem_base is None:
            self.shmem_base = mapped
        return max(0, grown - max(0, mapped - self.shmem_base))

    def kill_members(self) -> list[int]:
        """SIGKILL the descendants still alive of a root that died (each proven by its open statm file)."""
        killed = []
        for pid, reader in self.members.items():
            fd = pidfd(pid)
            if fd is None:
                continue
            try:
                if reader.read() is not None:  # alive after the pidfd was opened: the pidfd is that process
                    send_signal(fd, signal.SIGKILL)
                    killed.append(pid)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
        return killed

    def close(self) -> None:
        self.root.close()
        for reader in self.members.values():
            reader.close()


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

    def __init__(self, margin: int, interval: float) -> None:
        self.base, self.interval = margin, interval
        self.last: int | None = None  # available at the last reading
        self.at = 0  # the tasks' total use at that reading
        self.total, self.since = 0, time.monotonic()
        self.rate = 0.0  # bytes/s, the fastest growth seen lately
        self.dt = interval  # seconds between the last two polls (longer than asked on a loaded machine)

    def tasks_use(self, total: int) -> None:
        """The tasks together use ``total`` now (every poll)."""
        now = time.monotonic()
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


class WatchdogEnforcer(Enforcer):
    """Poll /proc from the worker main process; kill the tree that breaks its limit."""

    mode = "watchdog"

    def __init__(self, table: SlotTable, interval: float = 0.005, rescan: int = 20) -> None:
        super().__init__(table)
        self.interval = interval
        self.rescan = rescan
        self._trees: dict[int, _Tree] = {}
        try:
            self._tmpfs_devices = proc.tmpfs_devices()
        except OSError as exc:
            logger.warning("oomless: cannot list tmpfs mounts (%s): tmpfs files tasks write are not charged", exc)
            self._tmpfs_devices = frozenset()

    def monitor(self) -> None:
        wait = self._stopping.wait
        table = self.table
        trees = self._trees
        seen = [-1] * table.size  # row sequence number at the last look
        running = [False] * table.size
        tick = 0
        evicting = self.budget is not None
        headroom = Headroom(self.eviction_margin, self.interval)
        while not wait(self.interval):
            tick += 1
            full = tick % self.rescan == 0
            total = 0
            for index in range(table.size):
                seq = table.seq(index)
                tree = trees.get(index)
                if seq != seen[index]:
                    # The slot started or finished a task since the last poll.
                    state = table.read(index)
                    seen[index] = state.seq
                    running[index] = state.running
                    if tree is not None and (tree.state.pid != state.pid or tree.root_start is None):
                        self._drop(index)
                        tree = None
                    if not state.running:
                        continue
                    if tree is None:
                        try:
                            tree = trees[index] = _Tree(state, self._tmpfs_devices)
                        except (FileNotFoundError, ProcessLookupError):
                            running[index] = False
                            continue
                    else:
                        tree.next_task(state)
                elif not running[index] or tree is None:
                    continue
                else:
                    tree.discover(full)
                used = tree.usage()
                tree.peak_now = used or 0
                if used is None:
                    # The pool child died under its task (killed from outside, crashed).
                    self._orphaned(tree)
                    self._drop(index)
                    running[index] = False
                    continue
                if used > tree.peak:
                    tree.peak = used
                    if tree.members:
                        # Only a tree sees more than the child's own high-water mark.
                        table.publish_tree_peak(index, tree.state.seq, used)
                limit = tree.state.limit
                if limit is not None and used > limit:
                    self._kill(index, tree, used)
                    running[index] = False
                else:
                    total += max(0, used)
            # Cheap test every poll; what is available to the worker every 0.1 s, or at once when
            # what the tasks grew by since the last reading may have eaten the margin.
            if evicting and total:
                headroom.tasks_use(total)
                read = tick % 20 == 0 or headroom.near()
                if read or total > self.budget:  # type: ignore[operator]
                    available = headroom.read(self.available(), total) if read else None
                    uses = [
                        Use(i, t.state.request or 0, t.peak_now, t.state.start_ns)
                        for i, t in trees.items() if running[i]
                    ]
                    found = self.pressure(uses, read, available, headroom.margin())
                else:
                    found = None
                if found is not None:
                    victim, why = found
                    index = int(victim.key)  # type: ignore[call-overload]
                    tree = trees[index]
                    self._kill(index, tree, victim.used, self.eviction_report(tree.state, victim, why))
                    running[index] = False
        for index in list(trees):
            self._drop(index)

    def usage(self, index: int, state: SlotState) -> int | None:
        tree = self._trees.get(index)
        if tree is not None and tree.state.seq == state.seq:
            return tree.peak_now  # the tree's usage at the last poll (a few ms old)
        return super().usage(index, state)

    def _orphaned(self, tree: _Tree) -> None:
        """Kill what the dead pool child of ``tree`` left: the members this thread knew at once,
        then (on a thread of its own, a /proc scan takes milliseconds) every other one :meth:`sweep` finds."""
        killed = tree.kill_members()
        if killed:
            logger.warning("oomless: pool child %d died under task %s; killed its subprocesses %s",
                           tree.state.pid, tree.state.task_id, killed)
        threading.Thread(target=self.sweep, args=(tree.state.pid,), name="oomless-sweep", daemon=True).start()

    def _drop(self, index: int) -> None:
        self._trees.pop(index).close()

    def _kill(self, index: int, tree: _Tree, used: int, report: KillReport | None = None) -> None:
        state = tree.state
        if report is None:
            assert state.limit is not None
            report = KillReport(state.task_id, state.pid, state.limit, used, self.mode, spared=state.spare_root)
        self.file_report(report)
        killed = kill_tree(state.pid, tree.root_start, spare_root=state.spare_root)
        if state.spare_root and not killed:
            # The spared pool child itself is over (it has no subprocesses): it goes too.
            self.file_report(dataclasses.replace(report, spared=False))
            killed = kill_tree(state.pid, tree.root_start)
        if killed:
            self.announce_kill(state.task_id)
        else:
            self._reports.pop(state.task_id, None)
        self._drop(index)

    # -- pool child -----------------------------------------------------------
    def measure_baseline(self, index: int, pid: int) -> int:
        self.own.reset_peak()
        return self.own.rss()

    def measure_peak(self, index: int, pid: int) -> int:
        return self.own.peak()
