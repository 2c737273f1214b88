"""Slot groups on the cgroup v1 memory controller: the kernel pauses a slot at its limit.

Each slot group gets ``memory.oom_control`` = 1 (``oom_kill_disable``), so at
its limit the kernel *pauses* the slot's processes and signals an eventfd
instead of picking a victim; the governor then reads the peak and kills the
slot's whole tree itself.  The slots' shared parent (the base group) is
paused the same way at the limit of what they may hold together.

Not here: what v1 and v2 share (:mod:`.slots`), v2 (:mod:`.v2`).
"""

from __future__ import annotations

import os

from .files import read_keyed, write
from .reads import USAGE_V1, working_set
from .slots import SlotGroups

__all__ = ["SlotGroupsV1"]


class SlotGroupsV1(SlotGroups):
    """Slot groups on the cgroup v1 memory controller."""

    version = 1
    usage_files = USAGE_V1

    def _prepare_slot(self, index: int) -> None:
        path = self.slot_dir(index)
        # The governor, not the kernel, picks the victim and proves why.
        write(os.path.join(path, "memory.oom_control"), 1)
        write(os.path.join(path, "memory.limit_in_bytes"), -1)

    def release(self, index: int) -> None:
        try:
            write(os.path.join(self.slot_dir(index), "memory.limit_in_bytes"), -1)
        except OSError:
            pass

    def set_limit(self, index: int, limit: int | None) -> None:
        self._set(index, "memory.limit_in_bytes", -1 if limit is None else limit)

    def reset_peak(self, index: int) -> None:
        self._set(index, "memory.max_usage_in_bytes", 0)

    def peak(self, index: int) -> int:
        return int(self._get(index, "memory.max_usage_in_bytes"))

    def create(self, count: int) -> None:
        super().create(count)
        # The slots together: paused at their shared limit too, never OOM-killed by the kernel
        # (see set_total_limit); no limit until the worker has measured what it may be.
        write(os.path.join(self.base, "memory.oom_control"), 1)

    def oom_eventfd(self, index: int | None) -> int:
        """An eventfd that becomes readable when the slot (``None``: all slots together) hits its limit."""
        path = self.base if index is None else self.slot_dir(index)
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        ofd = os.open(os.path.join(path, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            write(os.path.join(path, "cgroup.event_control"), f"{efd} {ofd}")
        finally:
            # The kernel holds its own reference to the control file.
            os.close(ofd)
        return efd

    def at_total_limit(self) -> bool:
        return self.under_oom(None)

    def under_oom(self, index: int | None) -> bool:
        """Whether the slot (``None``: the slots' shared group) is paused at its limit."""
        path = self.base if index is None else self.slot_dir(index)
        return read_keyed(os.path.join(path, "memory.oom_control"), b"under_oom") == [1]

    def set_total_limit(self, limit: int | None) -> None:
        """Limit what the slots hold together (their shared parent group; ``None``: no limit).

        Raises ``OSError`` (EBUSY) when the slots hold more than ``limit`` and the
        kernel cannot reclaim enough cache to go below it.
        """
        write(os.path.join(self.base, "memory.limit_in_bytes"), -1 if limit is None else limit)

    def total_usage(self) -> int:
        """What the slots hold together that is not page cache."""
        return working_set(1, self.base) or 0
