"""watchdog mode: poll every running slot's process tree and kill it on breach.

For hosts where cgroups are not writable (most containers).  A thread in the
worker *main* process polls; no task code runs there, so the poller is never
stuck behind a task's allocation loop holding the GIL (a poller sharing a GIL
with the allocating task overshot by up to 190 MiB when measured).

While no task runs and none was handed to the pool for :data:`IDLE_AFTER`
seconds, the monitor looks only every :data:`IDLE_POLL` seconds; the request
that hands a task to the pool wakes it at once (:meth:`~.base.Enforcer.dispatched`),
so a task is watched from its first poll.

Fast path, every ``interval`` (default 5 ms), one :meth:`~WatchdogEnforcer.tick`:
for each running slot, ``pread`` the kept-open ``/proc/PID/statm`` of the pool
child and of each known descendant (≈1.6 µs each).  New children of known
members are picked up every :data:`DISCOVER_EVERY` polls from their main
threads' kept-open ``children`` files; children forked by other threads on a
full rescan every ``rescan`` polls.
What a tree's task uses is :class:`~oomless.enforce.tree.Tree`'s to say (its
RSS above the task's start, tmpfs files it wrote); overshoot is bounded by
allocation rate × interval (about 1.5 MiB median at 1 GB/s with 5 ms polls,
see bench/RESULTS.md).

tmpfs (``/dev/shm``, memfd): pages written with ``write()`` and never mapped
are in no process's RSS.  The watchdog looks through the tree's open files
when their number changes (Linux >= 6.2 reports it cheaply; older kernels
every ``rescan`` polls), re-reads the size of every tmpfs file it found on
every poll while the file exists, and charges what those files grew by during
the task.  What it cannot see: a tmpfs file written and closed between two
looks, and a file another process (outside the tree) writes for the task.
cgroup mode has neither gap: the kernel charges tmpfs pages to the writer's slot.

Not here: what a tree holds (:mod:`.tree`), when to evict (:mod:`.pressure`,
:mod:`.eviction`); everything the monitor reads and signals goes through
:attr:`~.base.Enforcer.readers` and :attr:`~.base.Enforcer.killer`, so a test
drives :meth:`~WatchdogEnforcer.tick` with fake ones (``tests/enforce/``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from ..linux import proc
from .base import Enforcer
from .pressure import Headroom, Running
from .readers import Killer, Readers
from .reports import KillReport
from .slots import SlotState, SlotTable
from .tree import Tree

logger = logging.getLogger(__name__)

__all__ = ["WatchdogEnforcer", "IDLE_AFTER", "IDLE_POLL", "DISCOVER_EVERY"]

#: seconds without a running task or a task handed to the pool before the monitor idles
IDLE_AFTER = 1.0
#: seconds between the idle monitor's looks (a task handed to the pool wakes it at once)
IDLE_POLL = 0.1
#: a running task's tree is looked through for new processes and tmpfs files every this many
#: polls (its known members' RSS: every poll).  A member found a poll later is still charged what
#: it held of its own (see :class:`~.tree.Tree`); the monitor shares the worker's GIL, and each
#: /proc read hands it back to the main thread and takes it again.
DISCOVER_EVERY = 2


class WatchdogEnforcer(Enforcer):
    """Poll /proc from the worker main process; kill the tree that breaks its limit."""

    mode = "watchdog"

    def __init__(self, table: SlotTable, interval: float = 0.005, rescan: int = 20,
                 readers: Readers | None = None, killer: Killer | None = None) -> None:
        super().__init__(table, readers, killer)
        self.interval = interval
        self.rescan = rescan
        self._trees: dict[int, Tree] = {}
        self._seen = [-1] * table.size  # row sequence number at the last look
        self._running = [False] * table.size
        self._ticks = 0
        self._headroom: Headroom | None = None  # made as the monitor starts (eviction_margin is known by then)
        try:
            self._tmpfs_devices = self.readers.tmpfs_devices()
        except OSError as exc:
            logger.warning("oomless: cannot list tmpfs mounts (%s): tmpfs files tasks write are not charged", exc)
            self._tmpfs_devices = frozenset()

    def monitor(self) -> None:
        wait, tick, clock, stopping = self._stopping.wait, self.tick, time.monotonic, self._stopping
        # Every slot is looked at afresh.
        self._seen, self._running, self._ticks = [-1] * self.table.size, [False] * self.table.size, 0
        self._headroom = Headroom(self.eviction_margin, self.interval, clock())
        fast_until = 0.0
        while not stopping.is_set():
            now = clock()
            if self._kicked:  # a task was handed to the pool since the last look
                self._kicked = False
                fast_until = now + IDLE_AFTER
            if now < fast_until or any(self._running):
                if wait(self.interval):
                    break
            else:
                # Nothing runs and nothing was handed to the pool for a while: look every IDLE_POLL
                # only, and at once when dispatched() says a task is on its way.
                self._idle = True
                if not self._kicked:
                    self._wake.wait(IDLE_POLL)
                self._idle = False
                self._wake.clear()
                if stopping.is_set():
                    break
            tick(clock())
        for index in list(self._trees):
            self._drop(index)

    def tick(self, now: float) -> None:
        """One look at every slot (the monitor thread's, every ``interval``): follow each running
        task's tree, kill a task over its limit, and evict one under memory pressure.

        ``now``: a monotonic time, for the growth rate that widens the eviction margin.
        """
        table, trees, seen, running = self.table, self._trees, self._seen, self._running
        self._ticks += 1
        full = self._ticks % self.rescan == 0
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
                        tree = trees[index] = Tree(state, self.readers, self._tmpfs_devices)
                    except proc.GONE:
                        running[index] = False
                        continue
                else:
                    tree.next_task(state)
            elif not running[index] or tree is None:
                continue
            elif full or self._ticks % DISCOVER_EVERY == 0:
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
                self.kill_slot(index, self.limit_report(tree.state, used))
            else:
                total += max(0, used)
        if self.budget is not None and total:
            self._check_pressure(total, now)

    def _check_pressure(self, total: int, now: float) -> None:
        """Cheap test every poll; what is available to the worker every 0.1 s, or at once when what the
        tasks grew by since the last reading may have eaten the margin."""
        headroom = self._headroom
        if headroom is None:  # ticks driven without the thread: as if it had started one interval ago
            headroom = self._headroom = Headroom(self.eviction_margin, self.interval, now - self.interval)
        headroom.tasks_use(total, now)
        read = self._ticks % 20 == 0 or headroom.near()
        if read or total > self.budget:  # type: ignore[operator]
            available = headroom.read(self.available(), total) if read else None
            found = Running()
            for index, tree in self._trees.items():
                if self._running[index]:
                    found.add(index, tree.state, tree.peak_now)
            self.evict_for_pressure(found, read, available, headroom.margin())

    def usage(self, index: int, state: SlotState) -> int | None:
        tree = self._trees.get(index)
        if tree is not None and tree.state.seq == state.seq:
            return tree.peak_now  # the tree's usage at the last poll (a few ms old)
        return super().usage(index, state)

    def _orphaned(self, tree: Tree) -> None:
        """Kill what the dead pool child of ``tree`` left: the members this thread knew at once,
        then (on a thread of its own, a /proc scan takes milliseconds) every other one :meth:`sweep` finds."""
        killed = self.killer.members(tree.members.values())
        if killed:
            logger.warning("oomless: pool child %d died under task %s; killed its subprocesses %s",
                           tree.state.pid, tree.state.task_id, killed)
        threading.Thread(target=self.sweep, args=(tree.state.pid,), name="oomless-sweep", daemon=True).start()

    def _drop(self, index: int) -> None:
        self._trees.pop(index).close()

    def kill_slot(self, index: int, report: KillReport) -> None:
        """Kill the tree of slot ``index`` for ``report`` (filed first); the slot is not watched again
        until its row changes."""
        tree = self._trees[index]
        state = tree.state
        self.file_report(report)
        killed = self.killer.tree(state.pid, tree.root_start, spare_root=state.spare_root)
        if state.spare_root and not killed:
            # The spared pool child itself is over (it has no subprocesses): it goes too.
            self.file_report(dataclasses.replace(report, spared=False))
            killed = self.killer.tree(state.pid, tree.root_start)
        if killed:
            self.announce_kill(state.task_id)
        else:
            self.withdraw_report(state.task_id)
        self._drop(index)
        self._running[index] = False
