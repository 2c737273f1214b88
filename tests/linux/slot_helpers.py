"""Helpers shared by the real-kernel slot group tests (cgroup v1 and v2)."""

from __future__ import annotations

import os
import signal
import time

import pytest


def rmdir_tree(path: str) -> None:
    """Remove cgroup directories bottom-up (cgroupfs removes control files with the directory);
    on v2, ``cgroup.kill`` whatever is left first."""
    if not os.path.isdir(path):
        return
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as fh:
            fh.write("1")
    except OSError:
        pass
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            rmdir_tree(entry.path)
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def fork_member(groups, index: int, allocate: int, hold: float = 60) -> int:
    """Fork a child that joins slot ``index`` at birth, touches ``allocate`` bytes, then sleeps
    ``hold`` seconds (at a v1 slot's limit the touching pauses it)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(ready_r)
            groups.join(index, os.getpid())
            os.write(ready_w, b"j")
            os.close(ready_w)
            hog = b"\x01" * allocate if allocate else b""
            time.sleep(hold)
            del hog
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        joined = os.read(ready_r, 1) == b"j"
    finally:
        os.close(ready_r)
    if not joined:
        reap(pid)
        pytest.fail(f"forked child could not join slot {index}")
    return pid


def reap(pid: int) -> int | None:
    """SIGKILL (if needed) and reap a forked child; its wait status, or None if reaped already."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def wait_for(read, at_least: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while (value := read()) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def wait_empty(groups, index: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (members := groups.procs(index)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return members
