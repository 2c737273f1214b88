"""Where this process's memory cgroup is, which version, its limit, and whether slots can go below it.

:func:`detect` reads ``/proc/self/cgroup`` and the mount table once, at worker
start; :func:`current_limit` re-reads the limit (it can change at run time).
On cgroup v2 a group is usable only when it is *delegated*: writable, and
holding no processes but this one and its own (:func:`v2_delegation_problem`).

Not here: making and removing the slot groups (:mod:`.slots`, :mod:`.v1`,
:mod:`.v2`), what a group holds (:mod:`.reads`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import proc
from ..kill import descendants
from .files import pids, read_limit, words

__all__ = ["CgroupHost", "detect", "current_limit", "v2_delegation_problem"]


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
        """Whether slot groups can be made below :attr:`path`."""
        return self.writable and self.path is not None


def _limit_up(path: str, root: str, filename: str) -> int | None:
    """Smallest limit on ``path`` or any ancestor up to the mount ``root``."""
    best: int | None = None
    while True:
        value = read_limit(os.path.join(path, filename))
        if value is not None:
            best = value if best is None else min(best, value)
        if os.path.normpath(path) == os.path.normpath(root) or len(path) <= len(root):
            return best
        path = os.path.dirname(path)


def detect(proc_cgroup: str = proc.path("self", "cgroup")) -> CgroupHost:
    """Find this process's memory cgroup and whether slot groups can be made below it."""
    mounts = proc.mounts()
    with open(proc_cgroup) as fh:
        lines = [line.rstrip("\n").split(":", 2) for line in fh if line.strip()]
    v1_rel = next((rel for _id, ctrls, rel in lines if "memory" in ctrls.split(",")), None)
    if v1_rel is not None:
        root = next((m.point for m in mounts if m.fstype == "cgroup" and "memory" in m.super_options.split(",")), None)
        if root is None:
            return CgroupHost(1, None, False, None, "cgroup v1 memory controller is listed but not mounted here")
        path = os.path.normpath(root + v1_rel)
        limit = _limit_up(path, root, "memory.limit_in_bytes")
        if not os.access(path, os.W_OK):
            why = f"cgroup v1 memory group {path} is not writable by this user"
            return CgroupHost(1, path, False, limit, why, root)
        return CgroupHost(1, path, True, limit, f"cgroup v1 memory group {path} is writable", root)
    v2_rel = next((rel for hid, ctrls, rel in lines if hid == "0" and ctrls == ""), None)
    root2 = next((m.point for m in mounts if m.fstype == "cgroup2"), None)
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
    if "memory" in words(os.path.join(path, "cgroup.subtree_control")):
        return None
    me = os.getpid() if me is None else me
    family = {me, *descendants(me)}
    others = [p for p in pids(os.path.join(path, "cgroup.procs")) if p not in family]
    if others:
        shown = ", ".join(map(str, others[:5])) + (" …" if len(others) > 5 else "")
        return (
            f"cgroup v2 group {path} holds other processes besides this one ({shown}), so the memory "
            f'controller cannot be enabled for slot groups below it (cgroup v2 "no internal processes" rule); '
            f"run the worker alone in a delegated group (systemd: Delegate=yes; a container with its own cgroup)"
        )
    return None


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
