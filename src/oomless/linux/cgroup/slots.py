"""One memory cgroup per slot: what v1 and v2 slot groups share.

The worker's main process makes the groups (:meth:`SlotGroups.create`) and
removes them (:meth:`SlotGroups.remove`, killing what is left in them); each
pool child joins its own slot's group at birth and reads and writes that
group's files around every task, through descriptors it keeps open (the hot
path: :meth:`~SlotGroups.usage_shmem`, :meth:`~SlotGroups.peak`).

Not here: what differs between the versions (:mod:`.v1`: the kernel pauses a
slot at its limit; :mod:`.v2`: it kills the slot's tree, and the worker needs a
leaf of its own), naming a worker's groups and finding stale ones
(:mod:`.groups`).
"""

from __future__ import annotations

import errno
import os
import select

from ..kill import kill_pids
from .files import keyed_values, rmdir, write
from .reads import unreclaimable

__all__ = ["SlotGroups"]


class SlotGroups:
    """One memory cgroup per slot below ``base`` (``<worker group>/oomless-<pid>-<start>``)."""

    version = 0
    #: The slot's charge file and its page cache and tmpfs keys in memory.stat (:mod:`.reads`).
    usage_files: tuple[str, bytes, bytes]

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

    def close_files(self) -> None:
        """Close the slot files kept open (before the groups are removed)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def slot_dir(self, index: int) -> str:
        """The group of slot ``index``."""
        return os.path.join(self.base, f"slot-{index}")

    # -- main process -----------------------------------------------------
    def create(self, count: int) -> None:
        """Make the base group and ``count`` slot groups below it, each without a limit."""
        os.makedirs(self.base, exist_ok=True)
        for index in range(count):
            os.makedirs(self.slot_dir(index), exist_ok=True)
            self._prepare_slot(index)

    def _prepare_slot(self, index: int) -> None:
        raise NotImplementedError

    def procs(self, index: int) -> list[int]:
        """The processes in slot ``index`` (``[]`` when its group is gone)."""
        try:
            with open(os.path.join(self.slot_dir(index), "cgroup.procs")) as fh:
                return [int(p) for p in fh.read().split()]
        except FileNotFoundError:
            return []

    def slots(self) -> list[int]:
        """The indexes of the slot groups that exist."""
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
        rmdir(self.base)
        return killed

    def _remove_slots(self, kill: bool, attempts: int) -> list[int]:
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
        """Move ``pid`` into slot ``index`` (a pool child, at birth: charges stay where they began)."""
        write(os.path.join(self.slot_dir(index), "cgroup.procs"), pid)

    def set_limit(self, index: int, limit: int | None) -> None:
        """The slot's limit (``None``: none)."""
        raise NotImplementedError

    def usage(self, index: int) -> int:
        """Bytes charged to the slot that are not page cache (what a task cannot give back)."""
        return self.usage_shmem(index)[0]

    def usage_shmem(self, index: int) -> tuple[int, int]:
        """:meth:`usage` and the part of it that is tmpfs/shared memory (files that outlive their writer)."""
        cache, shmem = self.cache_shmem(index)
        return unreclaimable(self.charge(index), cache, shmem), shmem

    def charge(self, index: int) -> int:
        """Everything charged to the slot, page cache included (one small file)."""
        return int(self._get(index, self.usage_files[0]))

    def cache_shmem(self, index: int) -> tuple[int, int]:
        """The slot's page cache and the tmpfs/shared memory part of it (``memory.stat``: about 40
        lines to read and search)."""
        _, cache_key, shmem_key = self.usage_files
        stat = os.pread(self._fd(index, "memory.stat", os.O_RDONLY), 65536, 0)
        cache, shmem = keyed_values(stat, cache_key, shmem_key)
        return cache, shmem

    def reset_peak(self, index: int) -> None:
        """Start the slot's peak again from what it holds now (a task starts)."""
        raise NotImplementedError

    def peak(self, index: int) -> int:
        """The slot's peak charge since :meth:`reset_peak`."""
        raise NotImplementedError

    def peak_resets(self, index: int) -> bool:
        """Whether :meth:`reset_peak` makes :meth:`peak` per task (else it is the slot's lifetime peak)."""
        return True
