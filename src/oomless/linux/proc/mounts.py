"""The mount table as this process sees it (``/proc/self/mountinfo``).

Read by cgroup detection (where the memory controller is mounted) and by the tmpfs
accounting (which devices are tmpfs).  Not here: what either makes of it
(:mod:`oomless.linux.cgroup.host`, :mod:`.tmpfs`).
"""

from __future__ import annotations

from typing import NamedTuple

from .files import path

__all__ = ["Mount", "mounts", "MOUNTINFO"]

#: This process's mount table.
MOUNTINFO = path("self", "mountinfo")


class Mount(NamedTuple):
    """One line of ``mountinfo``: the fields oomless reads."""

    device: str  # "major:minor" of the mounted file system
    point: str  # where it is mounted
    fstype: str  # "cgroup", "cgroup2", "tmpfs", …
    super_options: str  # per-superblock options: a cgroup v1 mount's controllers ("rw,memory")


def mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """Every mount in ``mountinfo`` (proc(5): the optional fields end at the ``-`` separator)."""
    found = []
    with open(mountinfo) as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _source, super_options = (right.split() + ["", "", ""])[:3]
            found.append(Mount(fields[2], fields[4], fstype, super_options))
    return found
