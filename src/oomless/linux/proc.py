"""Readers for /proc: resident memory, high-water marks, PSS, children, start times.

Fast path: :class:`StatmReader` keeps ``/proc/PID/statm`` open and ``pread``\\ s it
(about 1.6 µs a call on these machines), which is what the watchdog polls.
Slow path: :func:`pss` reads ``smaps_rollup`` (about 1.8 ms for a 200 MB
process): fine at task end or once a second, not in the fast loop.
"""

from __future__ import annotations

import os
from typing import Any

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

__all__ = [
    "PAGE_SIZE",
    "malloc_trim",
    "StatmReader",
    "rss",
    "pss",
    "children",
    "all_children",
    "start_time",
    "mem_total",
    "oom_kills",
    "Identity",
    "identity",
    "environ_has",
    "environ_value",
    "pids",
    "set_child_subreaper",
    "reap_zombie_children",
    "tmpfs_devices",
    "TmpfsFiles",
    "rss_shmem",
]


class StatmReader:
    """Resident bytes of one process from a kept-open ``/proc/PID/statm``.

    ``read()`` returns ``None`` once the process is gone (or its PID now names
    another process: the open file keeps referring to the original one).
    """

    __slots__ = ("pid", "_fd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)

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


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/statm", "rb") as fh:
        return int(fh.read().split()[1]) * PAGE_SIZE


def _status_kib(pid: int, field: bytes) -> int:
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise LookupError(f"/proc/{pid}/status has no {field.decode()} line")


def _rollup(pid: int, *keys: bytes) -> int:
    """The sum of ``keys`` (``b"Pss:"``, …) in ``/proc/PID/smaps_rollup``, in bytes."""
    total, found = 0, False
    with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
        for line in fh:
            if line.startswith(keys):
                total, found = total + int(line.split()[1]) * 1024, True
    if not found:
        raise LookupError(f"/proc/{pid}/smaps_rollup has no {b', '.join(keys).decode()} line")
    return total


def pss(pid: int) -> int:
    """Proportional set size of ``pid``: shared pages divided among their sharers."""
    return _rollup(pid, b"Pss:")


def uss(pid: int) -> int:
    """Unique set size of ``pid``: the pages only it maps (what starting one more such process costs)."""
    return _rollup(pid, b"Private_Clean:", b"Private_Dirty:")


def children(pid: int) -> list[int]:
    """Children forked by the main thread of ``pid`` (cheap; misses other threads' children)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as fh:
            return [int(p) for p in fh.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def all_children(pid: int) -> list[int]:
    """Children forked by any thread of ``pid``."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                found.extend(int(p) for p in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _stat(pid: int) -> list[bytes] | None:
    """Fields 3… of ``/proc/PID/stat`` (after ``comm``), ``None`` if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of ``stat``), ``None`` if gone.

    Together with the PID it names a process uniquely: a reused PID has a later start time.
    """
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


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
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def environ_value(pid: int, name: bytes) -> bytes | None:
    """The value of ``name`` in the environment ``pid`` was exec'd with, ``None`` if absent or unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    prefix = name + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):]
    return None


def environ_has(pid: int, entry: bytes) -> bool:
    """Whether ``entry`` (``b"NAME=value"``) is in the environment ``pid`` was exec'd with.

    ``/proc/PID/environ`` shows the environment at the process's last
    ``execve``; a process forked without exec shows its parent's exec-time one.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return entry in fh.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


_PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> None:
    """Make orphaned descendants of this process (a daemon's double fork, ``setsid``) its children
    instead of init's (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux >= 3.4).  Raises ``OSError``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


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


def tmpfs_devices(mountinfo: str = "/proc/self/mountinfo") -> frozenset[int]:
    """Device numbers of every tmpfs mount here (/dev/shm, /run, a tmpfs /tmp), plus the kernel's
    internal one behind ``memfd_create`` and ``shm_open`` files that are not in any mount."""
    devices = set()
    with open(mountinfo) as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] in ("tmpfs", "shm"):
                major, minor = left.split()[2].split(":")
                devices.add(os.makedev(int(major), int(minor)))
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("oomless-probe", os.MFD_CLOEXEC)
        try:
            devices.add(os.fstat(fd).st_dev)
        finally:
            os.close(fd)
    return frozenset(devices)


class TmpfsFiles:
    """Bytes held by tmpfs files a process tree has open, or had open and did not delete.

    tmpfs (``/dev/shm``, memfd) pages written with ``write()`` and never mapped
    are in nobody's RSS; they are memory all the same.  This looks through the
    members' open files (``/proc/PID/fd``) and keeps the files it found, by path,
    while they exist.  ``bytes()`` is what those files hold beyond their size
    when first seen.  A file written and closed between two looks is not seen.
    """

    __slots__ = ("devices", "files", "counts")

    def __init__(self, devices: frozenset[int]) -> None:
        self.devices = devices
        #: (dev, inode) -> [a path that reaches it, bytes when first seen, bytes now]
        self.files: dict[tuple[int, int], list] = {}
        self.counts: dict[int, int] = {}  # member pid -> its number of open files at the last look

    def look(self, pid: int, force: bool, new: bool = True) -> None:
        """Find tmpfs files ``pid`` has open.

        ``force``: list its descriptors; else only when its number of open files
        changed (Linux >= 6.2 reports it as the size of ``/proc/PID/fd``; older
        kernels report 0, and their files are found only on forced looks).
        ``new``: files found now are the task's own, all of their bytes count;
        else (the task's first look) only what they grow by.
        """
        base = f"/proc/{pid}/fd"
        try:
            count = os.stat(base).st_size
            if not force and (count == 0 or self.counts.get(pid) == count):
                return
            self.counts[pid] = count
            names = os.listdir(base)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return
        files, devices = self.files, self.devices
        for name in names:
            path = f"{base}/{name}"
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_dev not in devices or (st.st_mode & 0o170000) != 0o100000:
                continue
            key = (st.st_dev, st.st_ino)
            if key not in files:
                try:
                    target = os.readlink(path)
                except OSError:
                    continue
                # A deleted or anonymous (memfd) file is reachable only through the descriptor.
                reach = path if target.endswith(" (deleted)") or not target.startswith("/") else target
                size = st.st_blocks * 512
                files[key] = [reach, 0 if new else size, size]

    def refresh(self) -> int:
        """Re-read the size of every file found; forget the ones that are gone. Returns :meth:`bytes`."""
        gone = []
        for key, entry in self.files.items():
            try:
                st = os.stat(entry[0])
            except OSError:
                gone.append(key)
                continue
            if (st.st_dev, st.st_ino) != key:
                gone.append(key)
                continue
            entry[2] = st.st_blocks * 512
        for key in gone:
            del self.files[key]
        return self.bytes()

    def bytes(self) -> int:
        return sum(max(0, now - first) for _, first, now in self.files.values())

    def rebase(self) -> None:
        """A new task starts: from now on only growth beyond the files' current sizes counts."""
        for entry in self.files.values():
            entry[1] = entry[2]

    def known(self) -> bool:
        return bool(self.files)


def rss_shmem(pid: int) -> int:
    """Resident shared memory (tmpfs, shm, shared anonymous) ``pid`` maps (``RssShmem``), 0 if gone."""
    try:
        return _status_kib(pid, b"RssShmem:")
    except (FileNotFoundError, ProcessLookupError, LookupError):
        return 0


def parent_pid(pid: int) -> int | None:
    """Parent PID of ``pid``, ``None`` if gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def exited(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (dead, not yet reaped by its parent; it holds no memory,
    but a cgroup still lists it until then)."""
    fields = _stat(pid)
    return fields is None or fields[0] in (b"Z", b"X")


class OwnMemory:
    """This process's RSS, peak RSS and peak reset, through kept-open /proc files.

    A pool child reads these around every task: pread on open files costs a
    third of open/read/close.  Re-opens itself after a fork (files of
    ``/proc/self`` opened before the fork still describe the parent).
    """

    def __init__(self) -> None:
        self._pid = -1
        self._statm = self._status = self._clear_refs = -1

    def _open(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            self._statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
            self._status = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
            self._clear_refs = os.open(f"/proc/{pid}/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
            self._pid = pid

    def rss(self) -> int:
        self._open()
        return int(os.pread(self._statm, 128, 0).split(None, 2)[1]) * PAGE_SIZE

    def peak(self) -> int:
        """``VmHWM``: peak RSS since start or the last :meth:`reset_peak`."""
        self._open()
        data = os.pread(self._status, 8192, 0)
        at = data.index(b"VmHWM:") + 6
        return int(data[at : data.index(b"kB", at)]) * 1024

    def reset_peak(self) -> None:
        self._open()
        os.write(self._clear_refs, b"5")


def _meminfo(field: bytes) -> int:
    with open("/proc/meminfo", "rb") as fh:
        for line in fh:
            if line.startswith(field + b":"):
                return int(line.split()[1]) * 1024
    raise LookupError(f"/proc/meminfo has no {field.decode()} line")


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
        with open("/proc/vmstat", "rb") as fh:
            for line in fh:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def oom_score_adj(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/oom_score_adj") as fh:
        return int(fh.read())


def set_oom_score_adj(value: int, pid: int | str = "self") -> None:
    """Make ``pid`` a likelier (positive) or less likely (negative) OOM-killer victim."""
    with open(f"/proc/{pid}/oom_score_adj", "w") as fh:
        fh.write(str(value))
