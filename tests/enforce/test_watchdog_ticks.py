"""The watchdog's decisions, one monitor tick at a time, on made-up readings.

These drive :meth:`WatchdogEnforcer.tick` in-process: the process trees, their
resident memory and what is available to the worker come from a made-up process
table (:class:`FakeProcs`), and the killer signals nobody, it only records and
marks the made-up processes gone.  What a real tree does under a real worker is
in ``tests/celery`` (``test_governed_worker.py``, ``test_true_budget.py``) and
``tests/linux``; here the monitor's rules are checked one tick at a time.
"""

from __future__ import annotations

import threading
import time

import pytest

from oomless.enforce.readers import Killer, Readers
from oomless.enforce.slots import SlotTable
from oomless.enforce.watchdog import WatchdogEnforcer

MiB = 2**20
GiB = 2**30
TICK = 0.005


class FakeStatm:
    """A kept-open RSS reader of a made-up process: ``None`` once it exited."""

    def __init__(self, procs: FakeProcs, pid: int) -> None:
        self.procs, self.pid = procs, pid

    def read(self) -> int | None:
        return self.procs.rss.get(self.pid)

    def close(self) -> None:
        pass


class FakeChildren:
    """A kept-open list of a made-up process's children: ``[]`` once it exited."""

    def __init__(self, procs: FakeProcs, pid: int) -> None:
        self.procs, self.pid = procs, pid

    def read(self) -> list[int]:
        return list(self.procs.kids.get(self.pid, []))

    def close(self) -> None:
        pass


class FakeProcs:
    """A made-up process table: each live process's resident bytes and children, and what the
    machine has available."""

    def __init__(self) -> None:
        self.rss: dict[int, int] = {}
        self.kids: dict[int, list[int]] = {}
        self.shared: dict[int, int] = {}  # what a process shares with others (default: all it holds)
        self.available = 64 * GiB

    def spawn(self, pid: int, rss: int, parent: int | None = None) -> int:
        self.rss[pid] = rss
        self.kids[pid] = []
        if parent is not None:
            self.kids[parent].append(pid)
        return pid

    def exit(self, pid: int) -> None:
        for child in self.kids.pop(pid, []):
            self.exit(child)
        self.rss.pop(pid, None)
        for children in self.kids.values():
            if pid in children:
                children.remove(pid)

    def statm(self, pid: int) -> FakeStatm:
        if pid not in self.rss:
            raise FileNotFoundError(pid)
        return FakeStatm(self, pid)

    def children(self, pid: int) -> list[int]:
        return list(self.kids.get(pid, []))

    def lister(self, pid: int) -> FakeChildren:
        if pid not in self.rss:
            raise FileNotFoundError(pid)
        return FakeChildren(self, pid)

    def readers(self) -> Readers:
        return Readers(
            statm=self.statm,
            start_time=lambda pid: 1000 + pid if pid in self.rss else None,
            children=self.lister,
            all_children=self.children,
            exited=lambda pid: pid not in self.rss,
            rss=lambda pid: self.rss[pid],
            uss=lambda pid: self.rss[pid],
            shared=lambda pid: self.shared.get(pid, self.rss[pid]),
            rss_shmem=lambda pid: 0,
            tmpfs_devices=frozenset,
            mem_total=lambda: 64 * GiB,
            mem_available=lambda: self.available,
            working_set=lambda version, path: None,
        )


class FakeKiller:
    """Records each kill and makes the made-up processes exit; signals nobody."""

    def __init__(self, procs: FakeProcs) -> None:
        self.procs = procs
        self.trees: list[tuple[int, bool]] = []  # (root, spare_root)
        self.members: list[list[int]] = []
        self.orphans: list[int] = []
        self.swept = threading.Event()
        self.finds_nothing = False  # the tree exited between the reading and the kill

    def tree(self, root: int, root_start: int | None, spare_root: bool = False) -> list[int]:
        self.trees.append((root, spare_root))
        if self.finds_nothing:
            return []
        killed = [] if spare_root else [root]
        for child in self.procs.children(root):
            killed.append(child)
            self.procs.exit(child)
        if not spare_root:
            self.procs.exit(root)
        return killed

    def kill_members(self, members) -> list[int]:
        pids = [reader.pid for reader in members if reader.read() is not None]
        self.members.append(pids)
        for pid in pids:
            self.procs.exit(pid)
        return pids

    def kill_orphans(self, leader: int, leader_start: int | None, marker: bytes | None) -> list[int]:
        self.orphans.append(leader)
        self.swept.set()
        return []

    def killer(self) -> Killer:
        def nothing_else(*args: object) -> list[int]:
            raise AssertionError("the watchdog's monitor kills only trees, members and orphans")

        return Killer(tree=self.tree, pids=nothing_else, members=self.kill_members, orphans=self.kill_orphans,
                      matching=nothing_else)


@pytest.fixture
def procs() -> FakeProcs:
    return FakeProcs()


@pytest.fixture
def killer(procs: FakeProcs) -> FakeKiller:
    return FakeKiller(procs)


@pytest.fixture
def table():
    t = SlotTable(2)
    yield t
    t.close()


@pytest.fixture
def watchdog(table: SlotTable, procs: FakeProcs, killer: FakeKiller):
    enforcer = WatchdogEnforcer(table, interval=TICK, readers=procs.readers(), killer=killer.killer())
    yield enforcer
    enforcer.stop()


@pytest.fixture
def tick(watchdog: WatchdogEnforcer):
    """``tick(n)``: n monitor ticks, one interval apart, as the monitor thread would run them."""
    now = [0.0]

    def run(times: int = 1) -> None:
        for _ in range(times):
            now[0] += TICK
            watchdog.tick(now[0])

    return run


def start_task(table: SlotTable, procs: FakeProcs, index: int, pid: int, task_id: str, *, rss: int = 50 * MiB,
               limit: int | None = None, request: int | None = None) -> None:
    """Pool child ``pid`` (resident ``rss``) starts ``task_id`` in slot ``index``: its baseline is ``rss``."""
    if pid not in procs.rss:
        procs.spawn(pid, rss)
    table.set_pid(index, pid)
    table.start(index, pid, task_id, limit, request, procs.rss[pid], time.monotonic_ns())


def start_task_with_a_child(table: SlotTable, procs: FakeProcs, tick, limit: int, child_rss: int = 0) -> None:
    """``etl.load`` starts in slot 0 (pool child 100, 50 MiB) and forks child 101 (``child_rss`` at the fork),
    and the watchdog has seen both."""
    start_task(table, procs, 0, 100, "etl.load", rss=50 * MiB, limit=limit)
    tick()
    procs.spawn(101, child_rss, parent=100)
    tick()


# -- a task over its own limit ------------------------------------------------------------------


def test_a_task_over_its_limit_is_killed_with_a_report_naming_its_limit_and_peak(watchdog, tick, table, procs, killer):
    start_task(table, procs, 0, 100, "etl.load", rss=50 * MiB, limit=100 * MiB)
    tick()
    procs.rss[100] = 170 * MiB
    tick()
    assert killer.trees == [(100, False)]
    assert watchdog.killed_task_ids() == ["etl.load"]
    report = watchdog.claim_kill("etl.load", 100)
    assert (report.reason, report.limit, report.peak, report.mode) == ("limit", 100 * MiB, 120 * MiB, "watchdog")
    assert report.spared is False


def test_a_task_at_its_limit_is_not_killed(watchdog, tick, table, procs, killer):
    start_task(table, procs, 0, 100, "etl.load", rss=50 * MiB, limit=100 * MiB)
    procs.rss[100] = 150 * MiB
    tick(3)
    assert killer.trees == []
    assert watchdog.claim_kill("etl.load", 100) is None


def test_a_task_of_memory_scope_subprocesses_over_its_limit_loses_only_its_subprocesses(
    watchdog, tick, table, procs, killer
):
    procs.spawn(100, 50 * MiB)
    table.set_pid(0, 100)
    table.start(0, 100, "airflow.try", 100 * MiB, None, 50 * MiB, time.monotonic_ns(), spare_root=True)
    tick()
    procs.spawn(101, 0, parent=100)
    tick()
    procs.rss[101] = 150 * MiB
    tick()
    assert killer.trees == [(100, True)]
    assert 100 in procs.rss and 101 not in procs.rss
    assert watchdog.take_spared("airflow.try").peak == 150 * MiB


# -- what a task is charged ----------------------------------------------------------------------


def test_a_child_the_task_forks_is_charged_what_it_grew_by_since_first_seen(watchdog, tick, table, procs, killer):
    # 10 MiB at the fork: pages it shares with its parent, not its own
    start_task_with_a_child(table, procs, tick, limit=1 * GiB, child_rss=10 * MiB)
    procs.rss[101] = 90 * MiB
    tick()
    state = table.read(0)
    assert watchdog.usage(0, state) == 80 * MiB
    assert table.tree_peak(0, state.seq) == 80 * MiB
    assert killer.trees == []


def test_a_child_first_seen_late_is_charged_what_it_held_of_its_own_already(watchdog, tick, table, procs, killer):
    # First seen at 90 MiB (it allocated before the monitor looked), 10 MiB of it shared.
    start_task(table, procs, 0, 100, "etl.load", rss=50 * MiB, limit=1 * GiB)
    tick()
    procs.spawn(101, 90 * MiB, parent=100)
    procs.shared[101] = 10 * MiB
    tick()
    procs.rss[101] = 100 * MiB
    tick()
    state = table.read(0)
    assert watchdog.usage(0, state) == 90 * MiB


def test_a_child_first_seen_before_its_exec_is_charged_what_the_program_it_runs_grows_to(
    watchdog, tick, table, procs, killer
):
    # subprocess.run on a loaded machine: the monitor first sees the child between its vfork and
    # its exec, reading its parent's 600 MiB (30 MiB of it shared with the worker, the rest private
    # to the one address space); the program it then runs starts at 4 MiB and allocates 128 MiB.
    # (Charged 570 MiB more before its exec, a task of 600 MiB under a limit of 800 MiB that ran
    # 150 programs was killed, 6 times in 6 on a loaded machine; charged from what it showed
    # before its exec, a 128 MiB program's peak was read as 90 MiB.)
    start_task(table, procs, 0, 100, "etl.load", rss=40 * MiB, limit=800 * MiB)
    tick()
    procs.rss[100] = 600 * MiB
    tick()
    procs.spawn(101, 600 * MiB, parent=100)
    procs.shared[101] = 30 * MiB
    tick()
    tick()  # new members are looked for every DISCOVER_EVERY ticks
    assert killer.trees == []
    assert watchdog.usage(0, table.read(0)) == 560 * MiB
    procs.rss[101], procs.shared[101] = 4 * MiB, 4 * MiB
    tick()
    procs.rss[101] = 132 * MiB
    tick()
    state = table.read(0)
    assert watchdog.usage(0, state) == (560 + 128) * MiB
    assert table.tree_peak(0, state.seq) == (560 + 128) * MiB
    assert killer.trees == []


def test_a_child_that_takes_its_task_over_the_limit_gets_the_whole_tree_killed(watchdog, tick, table, procs, killer):
    start_task(table, procs, 0, 100, "etl.load", rss=50 * MiB, limit=100 * MiB)
    tick()
    procs.spawn(101, 0, parent=100)
    procs.spawn(102, 0, parent=101)  # a grandchild, found through its parent on the next tick
    tick(2)
    procs.rss[102] = 130 * MiB
    tick()
    assert killer.trees == [(100, False)]
    assert watchdog.claim_kill("etl.load", 100).peak == 130 * MiB


# -- exits are not kills -------------------------------------------------------------------------


def test_a_child_that_exits_between_ticks_is_no_longer_charged_and_nothing_is_killed(
    watchdog, tick, table, procs, killer
):
    start_task_with_a_child(table, procs, tick, limit=100 * MiB)
    procs.rss[101] = 90 * MiB
    tick()
    procs.exit(101)
    tick()
    assert watchdog.usage(0, table.read(0)) == 0
    assert killer.trees == []
    assert watchdog.claim_kill("etl.load", 100) is None


def test_a_tree_that_exits_before_the_kill_lands_leaves_no_report_and_no_notice(watchdog, tick, table, procs, killer):
    start_task(table, procs, 0, 100, "etl.load", rss=50 * MiB, limit=100 * MiB)
    tick()
    procs.rss[100] = 170 * MiB
    killer.finds_nothing = True
    tick()
    assert killer.trees == [(100, False)]
    assert watchdog.claim_kill("etl.load", 100) is None
    assert watchdog.killed_task_ids() == []


def test_a_pool_child_that_dies_under_its_task_is_no_kill_and_what_it_left_is_swept(
    watchdog, tick, table, procs, killer
):
    start_task_with_a_child(table, procs, tick, limit=100 * MiB)
    procs.rss.pop(100)  # killed from outside; its child lives on, reparented
    tick()
    assert killer.members == [[101]]
    assert killer.swept.wait(5) and killer.orphans == [100]
    assert killer.trees == []
    assert watchdog.claim_kill("etl.load", 100) is None
    assert watchdog.killed_task_ids() == []


# -- eviction for node memory pressure -----------------------------------------------------------


def test_over_the_budget_the_task_most_over_its_request_is_evicted_not_one_within_it(
    watchdog, tick, table, procs, killer
):
    watchdog.configure_pressure(budget=200 * MiB, margin=0)
    start_task(table, procs, 0, 100, "within", rss=50 * MiB, request=100 * MiB)
    start_task(table, procs, 1, 200, "over", rss=50 * MiB, request=50 * MiB)
    tick()
    procs.rss[100] += 90 * MiB
    procs.rss[200] += 130 * MiB
    tick()
    assert killer.trees == [(200, False)]
    report = watchdog.claim_kill("over", 200)
    assert (report.reason, report.request, report.peak) == ("evicted", 50 * MiB, 130 * MiB)
    assert report.detail == "its tasks use 220.0 MiB, 20.0 MiB more than the budget of 200.0 MiB"
    assert watchdog.claim_kill("within", 100) is None
    assert 100 in procs.rss


def test_no_task_is_evicted_while_more_than_the_margin_is_available(watchdog, tick, table, procs, killer):
    watchdog.configure_pressure(budget=16 * GiB, margin=100 * MiB)
    procs.available = 2 * GiB
    start_task(table, procs, 0, 100, "greedy", rss=50 * MiB, request=10 * MiB)
    tick()
    procs.rss[100] += 300 * MiB
    tick(40)
    assert killer.trees == []
    procs.available = 50 * MiB
    tick(20)  # what is available is read again at least every 20 ticks
    assert killer.trees == [(100, False)]
    report = watchdog.claim_kill("greedy", 100)
    assert report.reason == "evicted"
    # (the margin it names is the configured one widened for a task that grew 300 MiB in a tick)
    assert report.detail.startswith("only 50.0 MiB is available to the worker, less than the eviction margin of")


def test_tasks_within_their_requests_are_not_evicted_until_the_configured_margin_is_crossed(
    watchdog, tick, table, procs, killer
):
    watchdog.configure_pressure(budget=16 * GiB, margin=100 * MiB)
    procs.available = 300 * MiB  # inside the margin the watchdog widens for a fast allocator
    start_task(table, procs, 0, 100, "fast", rss=50 * MiB, request=1 * GiB)
    tick()
    procs.rss[100] += 200 * MiB  # 40 GB/s
    tick(5)
    assert killer.trees == []
    procs.available = 50 * MiB
    tick()
    assert killer.trees == [(100, False)]
    assert watchdog.claim_kill("fast", 100).request == 1 * GiB


# -- the monitor thread idles ------------------------------------------------------------------


def _until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_an_idle_monitor_sleeps_until_a_task_is_handed_to_the_pool_then_watches_it(
    watchdog, table, procs, killer, monkeypatch
):
    import oomless.enforce.watchdog as module

    monkeypatch.setattr(module, "IDLE_AFTER", 0.0)
    monkeypatch.setattr(module, "IDLE_POLL", 3600.0)  # an idle monitor that is never kicked never looks
    ticks: list[float] = []
    real = watchdog.tick
    monkeypatch.setattr(watchdog, "tick", lambda now: (ticks.append(now), real(now)))
    watchdog.start()
    time.sleep(0.2)
    assert ticks == []  # nothing runs, nothing was handed to the pool: no look at all

    start_task(table, procs, 0, 100, "etl.load", rss=50 * MiB, limit=100 * MiB)
    watchdog.dispatched()  # what the request does as it hands the task to the pool
    assert _until(lambda: len(ticks) >= 3)  # awake, and on its fast polls while the task runs
    procs.rss[100] = 170 * MiB
    assert _until(lambda: killer.trees == [(100, False)])
    assert watchdog.killed_task_ids() == ["etl.load"]
