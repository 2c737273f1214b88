"""The ``auto`` budget is what is left after the worker's own footprint (issue 14, item 1).

A worker with a wide pool (``-c 16``) and the budget left to ``auto``, alone in
a 2 GiB memory cgroup, runs tasks that declare request = what they use (and a
limit above it), with Airflow's ``task_acks_late`` + ``task_reject_on_worker_lost``.
Its 16 pool children and main process hold memory of their own, which the
budget must leave out: then no task that keeps to its request is evicted, and
the kernel never kills inside the worker's cgroup.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import oomless

from .harness import SLACK, V2, MemoryCgroup, start_worker

sys.path.insert(0, str(Path(__file__).parent))
from worker_app import make_app  # noqa: E402

MiB, GiB = 2**20, 2**30
AIRFLOW = {"task_acks_late": True, "task_reject_on_worker_lost": True, "worker_prefetch_multiplier": 1}


@pytest.fixture
def worker_cgroup():
    group = MemoryCgroup(2 * GiB)
    yield group
    group.remove()


def _at_requests(tmp_path, redis_url, group, mode, count, low_mb, high_mb, seed, **worker):
    """``count`` tasks of ``low_mb``-``high_mb`` MiB (seeded) each requesting what it uses, in a worker
    alone in ``group``.  Returns (results, outcomes, worker log)."""
    worker = start_worker(tmp_path, redis_url, redis_url, mode=mode, conf=AIRFLOW, cgroup=group.path, **worker)
    app = make_app(redis_url, redis_url, worker.queue, mode, conf=AIRFLOW)
    rng = random.Random(seed)
    try:
        results = []
        for _ in range(count):
            mb = rng.randrange(low_mb, high_mb, 8)
            # t.hold holds mb MiB beside an interpreter that already runs: request what it uses
            spec = oomless.Memory(request=(mb + 24) * MiB, limit=(mb + 24 + 128) * MiB)
            results.append(app.tasks["t.hold"].apply_async([1.0, mb], memory=spec))
        outcomes = [r.get(timeout=240 * SLACK, propagate=False) for r in results]
    finally:
        worker.stop()
        app.close()
    log = worker.text()
    failures = [str(o) for o in outcomes if not isinstance(o, dict)]
    assert [r.state for r in results] == ["SUCCESS"] * len(results), failures
    assert "evicting" not in log, re.findall(r"evicting .*|oomless: budget .*", log)[:8]
    assert group.oom_kills() == 0
    return log


@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_tasks_within_their_requests_are_never_evicted_nor_kernel_killed_with_auto_and_a_wide_pool(
    tmp_path, redis_url, worker_cgroup, mode
):
    log = _at_requests(tmp_path, redis_url, worker_cgroup, mode, 36, 128, 456, seed=14, concurrency=16)
    assert re.search(r"oomless: budget [\d.]+ \w+ = worker cgroup limit 2\.0 GiB − reserve 256\.0 MiB − worker "
                     r"footprint [\d.]+ \w+ \(main process [\d.]+ \w+, 16 pool children", log)


def test_an_autoscaled_pool_leaves_room_for_the_children_it_may_still_start(tmp_path, redis_url, worker_cgroup):
    """``--autoscale 24,2``: the pool starts 2 children, and Celery's autoscaler starts more as
    messages are reserved (at most 24).  Each is a footprint the budget must leave out: the
    budget counts the ones the pool may still start at what an idle child holds privately, from
    the first measure on (counted only once started, up to 22 × ~10 MiB would come out of the
    reserve while the tasks hold what the budget let them).  Tasks within their requests are
    never evicted, and the kernel never kills."""
    log = _at_requests(tmp_path, redis_url, worker_cgroup, "cgroup", 60, 64, 200, seed=15, concurrency=2,
                       extra=("--autoscale", "24,2"))
    assert "Scaling up" in log
    counted = [int(live) + int(more) for live, more in re.findall(
        r"oomless: budget .*?, (\d+) pool children [\d.]+ \w+, (\d+) more the pool may start", log)]
    assert counted and set(counted) == {24}, re.findall(r"oomless: budget .*", log)


def _overcommit(tmp_path, redis_url, worker_cgroup, mode, count=8, extra=()):
    """Requests far below what the tasks use (limits above it): admission starts ``count`` at once,
    704 MiB each in a 2 GiB cgroup.  Returns (results, outcomes, worker log).

    Each task holds what it grew to until the worker has evicted one (then 1 s more), at most
    60 s: together they overlap however unevenly a loaded machine runs them.  (A loaded cgroup-v2
    guest, whose page faults are slow, once ran four in turn: the first had finished before the
    others were half grown, the slots never reached their shared limit, and nothing was evicted.)
    """
    worker = start_worker(tmp_path, redis_url, redis_url, mode=mode, concurrency=count, conf=AIRFLOW,
                          cgroup=worker_cgroup.path, extra=extra)
    app = make_app(redis_url, redis_url, worker.queue, mode, conf=AIRFLOW)
    release = tmp_path / "evicted"
    try:
        spec = oomless.Memory(request="128MiB", limit="1GiB")
        results = [app.tasks["t.grow"].apply_async((704, 0, 1.0), {"after": str(release)}, memory=spec)
                   for _ in range(count)]
        deadline = time.monotonic() + 240 * SLACK
        while "evict" not in worker.text() and not all(r.ready() for r in results) and time.monotonic() < deadline:
            time.sleep(0.1)
        release.touch()  # requeued tasks, and the ones still running, hold 1 s
        outcomes = [r.get(timeout=240 * SLACK, propagate=False) for r in results]
    finally:
        worker.stop()
        app.close()
    return results, outcomes, worker.text()


def test_overcommitted_tasks_end_in_governor_evictions_never_in_kernel_oom_kills_in_cgroup_mode(
    tmp_path, redis_url, worker_cgroup
):
    # The slots share a parent group limited to what the worker has left: at that limit the
    # kernel stalls them (v1: paused, the OOM killer off; v2: throttled past memory.high) and the
    # governor evicts.
    results, outcomes, log = _overcommit(tmp_path, redis_url, worker_cgroup, "cgroup")
    assert worker_cgroup.oom_kills() == 0
    assert "evicting" in log
    # Each eviction requeues the task with a request of what it was seen to use (then its
    # limit): every one ends OK.
    assert [r.state for r in results] == ["SUCCESS"] * len(results), [str(o) for o in outcomes]


def test_overcommitted_tasks_end_in_a_result_in_watchdog_mode_even_when_the_kernel_kills_first(
    tmp_path, redis_url, worker_cgroup
):
    # The watchdog cannot stop the kernel (on a loaded machine its poll comes too late); a pool
    # child the kernel OOM-kills is then an eviction: requeued a bounded number of times.
    results, outcomes, log = _overcommit(tmp_path, redis_url, worker_cgroup, "watchdog")
    kernel = worker_cgroup.oom_kills()
    assert "evicting" in log
    assert log.count("the kernel's OOM killer killed its pool child") >= min(kernel, 1)
    ended = [r.state == "SUCCESS" or isinstance(o, oomless.EvictedForMemoryPressure)
             for r, o in zip(results, outcomes, strict=True)]
    assert all(ended), [str(o) for o in outcomes]


def test_a_budget_larger_than_the_cgroup_ends_in_evictions_at_the_slots_shared_limit_not_kernel_kills(
    tmp_path, redis_url, worker_cgroup
):
    """An explicit budget above the cgroup's limit (the worker warns) never evicts by itself, and
    four tasks that each grow to 704 MiB in a 2 GiB cgroup leave more than the eviction margin
    available until the slots' shared limit stops them (v1: paused, the OOM killer off; v2: the
    base group's memory.high throttles them): the governor evicts there, the kernel never kills.
    The v1 test of that limit; on v2 the guest of tests/v2vm/run runs it."""
    results, outcomes, log = _overcommit(tmp_path, redis_url, worker_cgroup, "cgroup", count=4,
                                         extra=("--memory-budget", "8GiB"))
    assert "is more than the worker cgroup limit 2.0 GiB" in log
    assert worker_cgroup.oom_kills() == 0
    assert "the slots together reached the memory left to tasks in the worker" in log, re.findall(r"evicting .*", log)
    # The budget admits a requeued task again at once, so one may run out of requeues: it then
    # fails by name, never lost, never killed by the kernel.
    ended = [r.state == "SUCCESS" or isinstance(o, oomless.EvictedForMemoryPressure)
             for r, o in zip(results, outcomes, strict=True)]
    assert all(ended) and "SUCCESS" in [r.state for r in results], [str(o) for o in outcomes]


@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_psi_a_worker_group_stalled_at_its_memory_high_evicts_the_task_most_over_its_request(
    tmp_path, redis_url, worker_cgroup, mode
):
    """systemd's ``MemoryHigh=`` below ``MemoryMax=`` (Kubernetes' memory QoS does the same): past
    it the kernel throttles the worker's tasks and they stall, while the budget and the eviction
    margin still leave room.  The worker's group says so in memory.events.local and PSI, and the
    governor evicts the task most over its request, never the one within it; the kernel kills
    none.  Needs cgroup v2 with PSI: the QEMU guest of ``tests/v2vm/run --qemu``."""
    if not (V2 and os.path.exists(os.path.join(worker_cgroup.path, "memory.pressure"))):
        assert os.environ.get("OOMLESS_V2VM_KIND") != "qemu", "the QEMU guest's kernel has PSI"
        pytest.skip("needs cgroup v2 with PSI (memory.pressure); tests/v2vm/run --qemu boots such a kernel")
    with open(os.path.join(worker_cgroup.path, "memory.high"), "w") as fh:
        fh.write(str(896 * MiB))  # the steady task and the worker fit; with the greedy one they do not
    worker = start_worker(tmp_path, redis_url, redis_url, mode=mode, concurrency=2, cgroup=worker_cgroup.path)
    app = make_app(redis_url, redis_url, worker.queue, mode)
    try:
        grow = app.tasks["t.grow"]
        started = str(tmp_path / "greedy-started")  # the steady task holds 4 s from the greedy one's start
        steady = grow.apply_async((400, 0.5, 4.0), {"after": started}, memory={"request": "440MiB", "limit": "480MiB"})
        greedy = grow.apply_async((704, 1.0, 0.2), {"mark": started}, countdown=1,
                                  memory={"request": "300MiB", "limit": "900MiB"})
        assert steady.get(timeout=240 * SLACK)["end"] > 0
        outcome = greedy.get(timeout=240 * SLACK, propagate=False)
    finally:
        worker.stop()
        app.close()
    log = worker.text()
    assert f"t.grow[{greedy.id}] evicted for node memory pressure (the worker's cgroup is at its memory.high " in log
    assert "of the time (PSI " in log, re.findall(r"evicting .*", log)
    assert f"t.grow[{steady.id}] evicted" not in log
    assert worker_cgroup.oom_kills() == 0
    # Requeued, it ran again (and may have been evicted again while the steady task held its memory).
    assert greedy.state == "SUCCESS" or isinstance(outcome, oomless.EvictedForMemoryPressure), outcome


def test_doctor_names_the_worker_groups_psi_and_memory_high_on_cgroup_v2(worker_cgroup):
    if not V2:
        pytest.skip("cgroup v2 only (tests/v2vm/run boots it)")
    with open(os.path.join(worker_cgroup.path, "memory.high"), "w") as fh:
        fh.write(str(896 * MiB))
    done = subprocess.run([sys.executable, "-m", "oomless.cli", "doctor"], capture_output=True, text=True,
                          timeout=120, preexec_fn=worker_cgroup.join, env=dict(os.environ, COLUMNS="400"))
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, out
    assert "its memory.high is 896.0 MiB: past it the kernel throttles the whole worker" in out
    if os.path.exists(os.path.join(worker_cgroup.path, "memory.pressure")):
        assert "eviction also reads this group's memory.events.local and PSI (memory.pressure)" in out
    else:
        assert "this kernel has no PSI (memory.pressure: CONFIG_PSI off or booted with psi=0)" in out


@pytest.mark.parametrize("trim", [True, False])
def test_a_pool_child_gives_back_the_heap_a_task_freed(tmp_path, redis_url, trim):
    """glibc keeps a freed block of up to 32 MiB resident after a larger one was freed: in 24
    children that is ~700 MiB of footprint no task owns.  ``oomless_malloc_trim`` (default on)
    gives it back after the task; off, the child keeps it (what the default saves)."""
    conf = {} if trim else {"oomless_malloc_trim": False}
    worker = start_worker(tmp_path, redis_url, redis_url, concurrency=1, conf=conf)
    app = make_app(redis_url, redis_url, worker.queue)
    try:
        before = app.tasks["t.whoami"].delay().get(timeout=30)
        held = app.tasks["t.heap_churn"].delay(24).get(timeout=30)
        after = app.tasks["t.whoami"].delay().get(timeout=30)  # same child, after the churn's postrun
    finally:
        worker.stop()
        app.close()
    assert before["pid"] == after["pid"]
    assert held - before["rss"] >= 20 * MiB  # the task freed 24 MiB that glibc kept
    if trim:
        assert after["rss"] - before["rss"] < 8 * MiB, (before, held, after)
    else:
        assert after["rss"] - before["rss"] >= 20 * MiB, (before, held, after)


FORK_COST = """
import os, signal, sys
import cffi  # noqa: F401  (billiard takes its cffi path whenever cffi is imported: Airflow installs it)
import billiard.util
from oomless.celery import child

def private_dirty():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Private_Dirty:"))

if sys.argv[1] == "shared":
    child.share_with_children()
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # what Celery's pool child start-up does first
    before = private_dirty()
    billiard.util.set_pdeathsig(signal.SIGKILL)
    os.write(w, str(private_dirty() - before).encode())
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(r, 64).decode())
"""


@pytest.mark.parametrize("prepared", ["shared", "alone"])
def test_a_pool_child_does_not_build_billiards_c_parser_for_itself(prepared):
    """Each pool child sets its parent-death signal through billiard, which parses a C declaration
    with cffi's pycparser: the first parse in a process builds the parser, ~4.5 MiB in each child
    (~110 MiB of footprint at -c 24).  The main process builds it before the fork (with
    ``oomless_gc_freeze``, the default); 'alone' shows what each child pays otherwise."""
    out = subprocess.run([sys.executable, "-c", FORK_COST, prepared], capture_output=True, text=True,
                         timeout=60, check=True)
    cost = int(out.stdout)
    if prepared == "shared":
        assert cost < 3 * MiB, cost
    else:
        assert cost >= 4 * MiB, cost


@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_auto_follows_a_cgroup_limit_changed_at_run_time_and_spares_running_tasks(tmp_path, redis_url, mode):
    """A Kubernetes in-place resize, ``systemctl set-property … MemoryMax=``: the worker re-reads its
    group's limit once a second.  The budget moves with one log line; a task running within its
    request when the limit shrinks is not killed for it."""
    group = MemoryCgroup(3 * GiB)
    worker = start_worker(tmp_path, redis_url, redis_url, mode=mode, cgroup=group.path, concurrency=2)
    app = make_app(redis_url, redis_url, worker.queue, mode)
    try:
        first = int(_status(app, worker.node)["budget"])
        held = app.tasks["t.hold"].apply_async([6.0, 200], memory=oomless.Memory(request=260 * MiB))
        worker.wait_for(f"t.hold[{held.id}] received")
        group.set_limit(2 * GiB)
        said = "the worker's cgroup limit changed from 3.0 GiB to 2.0 GiB: budget"
        worker.wait_for(said, timeout=30)
        status = _status(app, worker.node)
        second = int(status["budget"])
        # Eviction's "available" reads the new limit too: what is left below 2 GiB once the worker's own
        # memory is out (read against the old 3 GiB it would be ~2.8 GiB on any host with room).
        assert status["ceiling"] == 2 * GiB and status["available"] < 2 * GiB, status
        # The default reserve is max(256 MiB, 3 %): the same 256 MiB at both limits.
        assert 1 * GiB - 96 * MiB <= first - second <= 1 * GiB + 96 * MiB, (first, second)
        assert held.get(timeout=60)["pid"] > 0  # it ran to the end: not killed, not evicted
        group.set_limit(None)
        worker.wait_for("the worker's cgroup limit changed from 2.0 GiB to none: budget", timeout=30)
        assert group.oom_kills() == 0
    finally:
        worker.stop()
        app.close()
        group.remove()
    log = worker.text()
    assert log.count(said) == 1
    assert "evicting" not in log


def _status(app, node: str) -> dict:
    from oomless.celery.control import COMMAND

    for reply in app.control.broadcast(COMMAND, reply=True, timeout=2.0):
        for name, body in reply.items():
            if name.startswith(f"{node}@"):
                return body
    raise AssertionError(f"no {COMMAND} reply from {node}")
