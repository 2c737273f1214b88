"""What a memory cgroup is going through: what it holds that cannot be reclaimed, and its pressure.

:func:`working_set` is the one place that says what a group holds that the
kernel cannot give back: its charge less the page cache it can reclaim, where
tmpfs and shared memory count as cache but cannot be reclaimed (v1 and v2 name
the same counters differently: :data:`USAGE_V1`, :data:`USAGE_V2`).  :class:`GroupSignals`
reads the v2 worker group's own events and PSI through kept-open files.

Not here: a single slot's usage and peak through its kept-open files (the
:mod:`.slots` classes, which use :func:`unreclaimable` too); limits of the
worker's group (:mod:`.host`).
"""

from __future__ import annotations

import collections
import os
import time

from .files import keyed_values, read_limit

__all__ = ["USAGE_V1", "USAGE_V2", "unreclaimable", "working_set", "GroupSignals"]

#: The file of a group's charge, and the ``memory.stat`` keys of its page cache and of the part
#: of that cache that is tmpfs/shared memory: cgroup v1 (the group and below) …
USAGE_V1 = ("memory.usage_in_bytes", b"total_cache", b"total_shmem")
#: … and cgroup v2.
USAGE_V2 = ("memory.current", b"file", b"shmem")


def unreclaimable(used: int, cache: int, shmem: int) -> int:
    """What of a charge of ``used`` bytes the kernel cannot reclaim: all but its page ``cache``,
    of which tmpfs and shared memory (``shmem``) count in full (their pages cannot be dropped)."""
    return max(0, used - (cache - shmem))


def working_set(version: int, path: str) -> int | None:
    """Bytes charged to the memory cgroup at ``path`` (and below) that are not reclaimable
    page cache, or ``None`` when it cannot be read.  Opens the files each call: for checks a
    few times a second, not for the hot loop."""
    usage_file, cache_key, shmem_key = USAGE_V1 if version == 1 else USAGE_V2
    used = read_limit(os.path.join(path, usage_file))
    if used is None:
        return None
    try:
        with open(os.path.join(path, "memory.stat"), "rb") as fh:
            cache, shmem = keyed_values(fh.read(), cache_key, shmem_key)
    except (OSError, ValueError):
        return None
    return unreclaimable(used, cache, shmem)


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
        """Whether the group's PSI can be read (else :meth:`read` gives ``None`` for it)."""
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
        """Close the files kept open."""
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)


def _open_ro(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
