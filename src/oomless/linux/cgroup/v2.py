"""Slot groups on a delegated cgroup v2 subtree: the kernel kills a slot's tree at its limit.

There is no oom_kill_disable on v2: a slot gets ``memory.oom.group`` = 1 so the
kernel kills the slot's tree as a unit, and ``memory.events`` (``oom_kill``)
proves it; ``memory.high`` below ``memory.max`` throttles a slot first and says
so.  v2 needs the worker's group to be *delegated* (writable, and no processes
of its own besides the worker: the "no internal processes" rule), so the worker
moves itself into a leaf of its own below the base group.

Not here: what v1 and v2 share (:mod:`.slots`), v1 (:mod:`.v1`), whether the
worker's group is delegated (:func:`.host.v2_delegation_problem`).
"""

from __future__ import annotations

import errno
import os

from ..kill import descendants
from .files import pids, read_keyed, read_limit, rmdir, words, write
from .reads import USAGE_V2, working_set
from .slots import SlotGroups

__all__ = ["SlotGroupsV2", "v2_peak_resets"]


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
    usage_files = USAGE_V2
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
        if "memory" not in words(os.path.join(self.parent, "cgroup.subtree_control")):
            for attempt in range(5):
                # Move this process and its own descendants still in the parent; a process they
                # fork meanwhile is born in the parent and makes the kernel say EBUSY: again.
                family = {me, *descendants(me)}
                for pid in pids(os.path.join(self.parent, "cgroup.procs")):
                    if pid in family:
                        try:
                            write(os.path.join(leaf, "cgroup.procs"), pid)
                        except ProcessLookupError:
                            continue
                        if pid == me:
                            self._moved = me
                try:
                    write(os.path.join(self.parent, "cgroup.subtree_control"), "+memory")
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
        write(os.path.join(self.base, "cgroup.subtree_control"), "+memory")
        # The base group's memory.high (the slots' shared limit) covers the worker's leaf too: on a
        # host with swap the kernel would page the worker out to stay under it rather than stall
        # the slots, and the governor would see no pressure.  No swap for the worker, as for its slots.
        _no_swap(leaf)
        super().create(count)

    def remove(self, kill: bool = True, attempts: int = 50) -> list[int]:
        killed = self._remove_slots(kill, attempts)
        leaf = os.path.join(self.base, self.LEAF)
        if self._enabled_parent:
            # Lift what we enabled, then the parent may hold processes again.
            for group in (self.base, self.parent):
                try:
                    write(os.path.join(group, "cgroup.subtree_control"), "-memory")
                except OSError:
                    break
            else:
                self._enabled_parent = False
                self._move_back()
        try:
            rmdir(leaf)
        except OSError as exc:
            if exc.errno == errno.EBUSY and self._moved is not None:
                return killed  # we still live in it; the next start removes it
            raise
        rmdir(self.base)
        return killed

    def _move_back(self) -> None:
        """Move this process, and what of its family is still in the leaf, back to the parent."""
        if self._moved is None:
            return
        for pid in [self._moved, *pids(os.path.join(self.base, self.LEAF, "cgroup.procs"))]:
            try:
                write(os.path.join(self.parent, "cgroup.procs"), pid)
            except OSError:
                if pid == self._moved:
                    return
        self._moved = None

    def _prepare_slot(self, index: int) -> None:
        path = self.slot_dir(index)
        # Kill the slot's whole tree together when the kernel has to act.
        write(os.path.join(path, "memory.oom.group"), 1)
        write(os.path.join(path, "memory.high"), "max")
        write(os.path.join(path, "memory.max"), "max")
        _no_swap(path)

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
            write(os.path.join(self.slot_dir(index), "cgroup.kill"), 1)
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
        write(os.path.join(self.base, "memory.high"), "max" if limit is None else limit)

    def shared_usage(self) -> int:
        used = working_set(2, self.base)
        if used is None:  # never a limit computed from "holds nothing"
            raise OSError(errno.EIO, f"cannot read what {self.base} holds")
        return used

    def at_total_limit(self) -> bool:
        # Over memory.high in what cannot be reclaimed: page cache alone the kernel reclaims, and
        # the slots run on.
        try:
            high = read_limit(os.path.join(self.base, "memory.high"))
            return high is not None and self.shared_usage() > high
        except (OSError, ValueError):  # the group is going (the worker stops): nothing to evict for
            return False

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
        if index not in self._lifetime_peak and not _reset(fd):
            self._lifetime_peak.add(index)

    def peak(self, index: int) -> int:
        return int(os.pread(self._peak_fd(index), 4096, 0))

    def peak_resets(self, index: int) -> bool:
        """Whether :meth:`reset_peak` worked (Linux >= 6.12; known after the first call); where it
        did not, :meth:`peak` is the slot's lifetime peak (before 5.19: its current usage)."""
        return index not in self._lifetime_peak

    def oom_kills(self, index: int) -> int:
        """How many processes the kernel has OOM-killed in this slot (``memory.events``)."""
        return read_keyed(os.path.join(self.slot_dir(index), "memory.events"), b"oom_kill")[0]


def v2_peak_resets(path: str) -> bool:
    """Whether ``memory.peak`` of the v2 group at ``path`` can be reset per file descriptor (Linux >= 6.12)."""
    try:
        fd = os.open(os.path.join(path, "memory.peak"), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _reset(fd)
    finally:
        os.close(fd)


def _reset(peak_fd: int) -> bool:
    """Write ``reset`` to the ``memory.peak`` open as ``peak_fd``; whether the kernel took it (Linux
    >= 6.12, and then only reads through that same descriptor start again)."""
    try:
        os.write(peak_fd, b"reset")
    except OSError:
        return False
    return True


def _no_swap(group: str) -> None:
    """No swap for ``group``, where the kernel offers the choice (``memory.swap.max``: swap accounting on)."""
    swap = os.path.join(group, "memory.swap.max")
    if os.path.exists(swap):
        write(swap, 0)
