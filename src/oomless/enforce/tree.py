"""What the watchdog knows of one pool child's process tree, and what its task uses.

A task's usage = (pool child RSS − its RSS at task start) + Σ (descendant RSS −
its RSS when first seen).  Subtracting the start RSS removes the pages the
child shares copy-on-write with the worker; subtracting a descendant's
first-seen RSS removes what a process forked *without* exec shares with its
parent (Airflow's task runner is such a fork of its supervisor: its RSS at
birth is the whole Airflow worker image, which it does not own).  The price:
a subprocess's footprint in its first poll interval (a few MiB for a freshly
exec'd program) is not charged.

tmpfs files the tree holds without mapping them are charged for what they grew
by during the task, less the growth of the tree's mapped shared memory (already
in RSS); :class:`~oomless.linux.proc.TmpfsFiles` finds them.

Not here: the poll over all slots, kills and eviction (:mod:`.watchdog`).
"""

from __future__ import annotations

from ..linux import proc
from .readers import Readers, RssReader
from .slots import SlotState

__all__ = ["Tree"]


class Tree:
    """What the watchdog knows of one pool child's process tree and its current task.

    Kept across tasks while the pool child lives: a new task only swaps
    :attr:`state` and resets :attr:`peak`, so short tasks cost the poller
    almost nothing.  Raises one of :data:`proc.GONE <oomless.linux.proc.GONE>`
    when the pool child is already gone.
    """

    __slots__ = ("state", "readers", "root", "root_start", "members", "born", "peak", "peak_now", "tmpfs",
                 "shmem_base")

    def __init__(self, state: SlotState, readers: Readers, tmpfs_devices: frozenset[int] = frozenset()) -> None:
        self.state = state
        self.readers = readers
        self.root = readers.statm(state.pid)
        self.root_start = readers.start_time(state.pid)
        self.members: dict[int, RssReader] = {}
        self.born: dict[int, int] = {}  # member pid -> its RSS when first seen
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
        readers = self.readers
        list_children = readers.all_children if full else readers.children
        todo = [self.root.pid, *self.members]
        tmpfs = self.tmpfs
        if tmpfs.devices:
            for pid in todo:
                tmpfs.look(pid, force=full)
        while todo:
            for child in list_children(todo.pop()):
                if child not in self.members:
                    try:
                        reader = readers.statm(child)
                    except proc.GONE:
                        continue
                    self.members[child] = reader
                    self.born[child] = reader.read() or 0
                    todo.append(child)

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
        mapped = sum(self.readers.rss_shmem(pid) for pid in (self.root.pid, *self.members))
        if self.shmem_base is None:
            self.shmem_base = mapped
        return max(0, grown - max(0, mapped - self.shmem_base))

    def close(self) -> None:
        self.root.close()
        for reader in self.members.values():
            reader.close()
