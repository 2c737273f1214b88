"""Tree on real processes: the files it keeps open for a task's process tree are let go with
each member that leaves and all at close (a long-lived pool child runs many subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from oomless.enforce.readers import Readers
from oomless.enforce.slots import SlotState
from oomless.enforce.tree import Tree
from oomless.linux import proc

from ..processes import parent_of_sleepers

MiB = 2**20

def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_tree_lets_go_of_the_files_of_members_that_left_and_of_all_at_close():
    with parent_of_sleepers() as (parent, children):
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


# A parent that starts one child and says when it is ready: "exec" runs a new Python that allocates
# 100 MiB first; "fork" holds 100 MiB itself and forks a child that allocates nothing.
_FAMILY = r"""
import os, subprocess, sys, time
MiB = 2**20
if sys.argv[1] == "exec":
    child = subprocess.Popen([sys.executable, "-c",
        "import sys, time; x = bytes([7]) * (100 * 2**20); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print(child.pid, flush=True)
else:
    held = bytes([7]) * (100 * MiB)
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["exec", "fork"])
def test_a_subprocess_first_seen_holding_memory_is_charged_only_its_own(how):
    """Whatever the monitor first sees a subprocess hold of its own counts (it allocated before the
    first look); what a fork without exec shares with its parent does not."""
    parent = subprocess.Popen([sys.executable, "-c", _FAMILY, how], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        state = SlotState(1, parent.pid, True, "t", None, None, proc.rss(parent.pid), 0, 0)
        tree = Tree(state, Readers(), frozenset())
        assert list(tree.members) == [child]
        charged = tree.usage() - (proc.rss(parent.pid) - state.baseline)
        tree.close()
    finally:
        parent.kill()
        parent.wait()
    if how == "exec":
        assert 100 * MiB <= charged <= 120 * MiB, charged / MiB
    else:
        assert 0 <= charged <= 8 * MiB, charged / MiB
