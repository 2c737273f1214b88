"""Readers for /proc: memory of processes and of the machine, process trees, tmpfs files.

Read as ``proc.<name>`` (``from oomless.linux import proc``): each name below
lives in one module of this package, which says what it covers.

* :mod:`.files`: where a process's /proc files are, and what a gone process reads as
* :mod:`.mounts`: the mount table
* :mod:`.memory`: RSS (kept-open readers for the hot path), peaks, PSS, what the machine has free
* :mod:`.tree`: children, start times and identities, environments, reaping orphans
* :mod:`.tmpfs`: tmpfs files a process tree holds without mapping them

Not here: cgroups (:mod:`oomless.linux.cgroup`), killing (:mod:`oomless.linux.kill`).
"""

from __future__ import annotations

from .files import GONE, UNREADABLE, path, self_pid
from .memory import (
    PAGE_SIZE,
    OwnMemory,
    StatmReader,
    malloc_trim,
    mem_available,
    mem_total,
    oom_kills,
    oom_score_adj,
    pss,
    rss,
    rss_shmem,
    set_oom_score_adj,
    shared,
    uss,
)
from .mounts import Mount, mounts
from .tmpfs import TmpfsFiles, tmpfs_devices
from .tree import (
    ChildrenReader,
    Identity,
    OwnChildren,
    all_children,
    children,
    environ_has,
    environ_value,
    exited,
    identity,
    parent_pid,
    pids,
    reap_zombie_children,
    set_child_subreaper,
    start_time,
)

__all__ = [
    "GONE",
    "UNREADABLE",
    "path",
    "self_pid",
    "PAGE_SIZE",
    "OwnMemory",
    "OwnChildren",
    "StatmReader",
    "malloc_trim",
    "mem_available",
    "mem_total",
    "oom_kills",
    "oom_score_adj",
    "pss",
    "rss",
    "rss_shmem",
    "set_oom_score_adj",
    "shared",
    "uss",
    "Mount",
    "mounts",
    "TmpfsFiles",
    "tmpfs_devices",
    "Identity",
    "ChildrenReader",
    "all_children",
    "children",
    "environ_has",
    "environ_value",
    "exited",
    "identity",
    "parent_pid",
    "pids",
    "reap_zombie_children",
    "set_child_subreaper",
    "start_time",
]
