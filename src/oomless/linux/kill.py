"""Kill a whole process tree without ever signalling a stranger.

Rules this module keeps:

* A process is signalled through a pidfd, opened *after* checking that the PID
  still names the process we mean (its start time, or its parent being a
  member we already hold a pidfd for).  A pidfd keeps naming that process even
  if its PID is later reused, so the signal cannot reach a stranger.
* The tree is frozen (SIGSTOP) while it is walked, so nothing forks behind our
  back, then every member is SIGKILLed.  Members that changed process group
  (``setsid``, Airflow's task runner) are found through ``/proc/*/task/*/children``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable
from queue import SimpleQueue

from . import proc

logger = logging.getLogger(__name__)

__all__ = ["kill_tree", "kill_pids", "kill_orphans", "kill_matching", "descendants", "pidfd", "send_signal", "release",
           "Releaser", "releaser"]


def pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (signals through it reach that process, never a reuse of its PID), or
    ``None`` when it is gone."""
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


def send_signal(fd: int, sig: int) -> None:
    """Send ``sig`` through the pidfd ``fd``; a process already gone is not an error.

    After SIGKILL the process's memory is freed by :data:`releaser`'s thread
    (:func:`release`), so the caller goes on at once: 512 MiB take the kernel
    about 25 ms of CPU to free, which the monitor would otherwise spend before
    it announces the kill or looks at any other slot.
    """
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return
    if sig == signal.SIGKILL:
        releaser.put(fd)


#: process_mrelease(2) (Linux >= 5.15), the same number on every architecture (asm-generic).
_NR_PROCESS_MRELEASE = 448
_libc: ctypes.CDLL | None = None


def release(pidfd: int) -> bool:
    """Free the memory of a process that was just SIGKILLed, now, from this thread
    (``process_mrelease``): a dying process otherwise frees it only when it is next
    scheduled, which on a loaded machine can be long enough for the kernel's OOM
    killer to act first.  Returns whether the kernel did it (False: older kernel,
    or the process had already gone)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return bool(_libc.syscall(_NR_PROCESS_MRELEASE, pidfd, 0) == 0)


class Releaser:
    """A thread that frees the memory of SIGKILLed processes (:func:`release`) for the thread that killed them.

    :meth:`put` takes a duplicate of the pidfd (the caller closes its own), so
    the process meant is the one released, whatever its PID names by then.
    The thread is started by the first :meth:`put` (or :meth:`start`) in each
    process and inherits that thread's scheduling priority: the enforcers start
    it from their monitor thread, which runs ahead of busy tasks.  A process
    that exits before its turn is simply skipped (``release`` returns False).
    """

    def __init__(self) -> None:
        #: releases the kernel accepted (including processes whose memory was already gone)
        self.released = 0
        self.reset()

    def reset(self) -> None:
        """A new process (and, through ``os.register_at_fork``, every forked child): no thread runs
        here yet, the queue copied from the parent holds its work, and its lock may have been copied held."""
        self._queue: SimpleQueue[int | threading.Event] = SimpleQueue()
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        """Start the thread in this process, if it does not run yet."""
        if not self._started:
            with self._lock:
                if not self._started:
                    threading.Thread(target=self._run, args=(self._queue,), name="oomless-release",
                                     daemon=True).start()
                    self._started = True

    def put(self, fd: int) -> None:
        """Free the memory of the process behind pidfd ``fd`` (just SIGKILLed) on the thread, soon."""
        self.start()
        try:
            mine = os.dup(fd)
        except OSError:  # out of file descriptors: free it here and now rather than not at all
            release(fd)
            return
        self._queue.put(mine)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far was released; False if ``timeout`` passed first."""
        self.start()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _run(self, todo: SimpleQueue[int | threading.Event]) -> None:
        while True:
            item = todo.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                if release(item):
                    self.released += 1
            except Exception:  # never let one failure stop the thread
                logger.exception("oomless: process_mrelease failed on pidfd %d", item)
            finally:
                os.close(item)


#: the process's one :class:`Releaser`
releaser = Releaser()
os.register_at_fork(after_in_child=releaser.reset)


def descendants(root: int) -> list[int]:
    """PIDs below ``root`` (children of any thread, recursively), parents before children."""
    found: list[int] = []
    todo = [root]
    seen = {root}
    while todo:
        pid = todo.pop()
        for child in proc.all_children(pid):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def kill_tree(root: int, root_start_time: int | None, spare_root: bool = False) -> list[int]:
    """SIGKILL ``root`` and all its descendants; return the PIDs signalled.

    ``root_start_time`` (from :func:`proc.start_time`) guards against PID reuse:
    if ``root`` now names a different process, nothing is signalled.
    ``spare_root``: kill only the descendants (an Airflow supervisor survives
    its task runner and reports the try's failure itself).
    """
    root_fd = pidfd(root)
    if root_fd is None:
        return []
    held: dict[int, int] = {}
    try:
        if root_start_time is not None and proc.start_time(root) != root_start_time:
            return []
        held[root] = root_fd
        if not spare_root:
            send_signal(root_fd, signal.SIGSTOP)
        # Walk until no new member appears: each new member is stopped before
        # we look for its children, so the tree cannot grow between passes.
        changed = True
        while changed:
            changed = False
            for pid in descendants(root):
                if pid in held:
                    continue
                fd = pidfd(pid)
                if fd is None:
                    continue
                if proc.parent_pid(pid) not in held:
                    # Reparented or reused between listing and opening: not provably ours.
                    os.close(fd)
                    continue
                held[pid] = fd
                send_signal(fd, signal.SIGSTOP)
                changed = True
        # Members that left the tree (reparented to init when their parent
        # died) are still in the root's process group when the pool child
        # leads one; the group cannot be recycled while the root, held by
        # a pidfd and stopped, still exists.
        # (A spared root is not stopped: it may still fork while we walk, which
        # is why the walk repeats until nothing new appears.)
        try:
            if not spare_root and os.getpgid(root) == root:
                os.killpg(root, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid, fd in held.items():
            if not (spare_root and pid == root):
                send_signal(fd, signal.SIGKILL)
        return [pid for pid in held if not (spare_root and pid == root)]
    finally:
        for fd in held.values():
            os.close(fd)
        if root not in held:
            os.close(root_fd)


def kill_pids(pids: list[int]) -> list[int]:
    """SIGKILL each PID in ``pids`` (a set already proven ours, e.g. a slot cgroup's members)."""
    killed = []
    for pid in pids:
        fd = pidfd(pid)
        if fd is None:
            continue
        try:
            send_signal(fd, signal.SIGKILL)
            killed.append(pid)
        finally:
            os.close(fd)
    return killed


def kill_orphans(leader: int, leader_start: int | None, marker: bytes | None = None) -> list[int]:
    """SIGKILL what is left of the tree of ``leader``, a process that died (a pool child); return the PIDs.

    Its subprocesses were reparented when it died, so they are found by what
    they kept: its process group (``leader`` led one), and ``marker``
    (``b"NAME=value"``), an entry it put in the environment every exec'd
    descendant inherits, even one that started a new session.  A PID that is a
    live process group cannot be reused, so members of group ``leader`` are its
    own, unless ``leader`` itself now names another process (``leader_start``
    differs): then only the marker is trusted.  Each candidate is checked again
    after its pidfd is opened, stopped while the rest are looked for, then killed.
    """
    now = proc.identity(leader)
    # Gone (reaped, not reused): a live group keeps its number.  Still there with the start
    # time we know: the dead leader's zombie.  Anything else: the PID was reused.
    group_is_ours = now is None or (leader_start is not None and now.start == leader_start)
    held: dict[int, int] = {}

    def ours(pid: int) -> bool:
        me = proc.identity(pid)
        return me is not None and not me.zombie and (
            (group_is_ours and me.pgid == leader) or (marker is not None and proc.environ_has(pid, marker))
        )

    try:
        changed = True
        while changed:
            changed = False
            for pid in proc.pids():
                if pid in held or pid == leader or not ours(pid):
                    continue
                fd = pidfd(pid)
                if fd is None:
                    continue
                if not ours(pid):  # checked again with the pidfd open: the PID was not reused meanwhile
                    os.close(fd)
                    continue
                held[pid] = fd
                send_signal(fd, signal.SIGSTOP)
                changed = True
        for fd in held.values():
            send_signal(fd, signal.SIGKILL)
        return list(held)
    finally:
        for fd in held.values():
            os.close(fd)


def kill_matching(test: Callable[[int], bool]) -> list[int]:
    """SIGKILL every process for which ``test(pid)`` holds (checked again once its pidfd is open, so a
    PID reused meanwhile is never hit); return the PIDs killed.  ``test`` must prove ownership."""
    killed = []
    for pid in proc.pids():
        if pid == os.getpid() or not test(pid):
            continue
        fd = pidfd(pid)
        if fd is None:
            continue
        try:
            if test(pid):
                send_signal(fd, signal.SIGKILL)
                killed.append(pid)
        finally:
            os.close(fd)
    return killed
