"""Memory of processes and of the machine, from /proc: resident set, peak, PSS, what is free.

Fast path: :class:`StatmReader` keeps ``/proc/PID/statm`` open and ``pread``\\ s it
(about 1.6 µs a call on these machines), which is what the watchdog polls;
:class:`OwnMemory` does the same for this process's RSS, peak and peak reset.
Slow path: :func:`pss` reads ``smaps_rollup`` (about 1.8 ms for a 200 MB
process): fine at task end or once a second, not in the fast loop.

Not here: which processes make a tree (:mod:`.tree`), tmpfs files nobody maps
(:mod:`.tmpfs`), a cgroup's charge (:mod:`oomless.linux.cgroup`).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from typing import Any

from .files import GONE, ROOT, path, self_pid

__all__ = [
    "PAGE_SIZE",
    "StatmReader",
    "OwnMemory",
    "rss",
    "rss_shmem",
    "pss",
    "shared",
    "uss",
    "mem_total",
    "mem_available",
    "oom_kills",
    "oom_score_adj",
    "set_oom_score_adj",
    "malloc_trim",
]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class StatmReader:
    """Resident bytes of one process from a kept-open ``/proc/PID/statm``.

    ``read()`` returns ``None`` once the process is gone (or its PID now names
    another process: the open file keeps referring to the original one).
    """

    __slots__ = ("pid", "_fd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = os.open(path(pid, "statm"), os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> int | None:
        fd = self._fd
        if fd is None:
            return None
        try:
            data = os.pread(fd, 128, 0)
        except ProcessLookupError:
            self.close()
            return None
        if not data:
            self.close()
            return None
        return int(data.split(None, 2)[1]) * PAGE_SIZE

    def close(self) -> None:
        # getattr: __del__ also runs when __init__ failed (the process was already gone).
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


class OwnMemory:
    """This process's RSS, peak RSS and peak reset, through kept-open /proc files.

    A pool child reads these around every task: pread on open files costs a
    third of open/read/close.  Re-opens itself after a fork (files of
    ``/proc/self`` opened before the fork still describe the parent).

    The peak comes from ``getrusage`` (a system call, no text to parse) when it
    can: ``ru_maxrss`` is the larger of the high-water mark :meth:`reset_peak`
    resets and the highest mark any thread of this process had when it
    exited.  While the latter is no higher than what the process holds at the
    reset, ``ru_maxrss`` *is* the peak since the reset; after a task whose
    threads exited at a higher mark, ``VmHWM`` is read from ``status`` instead.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._statm = self._status = self._clear_refs = -1
        self._rusage = False  # whether ru_maxrss answers peak() since the last reset

    def _open(self) -> None:
        pid = self_pid()
        if pid != self._pid:
            self._statm = os.open(path(pid, "statm"), os.O_RDONLY | os.O_CLOEXEC)
            self._status = os.open(path(pid, "status"), os.O_RDONLY | os.O_CLOEXEC)
            self._clear_refs = os.open(path(pid, "clear_refs"), os.O_WRONLY | os.O_CLOEXEC)
            self._pid, self._rusage = pid, False

    def rss(self) -> int:
        self._open()
        return int(os.pread(self._statm, 128, 0).split(None, 2)[1]) * PAGE_SIZE

    def peak(self) -> int:
        """Peak RSS since start or the last :meth:`reset_peak`."""
        self._open()
        if self._rusage:
            return _maxrss()
        return self.hwm()

    def hwm(self) -> int:
        """``VmHWM`` from ``status`` (what :meth:`peak` says, the slow way)."""
        self._open()
        data = os.pread(self._status, 8192, 0)
        at = data.index(b"VmHWM:") + 6
        return int(data[at : data.index(b"kB", at)]) * 1024

    def reset_peak(self) -> int:
        """Start the peak again from what the process holds now; returns that (:meth:`rss`)."""
        self._open()
        os.write(self._clear_refs, b"5")
        high = _maxrss()
        now = self.rss()
        # The kernel's RSS counters are per-CPU and summed approximately: a few hundred KiB of slack
        # (a peak at most that much too high, where an exited process image's mark sits right there).
        self._rusage = high <= now + _SLACK
        return now


_SLACK = 2**20


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(path(pid, "statm"), "rb") as fh:
        return int(fh.read().split()[1]) * PAGE_SIZE


def _kib(lines: Iterable[bytes], *keys: bytes) -> int | None:
    """The sum of the ``Key:   N kB`` lines of ``keys`` (each there once) in ``lines``, in bytes;
    ``None`` when none is there.  Stops at the last one: the rest of the file is not even read."""
    total, found = 0, 0
    for line in lines:
        if line.startswith(keys):
            total += int(line.split()[1]) * 1024
            found += 1
            if found == len(keys):
                break
    return total if found else None


def rss_shmem(pid: int) -> int:
    """Resident shared memory (tmpfs, shm, shared anonymous) ``pid`` maps (``RssShmem``), 0 if gone."""
    try:
        with open(path(pid, "status"), "rb") as fh:
            return _kib(fh, b"RssShmem:") or 0
    except GONE:
        return 0


def _rollup(pid: int, *keys: bytes) -> int:
    """The sum of ``keys`` (``b"Pss:"``, …) in ``/proc/PID/smaps_rollup``, in bytes."""
    where = path(pid, "smaps_rollup")
    with open(where, "rb") as fh:
        total = _kib(fh, *keys)
    if total is None:
        raise LookupError(f"{where} has no {b', '.join(keys).decode()} line")
    return total


def pss(pid: int) -> int:
    """Proportional set size of ``pid``: shared pages divided among their sharers."""
    return _rollup(pid, b"Pss:")


def shared(pid: int) -> int:
    """Resident bytes ``pid`` shares with other processes (pages another process maps too: a fork's
    copy-on-write pages, libraries), from ``smaps_rollup``: a walk of its page tables."""
    return _rollup(pid, b"Shared_Clean:", b"Shared_Dirty:")


def uss(pid: int) -> int:
    """Unique set size of ``pid``: the pages only it maps (what starting one more such process costs)."""
    return _rollup(pid, b"Private_Clean:", b"Private_Dirty:")


def _meminfo(field: bytes) -> int:
    with open(f"{ROOT}/meminfo", "rb") as fh:
        value = _kib(fh, field + b":")
    if value is None:
        raise LookupError(f"{ROOT}/meminfo has no {field.decode()} line")
    return value


def mem_total() -> int:
    """Physical memory of the machine (``MemTotal``) in bytes."""
    return _meminfo(b"MemTotal")


def mem_available() -> int:
    """Memory the kernel can still hand out without swapping (``MemAvailable``), in bytes."""
    return _meminfo(b"MemAvailable")


def oom_kills() -> int | None:
    """Processes the kernel's OOM killer has killed on this machine since boot (``oom_kill`` in
    /proc/vmstat, Linux >= 4.13; also inside containers), ``None`` where it is not reported."""
    try:
        with open(f"{ROOT}/vmstat", "rb") as fh:
            for line in fh:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def oom_score_adj(pid: int | str = "self") -> int:
    """How much likelier (positive) or less likely (negative) ``pid`` is to be the OOM killer's victim."""
    with open(path(pid, "oom_score_adj")) as fh:
        return int(fh.read())


def set_oom_score_adj(value: int, pid: int | str = "self") -> None:
    """Make ``pid`` a likelier (positive) or less likely (negative) OOM-killer victim."""
    with open(path(pid, "oom_score_adj"), "w") as fh:
        fh.write(str(value))


_malloc_trim: Any = None


def malloc_trim() -> bool:
    """Give the C heap's free memory back to the kernel (glibc ``malloc_trim(0)``); whether any was.

    glibc keeps freed heap memory resident: after freeing a large block it raises
    its mmap and trim thresholds (up to 32 and 64 MiB), so a process that once
    held a few hundred MiB can keep tens of MiB it no longer uses.  A no-op
    (``False``) where the C library has no ``malloc_trim`` (musl).
    """
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes

        _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
        if _malloc_trim:
            _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(_malloc_trim and _malloc_trim(0))
