"""Memory cgroups for slots: find the worker's own group, make one child group per slot.

cgroup v1 (``memory`` controller mounted on its own): each slot group gets
``memory.oom_control`` = 1 (``oom_kill_disable``), so at its limit the kernel
*pauses* the slot's processes and signals an eventfd instead of picking a
victim; the governor then reads the peak and kills the slot's whole tree itself.

cgroup v2 (unified hierarchy, ``memory`` in ``cgroup.controllers``): there is
no oom_kill_disable; a slot gets ``memory.oom.group`` = 1 so the kernel kills
the slot's tree as a unit, and ``memory.events`` (``oom_kill``) proves it.
v2 needs the worker's group to be *delegated* (writable, and no processes of
its own besides the worker, "no internal processes" rule).

Charges stay with the group a page was first charged to, so a process must
join its slot group at birth and never move while a task runs.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import time
from dataclasses import dataclass

from . import proc

__all__ = ["CgroupHost", "detect", "SlotGroupsV1", "SlotGroupsV2", "UNLIMITED"]

#: Anything at or above this is the kernel's "no limit".
UNLIMITED = 2**62


@dataclass(frozen=True)
class CgroupHost:
    """What this host offers for memory cgroups, as seen from this process."""

    version: int | None  # 1, 2, or None when no memory controller is reachable
    path: str | None  # filesystem path of this process's memory cgroup
    writable: bool
    limit: int | None  # memory limit of this group (or an ancestor), None: unlimited
    reason: str  # one sentence: why (not) usable
    root: str | None = None  # where the hierarchy is mounted (limits are read from path up to it)

    @property
    def usable(self) -> bool:
        return self.writable and self.path is not None


def _mounts() -> list[tuple[str, str, str]]:
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _source, super_opts = (right.split() + ["", "", ""])[:3]
            found.append((fields[4], fstype, super_opts))
    return found


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            raw = fh.read().strip()
    except OSError:
        return None
    if raw == "max":
        return None
    value = int(raw)
    return None if value >= UNLIMITED else value


def working_set(version: int, path: str) -> int | None:
    """Bytes charged to the memory cgroup at ``path`` (and below) that are not reclaimable
    page cache, or ``None`` when it cannot be read.  Opens the files each call: for checks a
    few times a second, not for the hot loop."""
    usage_file, cache_key, shmem_key = (
        ("memory.usage_in_bytes", "total_cache", "total_shmem") if version == 1 else ("memory.current", "file", "shmem")
    )
    used = _read_int(os.path.join(path, usage_file))
    if used is None:
        return None
    stats: dict[str, int] = {}
    try:
        with open(os.path.join(path, "memory.stat")) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key in (cache_key, shmem_key):
                    stats[key] = int(value)
    except (OSError, ValueError):
        return None
    return max(0, used - (stats.get(cache_key, 0) - stats.get(shmem_key, 0)))


def _limit_up(path: str, root: str, filename: str) -> int | None:
    """Smallest limit on ``path`` or any ancestor up to the mount ``root``."""
    best: int | None = None
    while True:
        value = _read_int(os.path.join(path, filename))
        if value is not None:
            best = value if best is None else min(best, value)
        if os.path.normpath(path) == os.path.normpath(root) or len(path) <= len(root):
            return best
        path = os.path.dirname(path)


def detect(proc_cgroup: str = "/proc/self/cgroup") -> CgroupHost:
    """Find this process's memory cgroup and whether slot groups can be made below it."""
    mounts = _mounts()
    with open(proc_cgroup) as fh:
        lines = [line.rstrip("\n").split(":", 2) for line in fh if line.strip()]
    v1_rel = next((rel for _id, ctrls, rel in lines if "memory" in ctrls.split(",")), None)
    if v1_rel is not None:
        root = next((mp for mp, fstype, opts in mounts if fstype == "cgroup" and "memory" in opts.split(",")), None)
        if root is None:
            return CgroupHost(1, None, False, None, "cgroup v1 memory controller is listed but not mounted here")
        path = os.path.normpath(root + v1_rel)
        limit = _limit_up(path, root, "memory.limit_in_bytes")
        if not os.access(path, os.W_OK):
            why = f"cgroup v1 memory group {path} is not writable by this user"
            return CgroupHost(1, path, False, limit, why, root)
        return CgroupHost(1, path, True, limit, f"cgroup v1 memory group {path} is writable", root)
    v2_rel = next((rel for hid, ctrls, rel in lines if hid == "0" and ctrls == ""), None)
    root2 = next((mp for mp, fstype, _ in mounts if fstype == "cgroup2"), None)
    if v2_rel is None or root2 is None:
        return CgroupHost(None, None, False, None, "no memory cgroup controller is mounted on this host")
    path = os.path.normpath(root2 + v2_rel)
    try:
        with open(os.path.join(path, "cgroup.controllers")) as fh:
            controllers = fh.read().split()
    except OSError:
        controllers = []
    if "memory" not in controllers:
        return CgroupHost(2, path, False, None, f"cgroup v2 group {path} has no memory controller (cgroup.controllers)")
    limit = _limit_up(path, root2, "memory.max")
    reason = v2_delegation_problem(path)
    if reason:
        return CgroupHost(2, path, False, limit, reason, root2)
    return CgroupHost(2, path, True, limit, f"cgroup v2 group {path} is delegated and writable", root2)


class GroupSignals:
    """cgroup v2: the pressure signals of one group (the worker's own), read through kept-open files.

    ``memory.events.local`` counts what happened at this group's own limits (not its slots');
    ``memory.pressure`` is PSI, absent on kernels without it (``CONFIG_PSI``, ``psi=0``).  Both
    are read over the same sliding window of at least :attr:`WINDOW` seconds: PSI's ``avg10``
    moves only every 2 s and lags a stall, so the share of time stalled is taken from its
    ``total`` (microseconds, current at every read) instead.
    """

    WINDOW = 2.0

    def __init__(self, path: str) -> None:
        self.path = path
        self._fds = {name: _open_ro(os.path.join(path, name)) for name in ("memory.events.local", "memory.pressure")}
        psi = self._fds["memory.pressure"]
        if psi is not None:
            try:
                os.pread(psi, 4096, 0)
            except OSError:  # a kernel booted with psi=0 keeps the file and refuses to read it (EOPNOTSUPP)
                os.close(psi)
                self._fds["memory.pressure"] = None
        #: (when, event counters, PSI some total, PSI full total), the oldest at or before the window's start
        self._looks: collections.deque[tuple[float, dict[str, int], int, int]] = collections.deque()

    @property
    def has_psi(self) -> bool:
        return self._fds["memory.pressure"] is not None

    def read(self, now: float | None = None) -> tuple[dict[str, int], float | None, float | None]:
        """(growth of each local event counter, % of the time some / all of the group's tasks
        stalled on memory), over the last :attr:`WINDOW` seconds or since the previous look if
        that was longer ago (up to 3 windows; a look after a longer gap starts again); the first
        look only sets where counting starts.  PSI ``None``: no PSI."""
        now = time.monotonic() if now is None else now
        events: dict[str, int] = {}
        fd = self._fds["memory.events.local"]
        if fd is not None:
            events = {k.decode(): int(v) for k, v in (ln.split() for ln in os.pread(fd, 4096, 0).splitlines() if ln)}
        totals = {"some": 0, "full": 0}
        psi = self._fds["memory.pressure"]
        if psi is not None:
            for line in os.pread(psi, 4096, 0).decode().splitlines():
                kind, _, rest = line.partition(" ")
                totals[kind] = int(dict(f.split("=") for f in rest.split())["total"])
        looks = self._looks
        if looks and looks[-1][0] < now - 3 * self.WINDOW:
            looks.clear()  # no look for a while (no task ran): what happened then is no task's doing
        looks.append((now, events, totals["some"], totals["full"]))
        while len(looks) > 1 and looks[1][0] <= now - self.WINDOW:
            looks.popleft()
        then, before, some0, full0 = looks[0]
        grown = {k: v - before.get(k, 0) for k, v in events.items() if v > before.get(k, 0)}
        if psi is None:
            return grown, None, None
        span = (now - then) * 1e6
        if span <= 0:
            return grown, 0.0, 0.0
        return grown, 100 * (totals["some"] - some0) / span, 100 * (totals["full"] - full0) / span

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)


def _open_ro(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def current_limit(host: CgroupHost) -> int | None:
    """The memory limit of ``host``'s group or its tightest ancestor, read now (``None``: none, or
    no group); a limit changed at run time (a Kubernetes in-place resize, ``systemctl
    set-property … MemoryMax=``) shows here.  A few small reads: once a second, not per task."""
    if host.path is None or host.root is None or host.version is None:
        return host.limit
    return _limit_up(host.path, host.root, "memory.limit_in_bytes" if host.version == 1 else "memory.max")


def v2_delegation_problem(path: str, me: int | None = None) -> str | None:
    """Why slot groups cannot be made below the v2 group ``path``, or ``None`` if they can.

    The "no internal processes" rule: a group that enables the memory
    controller for its children may hold no processes itself.  The worker moves
    itself and its own descendants (``airflow celery worker`` starts a bundle
    cleanup process before the pool) into a leaf of its own
    (``<base>/worker``) to satisfy it, which works only when no other process
    is in the group, or when the controller is already enabled there (the
    group is then empty of processes already).
    """
    if _read_only(path):
        return (
            f"cgroup v2 group {path} is mounted read-only (a container's view of its own cgroup): "
            f"its memory.max is the budget's ceiling, the watchdog enforces"
        )
    if not os.access(path, os.W_OK) or not os.access(os.path.join(path, "cgroup.subtree_control"), os.W_OK):
        return f"cgroup v2 group {path} is not delegated to this user (not writable)"
    if "memory" in _words(os.path.join(path, "cgroup.subtree_control")):
        return None
    me = os.getpid() if me is None else me
    others = [p for p in _pids(os.path.join(path, "cgroup.procs")) if p not in _family(me)]
    if others:
        shown = ", ".join(map(str, others[:5])) + (" …" if len(others) > 5 else "")
        return (
            f"cgroup v2 group {path} holds other processes besides this one ({shown}), so the memory "
            f"controller cannot be enabled for slot groups below it (cgroup v2 \"no internal processes\" rule); "
            f"run the worker alone in a delegated group (systemd: Delegate=yes; a container with its own cgroup)"
        )
    return None


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _family(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    found, todo = {pid}, [pid]
    while todo:
        for child in proc.all_children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _words(path: str) -> list[str]:
    try:
        with open(path) as fh:
            return fh.read().split()
    except OSError:
        return []


def _pids(path: str) -> list[int]:
    return [int(p) for p in _words(path) if p.isdigit()]


def _rmdir(path: str) -> None:
    """Remove an empty group; one that is gone already is fine."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # Members we cannot see (another PID namespace) or that would not die.
        raise OSError(exc.errno, f"could not remove {path}: {exc.strerror}") from None


def slot_groups(version: int | None, base: str) -> SlotGroups:
    """The slot groups of a base group on cgroup ``version`` (1 or 2)."""
    return SlotGroupsV1(base) if version == 1 else SlotGroupsV2(base)


def _write(path: str, value: str | int) -> None:
    with open(path, "w") as fh:
        fh.write(str(value))


class SlotGroups:
    """One memory cgroup per slot below ``base`` (``<worker group>/oomless-<pid>-<start>``)."""

    version = 0

    def __init__(self, base: str) -> None:
        self.base = base
        self._fds: dict[tuple[int, str, int], int] = {}

    # A pool child touches its slot's files around every task: keep them open
    # and pread/pwrite them (0.3–3 µs) instead of open/parse/close (9–35 µs).
    def _fd(self, index: int, name: str, flags: int) -> int:
        key = (index, name, flags)
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = os.open(os.path.join(self.slot_dir(index), name), flags | os.O_CLOEXEC)
        return fd

    def _get(self, index: int, name: str) -> bytes:
        return os.pread(self._fd(index, name, os.O_RDONLY), 4096, 0)

    def _set(self, index: int, name: str, value: str | int) -> None:
        # Control files take each write whole; offsets mean nothing (pwrite: ESPIPE).
        os.write(self._fd(index, name, os.O_WRONLY), str(value).encode())

    def _stat(self, index: int, *keys: bytes) -> list[int]:
        """Values of ``key value`` lines of the slot's memory.stat (0 when absent), read once."""
        data = b"\n" + os.pread(self._fd(index, "memory.stat", os.O_RDONLY), 65536, 0)
        values = []
        for key in keys:
            at = data.find(b"\n" + key + b" ")
            if at < 0:
                values.append(0)
                continue
            start = at + len(key) + 2
            end = data.find(b"\n", start)
            values.append(int(data[start : end if end >= 0 else None]))
        return values

    def close_files(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def slot_dir(self, index: int) -> str:
        return os.path.join(self.base, f"slot-{index}")

    # -- main process -----------------------------------------------------
    def create(self, count: int) -> None:
        os.makedirs(self.base, exist_ok=True)
        for index in range(count):
            os.makedirs(self.slot_dir(index), exist_ok=True)
            self._prepare_slot(index)

    def _prepare_slot(self, index: int) -> None:
        raise NotImplementedError

    def procs(self, index: int) -> list[int]:
        try:
            with open(os.path.join(self.slot_dir(index), "cgroup.procs")) as fh:
                return [int(p) for p in fh.read().split()]
        except FileNotFoundError:
            return []

    def slots(self) -> list[int]:
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return []
        return sorted(int(n[5:]) for n in names if n.startswith("slot-") and n[5:].isdigit())

    def remove(self, kill: bool = True, attempts: int = 50) -> list[int]:
        """Remove every slot group and the base; SIGKILL leftover members first if ``kill``.

        Returns the PIDs killed.  Members are ours by construction: a process
        is only ever in a slot group because a pool child joined it at birth.
        """
        killed = self._remove_slots(kill, attempts)
        _rmdir(self.base)
        return killed

    def _remove_slots(self, kill: bool, attempts: int) -> list[int]:
        from .kill import kill_pids

        self.close_files()
        killed: list[int] = []
        for index in self.slots():
            path = self.slot_dir(index)
            for _ in range(attempts):
                members = self.procs(index)
                if members and kill:
                    self.release(index)
                    # A killed member stays listed until its parent reaps it: count it once.
                    killed.extend(pid for pid in kill_pids(members) if pid not in killed)
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    select.select([], [], [], 0.02)
        return killed

    def release(self, index: int) -> None:
        """Let paused members run again so a kill can complete (v1 oom_kill_disable)."""

    def set_total_limit(self, limit: int | None) -> None:
        """Limit what the slots hold together (``None``: no limit): at it the kernel stalls them
        instead of OOM-killing, and says so (v1: ``memory.limit_in_bytes`` of the slots' parent with
        the OOM killer off; v2: ``memory.high`` of the base group, the worker's leaf included)."""

    def total_usage(self) -> int:
        """What the slots hold together."""
        return sum(self.usage(index) for index in self.slots())

    def shared_usage(self) -> int:
        """What the group :meth:`set_total_limit` limits holds that is not page cache."""
        return self.total_usage()

    def at_total_limit(self) -> bool:
        """Whether the slots are stalled at the limit :meth:`set_total_limit` set."""
        return False

    # -- pool child (its own slot only) -------------------------------------
    def join(self, index: int, pid: int) -> None:
        _write(os.path.join(self.slot_dir(index), "cgroup.procs"), pid)

    def set_limit(self, index: int, limit: int | None) -> None:
        raise NotImplementedError

    def usage(self, index: int) -> int:
        """Bytes charged to the slot that are not page cache (what a task cannot give back)."""
        return self.usage_shmem(index)[0]

    def usage_shmem(self, index: int) -> tuple[int, int]:
        """:meth:`usage` and the part of it that is tmpfs/shared memory (files that outlive their writer)."""
        raise NotImplementedError

    def reset_peak(self, index: int) -> None:
        raise NotImplementedError

    def peak(self, index: int) -> int:
        raise NotImplementedError

    def peak_resets(self, index: int) -> bool:
        """Whether :meth:`reset_peak` makes :meth:`peak` per task (else it is the slot's lifetime peak)."""
        return True


class SlotGroupsV1(SlotGroups):
    """Slot groups on the cgroup v1 memory controller."""

    version = 1

    def _prepare_slot(self, index: int) -> None:
        path = self.slot_dir(index)
        # The governor, not the kernel, picks the victim and proves why.
        _write(os.path.join(path, "memory.oom_control"), 1)
        _write(os.path.join(path, "memory.limit_in_bytes"), -1)

    def release(self, index: int) -> None:
        try:
            _write(os.path.join(self.slot_dir(index), "memory.limit_in_bytes"), -1)
        except OSError:
            pass

    def set_limit(self, index: int, limit: int | None) -> None:
        self._set(index, "memory.limit_in_bytes", -1 if limit is None else limit)

    def usage_shmem(self, index: int) -> tuple[int, int]:
        used = int(self._get(index, "memory.usage_in_bytes"))
        # tmpfs and shared memory sit in "cache" but cannot be reclaimed.
        cache, shmem = self._stat(index, b"total_cache", b"total_shmem")
        return max(0, used - (cache - shmem)), shmem

    def reset_peak(self, index: int) -> None:
        self._set(index, "memory.max_usage_in_bytes", 0)

    def peak(self, index: int) -> int:
        return int(self._get(index, "memory.max_usage_in_bytes"))

    def create(self, count: int) -> None:
        super().create(count)
        # The slots together: paused at their shared limit too, never OOM-killed by the kernel
        # (see set_total_limit); no limit until the worker has measured what it may be.
        _write(os.path.join(self.base, "memory.oom_control"), 1)

    def oom_eventfd(self, index: int | None) -> int:
        """An eventfd that becomes readable when the slot (``None``: all slots together) hits its limit."""
        path = self.base if index is None else self.slot_dir(index)
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        ofd = os.open(os.path.join(path, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _write(os.path.join(path, "cgroup.event_control"), f"{efd} {ofd}")
        finally:
            # The kernel holds its own reference to the control file.
            os.close(ofd)
        return efd

    def at_total_limit(self) -> bool:
        return self.under_oom(None)

    def under_oom(self, index: int | None) -> bool:
        """Whether the slot (``None``: the slots' shared group) is paused at its limit."""
        path = self.base if index is None else self.slot_dir(index)
        with open(os.path.join(path, "memory.oom_control")) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "under_oom":
                    return value.strip() == "1"
        return False

    def set_total_limit(self, limit: int | None) -> None:
        """Limit what the slots hold together (their shared parent group; ``None``: no limit).

        Raises ``OSError`` (EBUSY) when the slots hold more than ``limit`` and the
        kernel cannot reclaim enough cache to go below it.
        """
        _write(os.path.join(self.base, "memory.limit_in_bytes"), -1 if limit is None else limit)

    def total_usage(self) -> int:
        """What the slots hold together that is not page cache."""
        return working_set(1, self.base) or 0


class SlotGroupsV2(SlotGroups):
    """Slot groups on a delegated cgroup v2 subtree.

    Layout below the worker's group ``W``::

        W/                         memory enabled for children (by oomless if it was not)
          oomless-<pid>-<start>/   base: memory enabled for children, no processes
            worker/                the worker main process (a leaf: "no internal processes")
            slot-<i>/              one pool child and its subprocesses

    The worker moves itself into ``worker/`` before enabling the controller on
    ``W`` (which must then be empty of processes).  On removal it moves back
    to ``W`` when it enabled the controller there itself; otherwise the empty
    ``worker/`` leaf stays until the next start removes it as stale (or
    systemd removes the unit's group).
    """

    version = 2
    LEAF = "worker"

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.parent = os.path.dirname(base)
        self._enabled_parent = False
        self._moved: int | None = None
        self._lifetime_peak: set[int] = set()  # slots whose memory.peak cannot be reset (Linux < 6.12)
        self._peak_fds: dict[int, int] = {}  # slot -> the fd peak() reads (memory.peak, or memory.current)

    def create(self, count: int, me: int | None = None) -> None:
        me = os.getpid() if me is None else me
        leaf = os.path.join(self.base, self.LEAF)
        os.makedirs(leaf, exist_ok=True)
        if "memory" not in _words(os.path.join(self.parent, "cgroup.subtree_control")):
            for attempt in range(5):
                # Move this process and its own descendants still in the parent; a process they
                # fork meanwhile is born in the parent and makes the kernel say EBUSY: again.
                family = _family(me)
                for pid in _pids(os.path.join(self.parent, "cgroup.procs")):
                    if pid in family:
                        try:
                            _write(os.path.join(leaf, "cgroup.procs"), pid)
                        except ProcessLookupError:
                            continue
                        if pid == me:
                            self._moved = me
                try:
                    _write(os.path.join(self.parent, "cgroup.subtree_control"), "+memory")
                    break
                except OSError as exc:
                    if exc.errno == errno.EBUSY and attempt < 4:
                        continue
                    self._move_back()
                    raise OSError(
                        exc.errno,
                        f"could not enable the memory controller below {self.parent}: {exc.strerror} "
                        f"(cgroup v2 allows it only in a group without processes of its own)",
                    ) from None
            self._enabled_parent = True
        _write(os.path.join(self.base, "cgroup.subtree_control"), "+memory")
        # The base group's memory.high (the slots' shared limit) covers the worker's leaf too: on a
        # host with swap the kernel would page the worker out to stay under it rather than stall
        # the slots, and the governor would see no pressure.  No swap for the worker, as for its slots.
        swap = os.path.join(leaf, "memory.swap.max")
        if os.path.exists(swap):
            _write(swap, 0)
        super().create(count)

    def remove(self, kill: bool = True, attempts: int = 50) -> list[int]:
        killed = self._remove_slots(kill, attempts)
        leaf = os.path.join(self.base, self.LEAF)
        if self._enabled_parent:
            # Lift what we enabled, then the parent may hold processes again.
            for group in (self.base, self.parent):
                try:
                    _write(os.path.join(group, "cgroup.subtree_control"), "-memory")
                except OSError:
                    break
            else:
                self._enabled_parent = False
                self._move_back()
        try:
            _rmdir(leaf)
        except OSError as exc:
            if exc.errno == errno.EBUSY and self._moved is not None:
                return killed  # we still live in it; the next start removes it
            raise
        _rmdir(self.base)
        return killed

    def _move_back(self) -> None:
        """Move this process, and what of its family is still in the leaf, back to the parent."""
        if self._moved is None:
            return
        for pid in [self._moved, *_pids(os.path.join(self.base, self.LEAF, "cgroup.procs"))]:
            try:
                _write(os.path.join(self.parent, "cgroup.procs"), pid)
            except OSError:
                if pid == self._moved:
                    return
        self._moved = None

    def _prepare_slot(self, index: int) -> None:
        path = self.slot_dir(index)
        # Kill the slot's whole tree together when the kernel has to act.
        _write(os.path.join(path, "memory.oom.group"), 1)
        _write(os.path.join(path, "memory.high"), "max")
        _write(os.path.join(path, "memory.max"), "max")
        if os.path.exists(os.path.join(path, "memory.swap.max")):
            _write(os.path.join(path, "memory.swap.max"), 0)

    def set_limit(self, index: int, limit: int | None, high: int | None = None) -> None:
        """The slot's hard limit (``memory.max``: the kernel OOM-kills there) and the point where
        the kernel starts to throttle it and says so in ``memory.events`` (``memory.high``)."""
        if limit is None:
            self._set(index, "memory.high", "max")
            self._set(index, "memory.max", "max")
            return
        self._set(index, "memory.max", limit)
        self._set(index, "memory.high", "max" if high is None else high)

    def set_oom_group(self, index: int, whole: bool) -> None:
        """Whether a kernel OOM kill in the slot takes its whole tree (else only the process the
        kernel picks: the largest)."""
        self._set(index, "memory.oom.group", int(whole))

    def kill_all(self, index: int) -> bool:
        """SIGKILL every process in the slot at once, forks in flight included (``cgroup.kill``,
        Linux >= 5.14; the kernel picks no PID, so none can have been reused); ``False`` where missing."""
        try:
            _write(os.path.join(self.slot_dir(index), "cgroup.kill"), 1)
            return True
        except OSError:
            return False

    def events_fd(self, index: int | None) -> int:
        """A new descriptor of the slot's ``memory.events`` (``None``: the base group's own,
        ``memory.events.local``; before Linux 5.2, its ``memory.events``): poll it for ``POLLPRI``
        (the kernel notifies each change, such as going over ``memory.high``); read it to re-arm."""
        if index is not None:
            return os.open(os.path.join(self.slot_dir(index), "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.open(os.path.join(self.base, "memory.events.local"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return os.open(os.path.join(self.base, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)

    def set_total_limit(self, limit: int | None) -> None:
        # memory.high, not memory.max: v2 cannot turn the OOM killer off, but past memory.high the
        # kernel throttles the allocating processes (no swap: they stall) and notifies
        # memory.events.local, and the governor evicts.  Never written below what the group holds.
        _write(os.path.join(self.base, "memory.high"), "max" if limit is None else limit)

    def shared_usage(self) -> int:
        used = working_set(2, self.base)
        if used is None:  # never a limit computed from "holds nothing"
            raise OSError(errno.EIO, f"cannot read what {self.base} holds")
        return used

    def at_total_limit(self) -> bool:
        # Over memory.high in what cannot be reclaimed: page cache alone the kernel reclaims, and
        # the slots run on.
        try:
            with open(os.path.join(self.base, "memory.high")) as fh:
                high = fh.read().strip()
            return high != "max" and self.shared_usage() > int(high)
        except (OSError, ValueError):  # the group is going (the worker stops): nothing to evict for
            return False

    def usage_shmem(self, index: int) -> tuple[int, int]:
        used = int(self._get(index, "memory.current"))
        file, shmem = self._stat(index, b"file", b"shmem")
        return max(0, used - (file - shmem)), shmem

    def _peak_fd(self, index: int) -> int:
        # Writing "reset" to memory.peak resets it only for reads through the *same*
        # file descriptor (Linux >= 6.12), so reset and read share one O_RDWR fd.
        # Older kernels refuse the write (EINVAL) and keep the slot's lifetime
        # peak; before 5.19 there is no memory.peak, only memory.current.
        fd = self._peak_fds.get(index)
        if fd is not None:
            return fd
        for flags in (os.O_RDWR, os.O_RDONLY):
            try:
                fd = self._fd(index, "memory.peak", flags)
            except OSError:
                continue
            if flags != os.O_RDWR:
                self._lifetime_peak.add(index)
            self._peak_fds[index] = fd
            return fd
        self._lifetime_peak.add(index)
        fd = self._peak_fds[index] = self._fd(index, "memory.current", os.O_RDONLY)
        return fd

    def close_files(self) -> None:
        super().close_files()
        self._peak_fds.clear()

    def reset_peak(self, index: int) -> None:
        fd = self._peak_fd(index)
        if index in self._lifetime_peak:
            return
        try:
            os.write(fd, b"reset")
        except OSError:
            self._lifetime_peak.add(index)

    def peak(self, index: int) -> int:
        return int(os.pread(self._peak_fd(index), 4096, 0))

    def peak_resets(self, index: int) -> bool:
        """Whether :meth:`reset_peak` worked (Linux >= 6.12; known after the first call); where it
        did not, :meth:`peak` is the slot's lifetime peak (before 5.19: its current usage)."""
        return index not in self._lifetime_peak

    def oom_kills(self, index: int) -> int:
        """How many processes the kernel has OOM-killed in this slot (``memory.events``)."""
        with open(os.path.join(self.slot_dir(index), "memory.events")) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0


def v2_peak_resets(path: str) -> bool:
    """Whether ``memory.peak`` of the v2 group at ``path`` can be reset per file descriptor (Linux >= 6.12)."""
    try:
        fd = os.open(os.path.join(path, "memory.peak"), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, b"reset")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def group_name(pid: int | None = None) -> str:
    """Name of this worker's group of slots: ``oomless-<pid>-<start time>`` (unique across PID reuse)."""
    pid = os.getpid() if pid is None else pid
    return f"oomless-{pid}-{proc.start_time(pid)}"


def stale_groups(parent: str) -> list[str]:
    """``oomless-*`` groups below ``parent`` whose worker is gone (crashed, killed)."""
    stale: list[str] = []
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return stale
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "oomless" or not parts[1].isdigit():
            continue
        if str(proc.start_time(int(parts[1]))) != parts[2]:
            stale.append(os.path.join(parent, name))
    return stale
