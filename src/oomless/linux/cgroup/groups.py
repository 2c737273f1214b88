"""A worker's slot groups as a whole: their name, their kind, and the ones a gone worker left.

A worker's base group is ``oomless-<pid>-<start time>`` below its own cgroup: the
start time makes the name unique across PID reuse, and lets the next worker that
starts there tell which groups belong to a worker that crashed or was killed
(:func:`stale_groups`), so it can remove them.

Not here: making, filling and removing one worker's groups (:mod:`.slots`,
:mod:`.v1`, :mod:`.v2`); where the worker's own cgroup is (:mod:`.host`).
"""

from __future__ import annotations

import os

from .. import proc
from .slots import SlotGroups
from .v1 import SlotGroupsV1
from .v2 import SlotGroupsV2

__all__ = ["group_name", "slot_groups", "stale_groups"]


def group_name(pid: int | None = None) -> str:
    """Name of this worker's group of slots: ``oomless-<pid>-<start time>`` (unique across PID reuse)."""
    pid = os.getpid() if pid is None else pid
    return f"oomless-{pid}-{proc.start_time(pid)}"


def slot_groups(version: int | None, base: str) -> SlotGroups:
    """The slot groups of a base group on cgroup ``version`` (1 or 2)."""
    return SlotGroupsV1(base) if version == 1 else SlotGroupsV2(base)


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
