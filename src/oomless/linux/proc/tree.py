"""Which processes there are and who they are: children, start times, parents, environments.

A PID is reused once its process is reaped; the start time (:func:`start_time`,
:class:`Identity`) is what tells two processes of one PID apart, and
:mod:`oomless.linux.kill` relies on it.  Also here: becoming the subreaper of
this process's orphans and reaping them.

Not here: how much memory a process holds (:mod:`.memory`); killing a tree
(:mod:`oomless.linux.kill`).
"""

from __future__ import annotations

import os

from .files import GONE, ROOT, UNREADABLE, entries, read

__all__ = [
    "children",
    "all_children",
    "ChildrenReader",
    "OwnChildren",
    "start_time",
    "parent_pid",
    "exited",
    "Identity",
    "identity",
    "pids",
    "environ_value",
    "environ_has",
    "set_child_subreaper",
    "reap_zombie_children",
]


def children(pid: int) -> list[int]:
    """Children forked by the main thread of ``pid`` (cheap; misses other threads' children)."""
    data = read(pid, f"task/{pid}/children")
    return [] if data is None else [int(p) for p in data.split()]


_PAGE = 4096


class ChildrenReader:
    """The children forked by the main thread of one process, from its kept-open
    ``task/PID/children`` file: a ``pread`` (about 1.5 µs here, against 17 µs to open and read the
    file by path, which the watchdog did for every running slot every 5 ms).

    The open file names the process it was opened for, not its PID: once that process is
    gone (even if its PID names another one) ``read()`` returns ``[]``.  Raises one of
    :data:`~.files.GONE` when the process is already gone; out of file descriptors, it reads
    by path (:func:`children`).
    """

    __slots__ = ("pid", "_fd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        try:
            self._fd = os.open(f"{ROOT}/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if isinstance(exc, GONE):
                raise
            self._fd = -1

    def read(self) -> list[int]:
        fd = self._fd
        if fd is None:
            return []
        if fd < 0:
            return children(self.pid)
        try:
            data = os.pread(fd, _PAGE, 0)
            if len(data) > _PAGE - 32:
                # The kernel hands a seq_file out a page at a time, in whole records ("<pid> ", at most
                # 12 bytes): a read this full may have more behind it.
                parts = [data]
                while data:
                    data = os.pread(fd, _PAGE, sum(map(len, parts)))
                    parts.append(data)
                data = b"".join(parts)
        except ProcessLookupError:
            return []
        return [int(p) for p in data.split()]

    def close(self) -> None:
        # getattr: __del__ also runs when __init__ failed (the process was already gone).
        fd = getattr(self, "_fd", None)
        if fd is not None and fd >= 0:
            os.close(fd)
        self._fd = None

    def __del__(self) -> None:
        self.close()


def all_children(pid: int) -> list[int]:
    """Children forked by any thread of ``pid``."""
    found: list[int] = []
    for tid in entries(pid, "task"):
        data = read(pid, f"task/{tid}/children")
        if data is not None:
            found.extend(int(p) for p in data.split())
    return found


class OwnChildren:
    """Whether this process has children (a pool child asks after every task).

    One ``waitid(P_ALL, WNOHANG | WNOWAIT)``: it fails with ``ECHILD`` when no
    thread of this process has a child, running or exited, and otherwise leaves
    every child as it is (nothing is reaped).  ``__WALL`` also counts children
    that report their end with another signal than ``SIGCHLD``.  About 2 µs,
    where reading ``/proc/self/stat`` for the thread count and then the
    threads' ``children`` files took 10-20 µs in a pool child.
    """

    def any(self) -> bool:
        try:
            os.waitid(os.P_ALL, 0, _ANY_CHILD)
        except ChildProcessError:
            return False
        return True


#: waitid() options of :meth:`OwnChildren.any`: exited children, without waiting or reaping, whatever
#: their exit signal (``__WALL``, not in the os module).
_ANY_CHILD = os.WEXITED | os.WNOHANG | os.WNOWAIT | 0x40000000


def _after_comm(data: bytes) -> list[bytes]:
    """Fields 3… of a ``stat`` line: ``comm`` (field 2) may contain spaces and parentheses, so the
    split starts after the last ')'."""
    return data[data.rindex(b")") + 2 :].split()


def _stat(pid: int) -> list[bytes] | None:
    """Fields 3… of ``/proc/PID/stat`` (after ``comm``), ``None`` if the process is gone."""
    data = read(pid, "stat")
    return None if data is None else _after_comm(data)


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of ``stat``), ``None`` if gone.

    Together with the PID it names a process uniquely: a reused PID has a later start time.
    """
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def parent_pid(pid: int) -> int | None:
    """Parent PID of ``pid``, ``None`` if gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def exited(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (dead, not yet reaped by its parent; it holds no memory,
    but a cgroup still lists it until then)."""
    fields = _stat(pid)
    return fields is None or fields[0] in (b"Z", b"X")


class Identity:
    """Who ``pid`` is: its parent, process group and start time (from one read of ``/proc/PID/stat``)."""

    __slots__ = ("pid", "ppid", "pgid", "start", "zombie")

    def __init__(self, pid: int, fields: list[bytes]) -> None:
        self.pid = pid
        self.zombie = fields[0] in (b"Z", b"X")
        self.ppid, self.pgid, self.start = int(fields[1]), int(fields[2]), int(fields[19])


def identity(pid: int) -> Identity | None:
    """:class:`Identity` of ``pid``, ``None`` if it is gone."""
    fields = _stat(pid)
    return None if fields is None else Identity(pid, fields)


def pids() -> list[int]:
    """Every PID visible in /proc (processes, not threads)."""
    return [int(name) for name in os.listdir(ROOT) if name.isdigit()]


def environ_value(pid: int, name: bytes) -> bytes | None:
    """The value of ``name`` in the environment ``pid`` was exec'd with, ``None`` if absent or unreadable."""
    data = read(pid, "environ", UNREADABLE)
    if data is None:
        return None
    prefix = name + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :]
    return None


def environ_has(pid: int, entry: bytes) -> bool:
    """Whether ``entry`` (``b"NAME=value"``) is in the environment ``pid`` was exec'd with.

    ``/proc/PID/environ`` shows the environment at the process's last
    ``execve``; a process forked without exec shows its parent's exec-time one.
    """
    data = read(pid, "environ", UNREADABLE)
    return data is not None and entry in data.split(b"\0")


_PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> None:
    """Make orphaned descendants of this process (a daemon's double fork, ``setsid``) its children
    instead of init's (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux >= 3.4).  Raises ``OSError``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def reap_zombie_children() -> list[int]:
    """Reap this process's children that have exited (orphans a subreaper adopted); return their PIDs.

    Only zombies are waited for, each by its PID: a running child's status stays
    for whoever started it.
    """
    reaped = []
    for child in all_children(os.getpid()):
        if exited(child):
            try:
                if os.waitpid(child, os.WNOHANG)[0] == child:
                    reaped.append(child)
            except ChildProcessError:
                pass
    return reaped
