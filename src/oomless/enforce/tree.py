"""What the watchdog knows of one pool child's process tree, and what its task uses.

A task's usage = (pool child RSS − its RSS at task start) + Σ (descendant RSS −
what it shared when first seen).  Subtracting the start RSS removes the pages
the child shares copy-on-write with the worker; subtracting what a descendant
shared when first seen removes what a process forked *without* exec shares
with its parent (Airflow's task runner is such a fork of its supervisor: its
RSS at birth is mostly the Airflow worker image, which it does not own), while
what it had allocated before the monitor first saw it counts.  A member whose
RSS falls below that is charged from its lowest on; one first seen between its
vfork and its exec (Python's subprocess) holds exactly its parent's RSS, the
parent's pages, and is charged nothing of it.  A descendant
first seen under :data:`WALK_FROM` is taken as all shared (a few MiB of a
freshly exec'd program not charged; no page-table walk for each ``sleep``).

tmpfs files the tree holds without mapping them are charged for what they grew
by during the task, less the growth of the tree's mapped shared memory (already
in RSS); :class:`~oomless.linux.proc.TmpfsFiles` finds them.

Not here: the poll over all slots, kills and eviction (:mod:`.watchdog`).
"""

from __future__ import annotations

import logging

from ..linux import proc
from .readers import ChildrenLister, Readers, RssReader
from .slots import SlotState

logger = logging.getLogger(__name__)

__all__ = ["Tree", "WALK_FROM"]

#: A new member first seen holding this much or more has its shared pages counted
#: (``smaps_rollup``, about 1 ms per 100 MiB); a smaller one is taken as all shared.
WALK_FROM = 4 * 2**20


class Tree:
    """What the watchdog knows of one pool child's process tree and its current task.

    Kept across tasks while the pool child lives: a new task only swaps
    :attr:`state` and resets :attr:`peak`, so short tasks cost the poller
    almost nothing.  Raises one of :data:`proc.GONE <oomless.linux.proc.GONE>`
    when the pool child is already gone.
    """

    __slots__ = ("state", "readers", "root", "root_start", "members", "kids", "born", "peak", "peak_now",
                 "tmpfs", "shmem_base")

    def __init__(self, state: SlotState, readers: Readers, tmpfs_devices: frozenset[int] = frozenset()) -> None:
        self.state = state
        self.readers = readers
        self.root = readers.statm(state.pid)
        self.kids: dict[int, ChildrenLister] = {}  # every member's and the root's children, kept open
        self.kids[state.pid] = readers.children(state.pid)
        self.root_start = readers.start_time(state.pid)
        self.members: dict[int, RssReader] = {}
        self.born: dict[int, int] = {}  # member pid -> what of its RSS it shared when first seen
        self.peak = 0
        self.peak_now = 0  # usage at the last poll
        self.tmpfs = readers.tmpfs_files(tmpfs_devices)
        self.shmem_base: int | None = None  # mapped shared memory of the tree when a tmpfs file was first found
        self.discover(full=True)

    def next_task(self, state: SlotState) -> None:
        """The pool child started another task: it is charged only from here on."""
        self.state, self.peak = state, 0
        self.tmpfs.rebase()
        self.shmem_base = None

    def discover(self, full: bool) -> None:
        """Pick up new descendants: children of the main threads of known members (``full``: of every
        thread; also look for tmpfs files afresh)."""
        readers, kids, members = self.readers, self.kids, self.members
        todo = [self.root.pid, *members]
        tmpfs = self.tmpfs
        if tmpfs.devices:
            for pid in todo:
                tmpfs.look(pid, force=full)
        while todo:
            pid = todo.pop()
            for child in readers.all_children(pid) if full else kids[pid].read():
                if child not in members and self._join(child, pid):
                    todo.append(child)

    def _join(self, pid: int, parent: int) -> bool:
        """Keep ``pid`` (a child of ``parent``) open as a member of the tree; ``False`` if it is
        already gone (or, out of file descriptors, not now: the next poll tries again)."""
        try:
            reader = self.readers.statm(pid)
        except proc.GONE:
            return False
        except OSError as exc:
            _out_of_descriptors(pid, exc)
            return False
        try:
            self.kids[pid] = self.readers.children(pid)
        except OSError as exc:
            reader.close()
            if not isinstance(exc, proc.GONE):
                _out_of_descriptors(pid, exc)
            return False
        self.members[pid] = reader
        rss = reader.read() or 0
        self.born[pid] = rss if self._in_parents_memory(parent, rss) else self._shared_at_birth(pid, rss)
        return True

    def _in_parents_memory(self, parent: int, rss: int) -> bool:
        """Whether a new member still runs in its parent's address space: a child of vfork (Python's
        subprocess, posix_spawn) before its exec reads exactly its parent's RSS, the parent's
        pages, all of them already charged (its smaps shows them private: not "shared")."""
        reader = self.root if parent == self.root.pid else self.members.get(parent)
        return reader is not None and rss > 0 and reader.read() == rss

    def _shared_at_birth(self, pid: int, rss: int) -> int:
        """What of a new member's first-seen ``rss`` is not its own: the pages it shares (a fork
        without exec shares its parent's).  Its own pages count from the first look, so a
        subprocess that allocated before the monitor first saw it (a loaded machine: tens of ms)
        is charged for them.  A small one is taken as all shared (no page-table walk for it)."""
        if rss < WALK_FROM:
            return rss
        try:
            return min(rss, self.readers.shared(pid))
        except (*proc.UNREADABLE, LookupError):
            return rss

    def usage(self) -> int | None:
        """What the task uses now, above its baseline; ``None`` once the pool child is gone."""
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
                elif grown < 0:
                    # It holds less than it was taken to share: it exec'd (a child of subprocess'
                    # vfork, first seen before its exec, showed its parent's memory) or let shared
                    # pages go.  Charged from its lowest on, as the cgroup monitor does a slot's.
                    born[pid] = value
        for pid in gone:
            self.members.pop(pid).close()
            self.kids.pop(pid).close()
            self.tmpfs.forget(pid)
            del born[pid]
        if self.tmpfs.known():
            total += self.tmpfs_bytes()
        return total

    def tmpfs_bytes(self) -> int:
        """What the tree's tmpfs files grew by in this task and is not mapped (so not in any RSS)."""
        grown = self.tmpfs.refresh()
        if not grown:
            return 0
        mapped = sum(self.readers.rss_shmem(pid) for pid in (self.root.pid, *self.members))
        if self.shmem_base is None:
            self.shmem_base = mapped
        return max(0, grown - max(0, mapped - self.shmem_base))

    def close(self) -> None:
        self.root.close()
        for reader in self.members.values():
            reader.close()
        for lister in self.kids.values():
            lister.close()
        self.tmpfs.close()


_warned = False


def _out_of_descriptors(pid: int, exc: OSError) -> None:
    """Opening a member's files failed for another reason than its exit (``EMFILE``): said once."""
    global _warned
    if not _warned:
        _warned = True
        logger.warning("oomless: cannot watch process %d of a task's tree (%s); it is retried on every "
                       "poll (raise the worker's open-file limit, ulimit -n)", pid, exc)
