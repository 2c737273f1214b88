"""Slot groups on this machine's real cgroup v1 memory controller.

Every group is created below this process's own memory cgroup in a base named
``oomless-test-<pid>-<random>`` and removed by the fixture, also when a test fails.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import uuid

import pytest

from oomless.linux import proc
from oomless.linux.cgroup.groups import group_name, stale_groups
from oomless.linux.cgroup.host import detect
from oomless.linux.cgroup.v1 import SlotGroupsV1
from oomless.linux.kill import kill_pids

from .slot_helpers import fork_member, reap, rmdir_tree, wait_empty, wait_for

MiB = 2**20
LIMIT = 64 * MiB

HOST = detect()
pytestmark = pytest.mark.skipif(
    HOST.version != 1 or not HOST.usable,
    reason=f"needs a writable cgroup v1 memory controller; this host: {HOST.reason}",
)




@pytest.fixture
def base():
    assert HOST.path is not None
    path = os.path.join(HOST.path, f"oomless-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield path
    finally:
        # Kill whatever is left in any group below base, then remove the directories.
        for root, _dirs, files in os.walk(path):
            if "cgroup.procs" in files:
                with open(os.path.join(root, "cgroup.procs")) as fh:
                    pids = [int(p) for p in fh.read().split()]
                if pids:
                    with open(os.path.join(root, "memory.limit_in_bytes"), "w") as fh:
                        fh.write("-1")  # let paused members run so SIGKILL can complete
                    kill_pids(pids)
        rmdir_tree(path)
        assert not os.path.exists(path), f"test cgroup {path} could not be removed"


@pytest.fixture
def groups(base):
    g = SlotGroupsV1(base)
    g.create(2)
    try:
        yield g
    finally:
        g.remove(kill=True)








@pytest.fixture
def oom_slot(groups):
    """Slot 0 limited to 64 MiB with a child paused at the limit, trying to touch 256 MiB.

    Yields (groups, child pid, oom eventfd, whether the eventfd fired within 20 s).
    """
    groups.set_limit(0, LIMIT)
    efd = groups.oom_eventfd(0)
    pid = fork_member(groups, 0, 256 * MiB)
    try:
        fired = bool(select.select([efd], [], [], 20)[0])
        yield groups, pid, efd, fired
    finally:
        groups.set_limit(0, None)  # let a paused child run so SIGKILL completes
        reap(pid)
        os.close(efd)




# --- creation and membership ----------------------------------------------------------


def test_create_makes_one_group_per_slot_below_base(groups):
    assert groups.slots() == [0, 1]
    assert all(os.path.isfile(os.path.join(groups.slot_dir(i), "memory.limit_in_bytes")) for i in (0, 1))


def test_create_disables_the_kernel_oom_killer_in_each_slot(groups):
    with open(os.path.join(groups.slot_dir(0), "memory.oom_control")) as fh:
        assert "oom_kill_disable 1" in fh.read()


def test_a_new_slot_has_no_limit(groups):
    with open(os.path.join(groups.slot_dir(1), "memory.limit_in_bytes")) as fh:
        assert int(fh.read()) >= 2**62


def test_set_limit_writes_the_limit_in_bytes(groups):
    groups.set_limit(1, LIMIT)
    with open(os.path.join(groups.slot_dir(1), "memory.limit_in_bytes")) as fh:
        assert int(fh.read()) == LIMIT


def test_set_limit_none_removes_the_limit(groups):
    groups.set_limit(1, LIMIT)
    groups.set_limit(1, None)
    with open(os.path.join(groups.slot_dir(1), "memory.limit_in_bytes")) as fh:
        assert int(fh.read()) >= 2**62


def test_join_puts_a_forked_child_in_its_slot(groups):
    pid = fork_member(groups, 1, 0)
    try:
        assert groups.procs(1) == [pid]
        assert groups.procs(0) == []
    finally:
        reap(pid)


def test_usage_counts_what_a_member_allocated(groups):
    before = groups.usage(1)
    pid = fork_member(groups, 1, 100 * MiB)
    try:
        assert wait_for(lambda: groups.usage(1), before + 95 * MiB) >= before + 95 * MiB
    finally:
        reap(pid)


def test_usage_excludes_page_cache_charged_to_the_slot(groups, tmp_path):
    # A slot member writes 64 MiB to a disk file: the page cache stays charged to the slot.
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={tmp_path / 'cache'}", "bs=1M", "count=64", "status=none"],
        preexec_fn=lambda: groups.join(1, os.getpid()),
        check=True,
    )
    with open(os.path.join(groups.slot_dir(1), "memory.usage_in_bytes")) as fh:
        assert int(fh.read()) >= 60 * MiB  # precondition: the cache is charged here
    assert groups.usage(1) < 16 * MiB


def test_reset_peak_lowers_the_peak_to_current_usage(groups):
    pid = fork_member(groups, 1, 100 * MiB)
    try:
        assert wait_for(lambda: groups.peak(1), 95 * MiB) >= 95 * MiB
    finally:
        reap(pid)
    assert wait_empty(groups, 1) == []
    groups.reset_peak(1)
    assert groups.peak(1) < 50 * MiB


# --- hitting the limit ---------------------------------------------------------------------


def test_oom_eventfd_becomes_readable_when_a_slot_hits_its_limit(oom_slot):
    _groups, _pid, efd, fired = oom_slot
    assert fired
    assert int.from_bytes(os.read(efd, 8), sys.byteorder) >= 1


def test_under_oom_is_true_while_a_slot_is_paused_at_its_limit(oom_slot):
    groups, _pid, _efd, fired = oom_slot
    assert fired
    assert groups.under_oom(0) is True


def test_under_oom_is_false_for_a_slot_below_its_limit(oom_slot):
    groups, _pid, _efd, _fired = oom_slot
    assert groups.under_oom(1) is False


def test_peak_of_a_slot_at_its_limit_reaches_the_limit(oom_slot):
    groups, _pid, _efd, fired = oom_slot
    assert fired
    assert groups.peak(0) >= LIMIT


def test_the_child_is_paused_not_killed_by_the_kernel(oom_slot):
    groups, pid, _efd, fired = oom_slot
    assert fired
    assert groups.procs(0) == [pid]
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)


def test_governor_kill_of_the_slot_members_empties_the_slot(oom_slot):
    groups, pid, _efd, fired = oom_slot
    assert fired
    assert kill_pids(groups.procs(0)) == [pid]
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert wait_empty(groups, 0) == []


def test_a_slot_is_no_longer_under_oom_after_its_members_are_killed(oom_slot):
    groups, pid, _efd, fired = oom_slot
    assert fired
    kill_pids(groups.procs(0))
    os.waitpid(pid, 0)
    assert wait_empty(groups, 0) == []
    assert groups.under_oom(0) is False


# --- removal -------------------------------------------------------------------------------


def test_remove_deletes_the_slot_groups_and_the_base(base):
    groups = SlotGroupsV1(base)
    groups.create(2)
    groups.remove()
    assert not os.path.exists(base)


def test_remove_kills_members_paused_at_their_limit_and_returns_them(base):
    groups = SlotGroupsV1(base)
    groups.create(1)
    groups.set_limit(0, LIMIT)
    efd = groups.oom_eventfd(0)
    pid = fork_member(groups, 0, 256 * MiB)
    try:
        assert select.select([efd], [], [], 20)[0]
        assert groups.remove(kill=True) == [pid]
        _, status = os.waitpid(pid, 0)
        assert os.WTERMSIG(status) == signal.SIGKILL
        assert not os.path.exists(base)
    finally:
        os.close(efd)
        reap(pid)


def test_remove_of_a_base_that_does_not_exist_is_a_no_op(base):
    assert SlotGroupsV1(base).remove() == []


# --- stale groups ----------------------------------------------------------------------------


def test_stale_groups_finds_a_group_named_for_a_dead_worker(base):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    name = group_name(dead.pid)
    dead.wait()
    os.makedirs(os.path.join(base, name))
    assert stale_groups(base) == [os.path.join(base, name)]


def test_stale_groups_keeps_the_group_of_a_live_worker(base):
    os.makedirs(os.path.join(base, group_name()))
    assert stale_groups(base) == []


def test_stale_groups_finds_a_group_whose_pid_now_names_another_process(base):
    start = proc.start_time(os.getpid())
    os.makedirs(os.path.join(base, f"oomless-{os.getpid()}-{start - 1}"))
    assert stale_groups(base) == [os.path.join(base, f"oomless-{os.getpid()}-{start - 1}")]


def test_stale_groups_ignores_groups_not_named_by_oomless(base):
    for name in ("oomless-test-1-2", "other-1-2", "oomless-x-2", "slot-0"):
        os.makedirs(os.path.join(base, name))
    assert stale_groups(base) == []


def test_stale_groups_of_a_missing_parent_is_empty(base):
    assert stale_groups(os.path.join(base, "nope")) == []
