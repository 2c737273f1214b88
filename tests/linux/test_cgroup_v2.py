"""Slot groups on a real cgroup v2 kernel (the guest of ``tests/v2vm/run``).

Skipped on a host without a writable cgroup v2 memory controller (this
project's machines); ``make test`` runs this module in a user-mode-linux guest
booted with ``cgroup_no_v1=all``.  Each test makes a worker group
``oomless-test-<pid>-<random>`` below this process's group (what systemd's
``Delegate=yes`` hands a service), and the fixture removes it, also when a test
fails.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from oomless.linux.cgroup.host import detect, v2_delegation_problem
from oomless.linux.cgroup.v2 import SlotGroupsV2

from .slot_helpers import fork_member, reap, rmdir_tree, wait_empty, wait_for

MiB = 2**20
LIMIT = 64 * MiB

HOST = detect()
if HOST.version != 2 or HOST.path is None or not os.access(os.path.join(HOST.path, "cgroup.subtree_control"), os.W_OK):
    pytest.skip(
        f"needs a writable cgroup v2 memory controller (tests/v2vm/run boots one); this host: {HOST.reason}",
        allow_module_level=True,
    )


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def _into(group: str):
    """A preexec_fn that moves the new process into ``group``."""

    def join() -> None:
        with open(os.path.join(group, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))

    return join


def _events(path: str, local: bool = False) -> dict[str, int]:
    text = _read(os.path.join(path, "memory.events.local" if local else "memory.events"))
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}




@pytest.fixture
def worker_group():
    """An empty delegated group for one "worker", memory enabled for it by its parent."""
    assert HOST.path is not None
    path = os.path.join(HOST.path, f"oomless-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        rmdir_tree(path)
        assert not os.path.exists(path), f"test cgroup {path} could not be removed"


@pytest.fixture
def groups(worker_group):
    g = SlotGroupsV2(os.path.join(worker_group, "oomless-1-2"))
    g.create(2)
    try:
        yield g
    finally:
        g.remove(kill=True)










# --- layout ------------------------------------------------------------------------------------


def test_real_v2_create_enables_memory_for_the_slots_in_the_worker_group_and_the_base(groups, worker_group):
    assert "memory" in _read(os.path.join(worker_group, "cgroup.subtree_control")).split()
    assert "memory" in _read(os.path.join(groups.base, "cgroup.subtree_control")).split()
    assert groups.slots() == [0, 1]
    # The worker's leaf shares the base group's memory.high (the slots' shared limit): no swap for it.
    for group in (os.path.join(groups.base, groups.LEAF), groups.slot_dir(0)):
        if os.path.exists(os.path.join(group, "memory.swap.max")):
            assert _read(os.path.join(group, "memory.swap.max")) == "0"


def test_real_v2_a_new_slot_has_no_limit_and_kills_as_a_group(groups):
    assert _read(os.path.join(groups.slot_dir(0), "memory.max")) == "max"
    assert _read(os.path.join(groups.slot_dir(0), "memory.oom.group")) == "1"


def test_real_v2_set_limit_writes_memory_max_and_none_lifts_it(groups):
    groups.set_limit(1, LIMIT)
    assert int(_read(os.path.join(groups.slot_dir(1), "memory.max"))) == LIMIT
    groups.set_limit(1, None)
    assert _read(os.path.join(groups.slot_dir(1), "memory.max")) == "max"


def test_real_v2_a_worker_alone_in_its_group_moves_itself_to_a_leaf_and_back(worker_group):
    # The "no internal processes" rule: the worker's own group cannot both hold the worker and
    # enable memory for slot groups, so the worker moves into <base>/worker first, and back on removal.
    script = textwrap.dedent(
        f"""
        import os, sys
        from oomless.linux.cgroup.host import v2_delegation_problem
        from oomless.linux.cgroup.v2 import SlotGroupsV2
        assert v2_delegation_problem({worker_group!r}) is None, v2_delegation_problem({worker_group!r})
        g = SlotGroupsV2({os.path.join(worker_group, "oomless-9-9")!r})
        g.create(1)
        print(open("/proc/self/cgroup").read().strip(), flush=True)
        g.remove()
        print(open("/proc/self/cgroup").read().strip(), flush=True)
        enabled = open({os.path.join(worker_group, "cgroup.subtree_control")!r}).read().strip()
        print(os.path.exists(g.base), enabled or "-")
        """
    )
    rel = worker_group[len(HOST.path or ""):]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        preexec_fn=_into(worker_group),
    )
    assert done.returncode == 0, done.stderr
    inside, after, state = done.stdout.splitlines()
    assert inside == f"0::{rel}/oomless-9-9/worker"
    assert after == f"0::{rel}"
    assert state == "False -"


def test_real_v2_a_group_shared_with_another_process_is_refused_by_name(worker_group):
    # A process outside this one's family (its parent shell is gone: it is init's now).
    spawned = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], preexec_fn=_into(worker_group),
                             capture_output=True, text=True, check=True)
    stranger = int(spawned.stdout)
    try:
        problem = v2_delegation_problem(worker_group, me=os.getpid())
        assert problem is not None and str(stranger) in problem and "no internal processes" in problem
    finally:
        os.kill(stranger, signal.SIGKILL)


def test_real_v2_the_workers_own_child_in_its_group_moves_with_it(worker_group):
    # `airflow celery worker` starts a bundle cleanup process before the pool: the worker's own
    # child, in the worker's group.  It moves into the leaf with the worker, and back.
    script = textwrap.dedent(
        f"""
        import subprocess
        from oomless.linux.cgroup.host import v2_delegation_problem
        from oomless.linux.cgroup.v2 import SlotGroupsV2
        child = subprocess.Popen(["sleep", "60"])
        assert v2_delegation_problem({worker_group!r}) is None, v2_delegation_problem({worker_group!r})
        g = SlotGroupsV2({os.path.join(worker_group, "oomless-9-9")!r})
        g.create(1)
        print(open(f"/proc/{{child.pid}}/cgroup").read().strip(), flush=True)
        g.remove()
        print(open(f"/proc/{{child.pid}}/cgroup").read().strip(), flush=True)
        child.kill()
        """
    )
    rel = worker_group[len(HOST.path or ""):]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=_into(worker_group))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"0::{rel}/oomless-9-9/worker", f"0::{rel}"]


# --- accounting ----------------------------------------------------------------------------


def test_real_v2_join_puts_a_forked_child_in_its_slot(groups):
    pid = fork_member(groups, 1, 0)
    try:
        assert groups.procs(1) == [pid]
        assert groups.procs(0) == []
    finally:
        reap(pid)


def test_real_v2_usage_counts_what_a_member_allocated(groups):
    before = groups.usage(1)
    pid = fork_member(groups, 1, 100 * MiB)
    try:
        assert wait_for(lambda: groups.usage(1), before + 95 * MiB) >= before + 95 * MiB
    finally:
        reap(pid)


def test_real_v2_usage_counts_tmpfs_but_not_page_cache(groups):
    # /dev/shm (tmpfs) cannot be reclaimed: it counts.  Page cache of a file read from disk
    # (here the host's, through hostfs) can be dropped: it does not.
    import pyarrow

    shm = f"/dev/shm/oomless-test-{uuid.uuid4().hex[:8]}"
    big = max((e.path for e in os.scandir(os.path.dirname(pyarrow.__file__)) if e.is_file()), key=os.path.getsize)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={shm}", "bs=1M", "count=48", "status=none"],
                       preexec_fn=lambda: groups.join(1, os.getpid()), check=True)
        subprocess.run(["cat", big], stdout=subprocess.DEVNULL, preexec_fn=lambda: groups.join(1, os.getpid()),
                       check=True)
        cache = os.path.getsize(big)
        used, shmem = groups.usage_shmem(1)
        assert shmem >= 46 * MiB
        assert int(_read(os.path.join(groups.slot_dir(1), "memory.current"))) >= used + cache // 2  # precondition
        assert 46 * MiB <= used < 46 * MiB + 16 * MiB
    finally:
        if os.path.exists(shm):
            os.remove(shm)


def test_real_v2_peak_reaches_what_a_member_allocated(groups):
    pid = fork_member(groups, 1, 100 * MiB)
    try:
        assert wait_for(lambda: groups.peak(1), 95 * MiB) >= 95 * MiB
    finally:
        reap(pid)


def test_real_v2_reset_peak_lowers_the_peak_where_the_kernel_allows_it(groups):
    pid = fork_member(groups, 1, 100 * MiB)
    wait_for(lambda: groups.peak(1), 95 * MiB)
    reap(pid)
    assert wait_empty(groups, 1) == []
    groups.reset_peak(1)
    if groups.peak_resets(1):
        assert groups.peak(1) < 50 * MiB
    else:  # before Linux 6.12 memory.peak is read-only: the group's lifetime peak
        assert groups.peak(1) >= 95 * MiB


# --- the limit ---------------------------------------------------------------------------------


def test_real_v2_the_kernel_kills_the_whole_slot_at_its_limit_and_says_so(groups):
    groups.set_limit(0, LIMIT)
    pids = [fork_member(groups, 0, 0, hold=60)]
    pids.append(fork_member(groups, 0, 256 * MiB))
    statuses = [_reap_wait(pid) for pid in reversed(pids)]
    # memory.oom.group = 1: the sleeping member dies with the one that broke the limit.
    assert all(os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGKILL for s in statuses), statuses
    assert groups.oom_kills(0) >= 1
    assert _events(groups.slot_dir(0))["oom_group_kill"] >= 1
    assert groups.procs(0) == []


def _reap_wait(pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return status
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} was not killed within {timeout} s")


def test_real_v2_the_slots_stall_at_their_shared_limit_unkilled_and_the_kernel_says_so(groups):
    """v2 cannot turn the OOM killer off (v1's pause at the shared limit): the slots' shared limit
    is the base group's memory.high.  Past it the kernel throttles the members (no swap: they
    stall) and kills none, and notifies the base group's memory.events.local, which the
    governor's monitor polls; lifted, the members run on."""
    fd = groups.events_fd(None)
    poller = select.epoll()
    try:
        os.pread(fd, 4096, 0)
        poller.register(fd, select.EPOLLPRI)
        limit = groups.shared_usage() + LIMIT
        groups.set_total_limit(limit)
        assert _read(os.path.join(groups.base, "memory.high")) == str(limit)
        assert not groups.at_total_limit()
        pid = fork_member(groups, 0, 4 * LIMIT, hold=60)
        try:
            assert poller.poll(60), "no notice from the base group's memory.events.local"
            assert wait_for(lambda: int(groups.at_total_limit()), 1) == 1
            assert _events(groups.base, local=True)["high"] > 0
            time.sleep(1)
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the member died at memory.high"
            assert groups.at_total_limit() and _events(groups.base)["oom_kill"] == 0
            groups.set_total_limit(None)
            assert _read(os.path.join(groups.base, "memory.high")) == "max"
            assert wait_for(lambda: groups.usage(0), 4 * LIMIT) >= 4 * LIMIT  # it finished allocating
            assert not groups.at_total_limit()
        finally:
            reap(pid)
    finally:
        poller.close()
        os.close(fd)


def test_real_v2_cgroup_kill_empties_a_slot(groups):
    pids = [fork_member(groups, 0, 0), fork_member(groups, 0, 0)]
    with open(os.path.join(groups.slot_dir(0), "cgroup.kill"), "w") as fh:
        fh.write("1")
    statuses = [_reap_wait(pid) for pid in pids]
    assert all(os.WTERMSIG(s) == signal.SIGKILL for s in statuses)
    assert wait_empty(groups, 0) == []


# --- removal -----------------------------------------------------------------------------------


def test_real_v2_remove_kills_members_and_deletes_the_groups(worker_group):
    groups = SlotGroupsV2(os.path.join(worker_group, "oomless-1-2"))
    groups.create(2)
    pid = fork_member(groups, 1, 10 * MiB)
    try:
        assert groups.remove(kill=True) == [pid]
        assert os.WTERMSIG(_reap_wait(pid)) == signal.SIGKILL
        assert not os.path.exists(groups.base)
    finally:
        reap(pid)


# --- the worker group's own pressure signals -------------------------------------------------------


def test_real_v2_group_signals_see_the_worker_group_hit_its_own_limit_not_a_slots(worker_group):
    from oomless.enforce.eviction import group_pressure
    from oomless.linux.cgroup.reads import GroupSignals

    with open(os.path.join(worker_group, "cgroup.subtree_control"), "w") as fh:
        fh.write("+memory")
    slot = os.path.join(worker_group, "slot")
    os.mkdir(slot)
    signals = GroupSignals(worker_group)
    try:
        # Looks one second apart for the signals' window, however long each step takes in the guest.
        signals.read(now=1.0)
        # A slot at its own limit: an event of the slot, not of the worker's group.
        with open(os.path.join(slot, "memory.max"), "w") as fh:
            fh.write(str(LIMIT))
        _run_in(slot, 256 * MiB)
        assert _events(slot)["oom_kill"] >= 1
        assert group_pressure(*signals.read(now=2.0)) is None
        # The worker's group at its limit: its own event.
        with open(os.path.join(slot, "memory.max"), "w") as fh:
            fh.write("max")
        with open(os.path.join(worker_group, "memory.max"), "w") as fh:
            fh.write(str(LIMIT))
        _run_in(slot, 256 * MiB)
        grown, _some, _full = signals.read(now=3.0)
        assert grown.get("max", 0) > 0 and grown.get("oom", 0) > 0, grown
        assert "out of memory" in group_pressure(grown, None, None)
    finally:
        signals.close()


def test_real_v2_psi_sees_the_worker_group_stall_at_its_memory_high(worker_group):
    """PSI (``memory.pressure``) read from a real kernel: a task held at the worker group's
    ``memory.high`` stalls (no swap: the kernel throttles it), and :func:`group_pressure` names
    the stall with the figure.  User-mode-linux has no PSI; ``tests/v2vm/run --qemu`` boots a
    kernel that has it."""
    from oomless.enforce.eviction import group_pressure
    from oomless.linux.cgroup.reads import GroupSignals

    signals = GroupSignals(worker_group)
    try:
        if not signals.has_psi:
            assert os.environ.get("OOMLESS_V2VM_KIND") != "qemu", "Debian's generic kernel has PSI: psi=0?"
            pytest.skip("this kernel has no PSI (memory.pressure); tests/v2vm/run --qemu boots one that has")
        with open(os.path.join(worker_group, "cgroup.subtree_control"), "w") as fh:
            fh.write("+memory")
        slot = os.path.join(worker_group, "slot")
        os.mkdir(slot)
        signals.read()
        with open(os.path.join(worker_group, "memory.high"), "w") as fh:
            fh.write(str(LIMIT))
        # Grows to 4x the group's memory.high, 4 MiB at a time, and holds it.
        hog = subprocess.Popen(
            [sys.executable, "-c", "import time\nkept = []\nfor _ in range(64):\n    kept.append(b'x' * 4194304)\n"
             "time.sleep(600)"],
            preexec_fn=_into(slot),
        )
        try:
            seen: dict[str, int] = {}
            why = None
            deadline = time.monotonic() + 240
            while why is None and time.monotonic() < deadline:
                time.sleep(1)
                grown, some, full = signals.read()
                for name, count in grown.items():
                    seen[name] = seen.get(name, 0) + count
                why = group_pressure(grown, some, full)  # what the monitor says, looking once a second
            assert seen.get("high", 0) > 0, seen
            assert why is not None and "at its memory.high" in why and "PSI" in why, (why, seen, some, full)
            assert seen.get("oom", 0) == 0 and seen.get("max", 0) == 0, seen  # memory.high throttles, never kills
            assert hog.poll() is None
        finally:
            hog.kill()
            hog.wait()
    finally:
        signals.close()


def _run_in(group: str, allocate: int) -> None:
    """A process in ``group`` that touches ``allocate`` bytes (the kernel kills it at a limit)."""
    done = subprocess.run([sys.executable, "-c", f"b = b'x' * {allocate}"], preexec_fn=_into(group), timeout=60)
    assert done.returncode == -signal.SIGKILL
