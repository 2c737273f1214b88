"""Tree on real processes: the files it keeps open for a task's process tree are let go with
each member that leaves and all at close (a long-lived pool child runs many subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys

from oomless.enforce.readers import Readers
from oomless.enforce.slots import SlotState
from oomless.enforce.tree import Tree
from oomless.linux import proc

# Starts or stops `sleep` children as told on stdin; prints their PIDs.
_PARENT = (
    "import subprocess, sys\n"
    "kids = []\n"
    "for line in sys.stdin:\n"
    "    n = int(line)\n"
    "    while len(kids) > n: k = kids.pop(); k.kill(); k.wait()\n"
    "    while len(kids) < n: kids.append(subprocess.Popen(['sleep', '60']))\n"
    "    print(*[k.pid for k in kids], flush=True)\n"
)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_tree_lets_go_of_the_files_of_members_that_left_and_of_all_at_close():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)

    def children(n: int) -> list[int]:
        parent.stdin.write(f"{n}\n")
        parent.stdin.flush()
        return [int(p) for p in parent.stdout.readline().split()]

    try:
        before = _open_fds()
        state = SlotState(1, parent.pid, True, "t", None, None, proc.rss(parent.pid), 0, 0)
        tree = Tree(state, Readers(), proc.tmpfs_devices())
        alone = _open_fds()
        pids = children(5)
        tree.discover(full=False)
        assert sorted(tree.members) == sorted(pids)
        tree.discover(full=False)  # looks at the members' open files too
        assert _open_fds() == alone + 3 * 5  # each member: its statm, its children, its fd directory
        children(0)
        assert tree.usage() is not None
        assert tree.members == {}
        assert _open_fds() == alone
        tree.close()
        assert _open_fds() == before
    finally:
        parent.stdin.close()
        parent.kill()
        parent.wait()
