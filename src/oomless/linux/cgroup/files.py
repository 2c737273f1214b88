"""cgroup control files: what they hold and how one is read or written.

The formats every module of this package shares: a limit (bytes, or ``max``), a
list of words or PIDs (``cgroup.procs``, ``cgroup.subtree_control``), a "flat
keyed" file of ``key value`` lines (``memory.stat``, ``memory.events``,
``memory.oom_control``), a write of one value, and removing an empty group.

Not here: which files a group has and when oomless writes them (:mod:`.slots`,
:mod:`.v1`, :mod:`.v2`), what a group holds (:mod:`.reads`).
"""

from __future__ import annotations

import os

from ...units import MAX_SIZE

__all__ = ["read_limit", "words", "pids", "write", "keyed_values", "read_keyed", "rmdir"]


def read_limit(path: str) -> int | None:
    """The number in the file ``path``; ``None`` for ``max``, the kernel's "no limit", or a file
    that cannot be read.  Raises ``ValueError`` for anything else."""
    try:
        with open(path) as fh:
            raw = fh.read().strip()
    except OSError:
        return None
    if raw == "max":
        return None
    value = int(raw)
    # v1 says "no limit" as a huge number of bytes (a page counter's maximum, ~2**63): anything
    # beyond the largest size oomless knows is none.
    return None if value >= MAX_SIZE else value


def words(path: str) -> list[str]:
    """The whitespace-separated words of the file ``path``, ``[]`` if it cannot be read."""
    try:
        with open(path) as fh:
            return fh.read().split()
    except OSError:
        return []


def pids(path: str) -> list[int]:
    """The PIDs listed in ``path`` (a ``cgroup.procs``), ``[]`` if it cannot be read."""
    return [int(p) for p in words(path) if p.isdigit()]


def write(path: str, value: str | int) -> None:
    """Write ``value`` to the control file ``path`` (opened, written whole, closed)."""
    with open(path, "w") as fh:
        fh.write(str(value))


def keyed_values(data: bytes, *keys: bytes) -> list[int]:
    """The values of the ``key value`` lines of ``keys`` in ``data`` (0 for a key not there)."""
    data = b"\n" + data
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


def read_keyed(path: str, *keys: bytes) -> list[int]:
    """:func:`keyed_values` of the file ``path``; raises ``OSError`` if it cannot be read."""
    with open(path, "rb") as fh:
        return keyed_values(fh.read(), *keys)


def rmdir(path: str) -> None:
    """Remove an empty group; one that is gone already is fine."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # Members we cannot see (another PID namespace) or that would not die.
        raise OSError(exc.errno, f"could not remove {path}: {exc.strerror}") from None
