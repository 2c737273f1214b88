"""kill_tree against real process trees: every member dies, strangers are never signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from oomless.linux import proc
from oomless.linux.kill import descendants, kill_pids, kill_tree, releaser

# Root of a tree: one plain child, one child in a new session (setsid), then waits on stdin.
_TREE = r"""
import subprocess, sys
sleep = [sys.executable, "-c", "import time; time.sleep(300)"]
plain = subprocess.Popen(sleep, stdin=subprocess.DEVNULL)
detached = subprocess.Popen(sleep, stdin=subprocess.DEVNULL, start_new_session=True)
print(plain.pid, detached.pid, flush=True)
sys.stdin.read()
"""

# Root leads its own process group; its child forks a grandchild and exits, so the
# grandchild is reparented away from the tree but stays in the root's group.
_ORPHANING = r"""
import os, sys, time
os.setpgid(0, 0)
child = os.fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(300)
        os._exit(0)
    print(grandchild, flush=True)
    os._exit(0)
os.waitpid(child, 0)
print("orphaned", flush=True)
sys.stdin.read()
"""


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2]


def _gone(pid: int, start: int) -> bool:
    """The process that had this PID and start time has exited (a zombie counts: it holds no memory)."""
    return proc.start_time(pid) != start or _state(pid) in ("Z", "X")


def _wait_gone(pids: dict[int, int], timeout: float = 5.0) -> list[int]:
    """Poll up to ``timeout`` seconds; return the PIDs still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid, start in pids.items() if not _gone(pid, start)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


class Spawned:
    """Processes started by one test, SIGKILLed at teardown if they are still the same processes."""

    def __init__(self) -> None:
        self.roots: list[subprocess.Popen] = []
        self.starts: dict[int, int] = {}

    def root(self, script: str) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.roots.append(child)
        self.track(child.pid)
        return child

    def track(self, pid: int) -> int:
        start = proc.start_time(pid)
        assert start is not None, f"process {pid} is already gone"
        self.starts[pid] = start
        return start

    def cleanup(self) -> None:
        for pid, start in self.starts.items():
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if proc.start_time(pid) == start:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
        for child in self.roots:
            child.kill()
            child.communicate()


@pytest.fixture
def spawned():
    s = Spawned()
    yield s
    s.cleanup()


@pytest.fixture
def tree(spawned):
    """(root Popen, {pid: start time} of root and both grandchildren)."""
    root = spawned.root(_TREE)
    plain, detached = (int(p) for p in root.stdout.readline().split())
    members = {root.pid: spawned.track(root.pid), plain: spawned.track(plain), detached: spawned.track(detached)}
    return root, members


def test_descendants_finds_children_in_a_new_session(tree):
    root, members = tree
    assert sorted(descendants(root.pid)) == sorted(pid for pid in members if pid != root.pid)


def test_kill_tree_returns_root_and_every_descendant(tree):
    root, members = tree
    killed = kill_tree(root.pid, members[root.pid])
    assert sorted(killed) == sorted(members)


def test_kill_tree_sigkills_the_root(tree):
    root, members = tree
    kill_tree(root.pid, members[root.pid])
    assert root.wait(timeout=5) == -signal.SIGKILL


def test_kill_tree_leaves_no_orphans(tree):
    root, members = tree
    kill_tree(root.pid, members[root.pid])
    root.wait(timeout=5)
    assert _wait_gone(members) == []


def test_kill_tree_sparing_the_root_kills_every_descendant_and_leaves_the_root_running(tree):
    root, members = tree
    killed = kill_tree(root.pid, members[root.pid], spare_root=True)
    assert sorted(killed) == sorted(pid for pid in members if pid != root.pid)
    others = {pid: start for pid, start in members.items() if pid != root.pid}
    assert _wait_gone(others) == []
    assert _state(root.pid) in ("S", "R")  # neither killed nor left stopped


def test_kill_tree_with_a_wrong_start_time_signals_nothing(tree):
    root, members = tree
    assert kill_tree(root.pid, members[root.pid] + 1) == []
    assert all(_state(pid) in ("S", "R") for pid in members)  # neither killed nor stopped


def test_kill_tree_of_an_exited_and_reaped_root_signals_nothing(spawned):
    root = spawned.root("pass")
    start = spawned.starts[root.pid]
    root.wait(timeout=10)
    assert kill_tree(root.pid, start) == []


def test_kill_tree_kills_an_orphan_left_in_the_roots_process_group(spawned):
    root = spawned.root(_ORPHANING)
    grandchild = int(root.stdout.readline())
    assert root.stdout.readline() == "orphaned\n"
    start = spawned.track(grandchild)
    # Preconditions: the grandchild is no longer in the tree, only in the root's group.
    assert proc.parent_pid(grandchild) != root.pid
    assert grandchild not in descendants(root.pid)
    assert os.getpgid(grandchild) == root.pid

    kill_tree(root.pid, spawned.starts[root.pid])
    root.wait(timeout=5)
    assert _wait_gone({grandchild: start}) == []


def test_kill_tree_spares_a_process_in_the_same_group_when_the_root_does_not_lead_it(tree, spawned):
    # The root shares this test process's group: signalling that group would hit strangers.
    root, members = tree
    bystander = spawned.root("import sys; sys.stdin.read()")
    assert os.getpgid(root.pid) == os.getpgid(bystander.pid) == os.getpgid(0)
    kill_tree(root.pid, members[root.pid])
    root.wait(timeout=5)
    assert _wait_gone(members) == []
    assert not _gone(bystander.pid, spawned.starts[bystander.pid])


def test_kill_pids_kills_each_listed_process(tree):
    root, members = tree
    grandchildren = [pid for pid in members if pid != root.pid]
    assert sorted(kill_pids(grandchildren)) == sorted(grandchildren)
    assert _wait_gone({pid: members[pid] for pid in grandchildren}) == []


def test_kill_pids_skips_pids_that_are_gone(spawned):
    root = spawned.root("pass")
    root.wait(timeout=10)
    assert kill_pids([root.pid]) == []


FREEZER = "/sys/fs/cgroup/freezer"


@pytest.fixture
def frozen_group(spawned):
    """A cgroup v1 freezer group (removed after the test, thawed first): a process frozen there
    cannot run, so a SIGKILL leaves it holding its memory until someone else frees it."""
    if not os.access(f"{FREEZER}/cgroup.procs", os.W_OK):
        pytest.skip(f"needs a writable cgroup v1 freezer at {FREEZER} (cgroup v2 lets SIGKILL through a freeze)")
    path = f"{FREEZER}/oomless-test-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(path)
    try:
        yield path
    finally:
        with open(f"{path}/freezer.state", "w") as fh:
            fh.write("THAWED")
        spawned.cleanup()
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_the_releaser_frees_the_memory_of_a_killed_process_that_cannot_run(spawned, frozen_group):
    holder = spawned.root("import sys; b = bytearray(256 << 20); print('held', flush=True); sys.stdin.read()")
    assert holder.stdout.readline().strip() == "held"
    with open(f"{frozen_group}/cgroup.procs", "w") as fh:
        fh.write(str(holder.pid))
    with open(f"{frozen_group}/freezer.state", "w") as fh:
        fh.write("FROZEN")
    deadline = time.monotonic() + 10
    while open(f"{frozen_group}/freezer.state").read().strip() != "FROZEN":
        assert time.monotonic() < deadline, "the freezer did not freeze the process"
        time.sleep(0.02)

    assert kill_pids([holder.pid]) == [holder.pid]
    assert releaser.drain(timeout=10)
    # Still there (frozen, so it never ran its own exit), but what it held is freed.
    assert not _gone(holder.pid, spawned.starts[holder.pid])
    assert proc.rss(holder.pid) < 16 << 20


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_releaser_closes_every_pidfd_it_is_given(tree):
    root, members = tree
    releaser.drain(timeout=10)
    before = _open_fds()
    assert sorted(kill_tree(root.pid, members[root.pid])) == sorted(members)
    assert releaser.drain(timeout=10)
    root.wait(timeout=5)
    assert _open_fds() == before


def test_a_forked_process_releases_on_a_thread_of_its_own(spawned):
    releaser.start()  # the parent's thread runs; a fork copies none of it
    victim = spawned.root("import sys; sys.stdin.read()")
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked child reports through its exit status
        ok = False
        try:
            ok = kill_pids([victim.pid]) == [victim.pid] and releaser.drain(timeout=10)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    victim.wait(timeout=5)
    assert victim.returncode == -signal.SIGKILL
