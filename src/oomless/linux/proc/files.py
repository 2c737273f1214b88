"""Where a process's /proc files are, and what reading one of a process that is gone gives.

The one translation point of this package (as psutil's ``wrap_exceptions``): a process can
exit between any two reads, and its files then raise ``FileNotFoundError`` (the directory
went) or ``ProcessLookupError`` (ESRCH: it went while the file was open).  :func:`read` and
:func:`entries` say "gone" as ``None`` / ``[]``; :data:`GONE` names the pair for a reader that
stops before the end of a file (``rss_shmem``) and for callers of the readers that raise
(``rss``, ``StatmReader``: a process that is gone is an error there).

Not here: what the files mean (:mod:`.memory`, :mod:`.tree`, :mod:`.tmpfs`).
"""

from __future__ import annotations

import os

__all__ = ["ROOT", "GONE", "UNREADABLE", "path", "read", "entries", "self_pid"]

#: Where procfs is mounted.
ROOT = "/proc"

#: What reading a file of a process that has exited raises.
GONE = (FileNotFoundError, ProcessLookupError)

#: :data:`GONE`, or a process of another user (``environ``, ``fd``: readable by the owner only).
UNREADABLE = (*GONE, PermissionError)


def path(pid: int | str, name: str) -> str:
    """``/proc/<pid>/<name>``; ``pid`` may be ``"self"``."""
    return f"{ROOT}/{pid}/{name}"


def read(pid: int | str, name: str, absent: tuple[type[OSError], ...] = GONE) -> bytes | None:
    """The whole of ``/proc/<pid>/<name>``, ``None`` when reading it raises one of ``absent``
    (by default: the process is gone)."""
    try:
        # The path spelled here, not through path(): the watchdog reads children this way every tick.
        with open(f"{ROOT}/{pid}/{name}", "rb") as fh:
            return fh.read()
    except absent:
        return None


def entries(pid: int | str, name: str) -> list[str]:
    """The names in the directory ``/proc/<pid>/<name>``, ``[]`` when the process is gone."""
    try:
        return os.listdir(path(pid, name))
    except GONE:
        return []


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def self_pid() -> int:
    """This process's PID without a system call (glibc no longer caches ``getpid``; a pool child
    asked several times per task), kept right in a forked child by an at-fork hook."""
    return _pid
