"""What the enforcers read and signal in the main process, as two objects a test can replace.

:class:`Readers` holds the :mod:`oomless.linux` readers the monitors and the
footprint use (a process tree's members and their RSS, what the machine or
the worker's cgroup has available, the worker group's pressure signals);
:class:`Killer` holds the ways they kill.  Both default to the real ones, so
a worker never passes them; ``tests/enforce/`` gives fakes to drive a monitor
tick in-process with made-up readings, and a killer that signals nobody (as
dask's worker memory manager reads process memory through one mockable API).

Not here: what the pool child reads of itself (:class:`~oomless.linux.proc.OwnMemory`,
and its slot's cgroup files in cgroup mode), which no monitor tick touches; a
slot cgroup's own files, read through :class:`~oomless.linux.cgroup.SlotGroups`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..linux import cgroup, proc
from ..linux.kill import kill_matching, kill_orphans, kill_pids, kill_tree, pidfd, send_signal

__all__ = ["RssReader", "ChildrenLister", "Signals", "Readers", "Killer", "kill_members"]


class RssReader(Protocol):
    """A kept-open reader of one process's resident bytes (:class:`~oomless.linux.proc.StatmReader`)."""

    pid: int

    def read(self) -> int | None:
        """Resident bytes now; ``None`` once the process is gone."""

    def close(self) -> None:
        """Let the process's file go."""


class ChildrenLister(Protocol):
    """A kept-open list of the children one process's main thread forked
    (:class:`~oomless.linux.proc.ChildrenReader`)."""

    pid: int

    def read(self) -> list[int]:
        """Their PIDs now; ``[]`` once the process is gone."""

    def close(self) -> None:
        """Let the process's file go."""


class Signals(Protocol):
    """cgroup v2: the worker group's pressure signals (:class:`~oomless.linux.cgroup.GroupSignals`)."""

    def read(self) -> tuple[dict[str, int], float | None, float | None]:
        """(growth of each local event counter, % of the time some / all tasks stalled on memory)."""

    def close(self) -> None:
        """Let the files go."""


@dataclass(frozen=True)
class Readers:
    """Where the main process reads processes and memory from (each field: the real reader by default).

    ``statm`` opens a kept-open RSS reader and raises one of
    :data:`proc.GONE <oomless.linux.proc.GONE>` for a process that is gone;
    the others return what the :mod:`oomless.linux` function of that name returns.
    """

    statm: Callable[[int], RssReader] = proc.StatmReader
    start_time: Callable[[int], int | None] = proc.start_time
    #: children forked by a process's main thread (a kept-open reader, every poll) / by any of its threads
    children: Callable[[int], ChildrenLister] = proc.ChildrenReader
    all_children: Callable[[int], list[int]] = proc.all_children
    exited: Callable[[int], bool] = proc.exited
    rss: Callable[[int], int] = proc.rss
    uss: Callable[[int], int] = proc.uss
    shared: Callable[[int], int] = proc.shared
    rss_shmem: Callable[[int], int] = proc.rss_shmem
    tmpfs_devices: Callable[[], frozenset[int]] = proc.tmpfs_devices
    tmpfs_files: Callable[[frozenset[int]], proc.TmpfsFiles] = proc.TmpfsFiles
    mem_total: Callable[[], int] = proc.mem_total
    mem_available: Callable[[], int] = proc.mem_available
    #: what a memory cgroup (version, path) holds that cannot be reclaimed, ``None`` if unreadable
    working_set: Callable[[int, str], int | None] = cgroup.working_set
    group_signals: Callable[[str], Signals] = cgroup.GroupSignals


def kill_members(members: Iterable[RssReader]) -> list[int]:
    """SIGKILL each process whose kept-open reader still reads (the descendants of a pool child that
    died, each proven by its open statm file); returns the PIDs signalled."""
    killed = []
    for reader in members:
        fd = pidfd(reader.pid)
        if fd is None:
            continue
        try:
            if reader.read() is not None:  # alive after the pidfd was opened: the pidfd is that process
                send_signal(fd, signal.SIGKILL)
                killed.append(reader.pid)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
    return killed


@dataclass(frozen=True)
class Killer:
    """How an enforcer kills (each field: the :mod:`oomless.linux.kill` function by default); every
    signal an enforcer sends goes through one of these."""

    #: a slot's tree: ``tree(root, root_start_time, spare_root=False)`` -> the PIDs signalled
    tree: Callable[..., list[int]] = kill_tree
    #: PIDs already proven the slot's (its cgroup's members)
    pids: Callable[[list[int]], list[int]] = kill_pids
    #: the descendants a dead pool child's tree still had, each proven by its kept-open reader
    members: Callable[[Iterable[RssReader]], list[int]] = kill_members
    #: what is left of a dead pool child's tree: ``orphans(leader, leader_start, marker)``
    orphans: Callable[[int, int | None, bytes | None], list[int]] = kill_orphans
    #: every process a test proves is ours (what a dead run of this worker left)
    matching: Callable[[Callable[[int], bool]], list[int]] = kill_matching
