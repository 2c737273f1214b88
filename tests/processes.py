"""A real process tree for the /proc and watchdog tests: a parent that keeps as many ``sleep``
children as it is told."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Starts or stops `sleep` children as told on stdin (one number a line); prints their PIDs.
_PARENT = (
    "import subprocess, sys\n"
    "kids = []\n"
    "for line in sys.stdin:\n"
    "    n = int(line)\n"
    "    while len(kids) > n: k = kids.pop(); k.kill(); k.wait()\n"
    "    while len(kids) < n: kids.append(subprocess.Popen(['sleep', '60']))\n"
    "    print(*[k.pid for k in kids], flush=True)\n"
)


@contextmanager
def parent_of_sleepers() -> Iterator[tuple[subprocess.Popen, Callable[[int], list[int]]]]:
    """``(parent, children)``: ``children(n)`` makes the parent keep ``n`` children, returns their PIDs.
    The children, then the parent, are killed at the end."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)

    def children(n: int) -> list[int]:
        parent.stdin.write(f"{n}\n")
        parent.stdin.flush()
        return [int(p) for p in parent.stdout.readline().split()]

    try:
        yield parent, children
    finally:
        children(0)
        parent.stdin.close()
        parent.kill()
        parent.wait()
