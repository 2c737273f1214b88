"""A governed worker kills only the task that breaks its limit, and fails it clearly.

Every test here runs a real worker subprocess against a real broker, in both
enforcement modes (cgroup: real cgroup v1 slots on this machine; watchdog).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import oomless
from oomless.testing import MemoryEvents

from .harness import SLACK, start_worker
from .harness import alive as _alive
from .harness import wait_gone as _wait_gone

sys.path.insert(0, str(Path(__file__).parent))
from worker_app import make_app  # noqa: E402

MiB = 2**20
BUDGET = "3GiB"


@pytest.fixture(
    scope="module",
    params=[("cgroup", "redis"), ("watchdog", "redis"), ("cgroup", "rabbitmq"), ("watchdog", "rabbitmq")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def governed(request, tmp_path_factory, redis_url):
    mode, broker_name = request.param
    broker = request.getfixturevalue("rabbitmq_url") if broker_name == "rabbitmq" else redis_url
    tmp = tmp_path_factory.mktemp(f"{mode}-{broker_name}")
    worker = start_worker(tmp, broker, redis_url, mode=mode, extra=("--memory-budget", BUDGET))
    app = make_app(broker, redis_url, worker.queue, mode)
    worker.app, worker.mode, worker.tmp = app, mode, tmp
    yield worker
    worker.stop()
    app.close()


def test_worker_reports_the_enforcement_mode_it_runs(governed):
    assert f"enforcement {governed.mode} (" in governed.text()


def _kernel_kills(worker) -> int:
    """OOM kills by the kernel in the worker's own cgroup (v2, see harness.start_worker); 0 elsewhere:
    on v1 the slots never let the kernel kill (oom_kill_disable), the watchdog kills before it."""
    return worker.group.oom_kills() if worker.group is not None else 0


def test_task_over_its_limit_fails_with_memory_limit_exceeded(governed):
    kernel_kills = _kernel_kills(governed)
    result = governed.app.tasks["t.hog"].delay(1024)
    with pytest.raises(oomless.MemoryLimitExceeded) as caught:
        result.get(timeout=60)
    exc = caught.value
    assert _kernel_kills(governed) == kernel_kills  # cgroup v2: the governor killed it at memory.high
    assert exc.limit == 256 * MiB
    assert 256 * MiB <= exc.peak <= 256 * MiB + 64 * MiB
    assert result.state == "FAILURE"
    assert "exceeded its memory limit of 256.0 MiB" in str(exc)
    assert f"t.hog[{result.id[:8]}" in str(exc)


def test_task_under_its_limit_succeeds(governed):
    assert governed.app.tasks["t.hog"].delay(64).get(timeout=30) == 64


def test_runaway_subprocess_is_killed_with_its_whole_tree(governed):
    pidfile = governed.tmp / f"sub-{time.monotonic_ns()}.pid"
    result = governed.app.tasks["t.sub_hog"].delay(2048, str(pidfile))
    with pytest.raises(oomless.MemoryLimitExceeded):
        result.get(timeout=60)
    sub_pid = int(pidfile.read_text())
    assert _wait_gone(sub_pid), f"subprocess {sub_pid} of the killed task is still alive"


def test_sibling_task_and_worker_main_process_survive_a_kill(governed):
    sibling = governed.app.tasks["t.sleeper"].delay(3)
    time.sleep(0.5)  # let the sibling start on the other slot
    with pytest.raises(oomless.MemoryLimitExceeded):
        governed.app.tasks["t.hog"].delay(1024).get(timeout=60)
    assert sibling.get(timeout=30) > 0
    assert governed.proc.poll() is None


def test_killed_pool_child_is_replaced(governed):
    with pytest.raises(oomless.MemoryLimitExceeded):
        governed.app.tasks["t.hog"].delay(1024).get(timeout=60)
    # Both slots work again: two sleepers run at the same time on two different children.  On a
    # loaded machine the replacement child may not be up for the first pair; it must be soon after.
    pids = set()
    for _ in range(5):
        a, b = governed.app.tasks["t.sleeper"].delay(1), governed.app.tasks["t.sleeper"].delay(1)
        pids = {a.get(timeout=30), b.get(timeout=30)}
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"only child {pids} ran tasks after the kill"


def test_killed_task_is_not_redelivered_despite_acks_late_and_reject_on_worker_lost(governed):
    marker = governed.tmp / f"runs-{time.monotonic_ns()}.txt"
    result = governed.app.tasks["t.hog"].delay(1024, str(marker))
    with pytest.raises(oomless.MemoryLimitExceeded):
        result.get(timeout=60)
    # A requeued message would run again within a moment on the idle worker.
    assert governed.app.tasks["t.sleeper"].delay(0.1).get(timeout=30)
    time.sleep(2)
    assert len(marker.read_text().split()) == 1


def test_per_call_memory_overrides_the_task_option(governed):
    hog = governed.app.tasks["t.hog"]
    assert hog.apply_async([320], memory="512MiB").get(timeout=30) == 320
    assert hog.s(320).set(memory="512MiB").delay().get(timeout=30) == 320


def test_malformed_per_call_memory_fails_the_task_with_invalid_memory_spec(governed):
    result = governed.app.tasks["t.hog"].apply_async([8], memory="5XB")
    with pytest.raises(oomless.InvalidMemorySpec) as caught:
        result.get(timeout=30)
    assert "'5XB' is not a size" in str(caught.value)
    assert governed.proc.poll() is None


def test_malformed_header_from_the_broker_fails_the_task_with_invalid_memory_spec(governed):
    result = governed.app.send_task("t.hog", args=[8], headers={"oomless_memory": [1, {"x": 2}]})
    with pytest.raises(oomless.InvalidMemorySpec) as caught:
        result.get(timeout=30)
    assert "oomless_memory" in str(caught.value)
    assert governed.app.tasks["t.sleeper"].delay(0.1).get(timeout=30)


def test_a_publishers_reason_a_declaration_is_malformed_is_the_tasks_failure(governed):
    # The Airflow executor's path for a declaration its DAG processor let through: its reason, not the raw value.
    reason = "task etl.load: executor_config[\"oomless\"]['memory'] 'lots' is not a size"
    result = governed.app.send_task("t.hog", args=[8], headers={"oomless_invalid": reason, "oomless_memory": "1GiB"})
    with pytest.raises(oomless.InvalidMemorySpec) as caught:
        result.get(timeout=30)
    assert str(caught.value) == reason
    odd = governed.app.send_task("t.hog", args=[8], headers={"oomless_invalid": {"x": ["y"] * 1000}})
    with pytest.raises(oomless.InvalidMemorySpec, match="x"):
        odd.get(timeout=30)
    assert governed.app.tasks["t.sleeper"].delay(0.1).get(timeout=30)


def test_limit_larger_than_the_budget_fails_fast_with_infeasible_memory_request(governed):
    result = governed.app.tasks["t.hog"].apply_async([8], memory="64GiB")
    with pytest.raises(oomless.InfeasibleMemoryRequest) as caught:
        result.get(timeout=30)
    assert caught.value.limit == 64 * 2**30
    assert caught.value.budget == 3 * 2**30
    assert "64.0 GiB" in str(caught.value) and "3.0 GiB" in str(caught.value)


def test_each_task_gets_one_log_line_and_one_memory_event_with_its_peak(governed):
    with MemoryEvents(governed.app) as events:
        result = governed.app.tasks["t.hog"].delay(96)
        result.get(timeout=30)
        got = events.wait([result.id], timeout=10 * SLACK)[result.id]
    assert got.outcome == "ok" and got.mode == governed.mode
    assert 96 * 0.9 * MiB <= got.peak <= (96 + 32) * MiB, got
    # The task's one line, Celery's own, says what the event says.
    said = f"t.hog[{result.id}] succeeded in "
    line = next(ln for ln in governed.wait_for(said).splitlines() if said in ln)
    assert line.endswith(f": 96 (oomless: {got.memory.removeprefix('ok: ')})"), line
    time.sleep(0.5)
    assert [ln for ln in governed.text().splitlines() if result.id in ln and "oomless" in ln] == [line]


def test_a_failed_tasks_line_carries_its_memory_too(governed):
    result = governed.app.tasks["t.fail"].delay("boom")
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=30)
    said = f"t.fail[{result.id}] raised unexpected: ValueError('boom') (oomless: peak "
    assert "limit 256.0 MiB, request 256.0 MiB" in next(
        ln for ln in governed.wait_for(said).splitlines() if said in ln)


def test_peak_of_a_task_includes_its_subprocess(governed):
    pidfile = str(governed.tmp / f"sub-peak-{time.monotonic_ns()}.pid")
    with MemoryEvents(governed.app) as events:
        # Held 2 s: the watchdog samples, and a loaded machine may be slow to schedule it.
        result = governed.app.tasks["t.sub_hog"].delay(128, pidfile, 2.0)
        assert result.get(timeout=30) == 128
        got = events.wait([result.id], timeout=10 * SLACK)[result.id]
    # The pool child itself allocates nearly nothing: the peak is the subprocess's.
    assert 128 * 0.9 * MiB <= got.peak <= (128 + 48) * MiB, got


def test_a_task_holding_most_of_its_limit_runs_many_subprocesses_without_being_killed(governed):
    """A child of vfork (Python's subprocess) reads its parent's memory until its exec: charged once.
    (The watchdog charged it twice when it first saw a child before its exec: on a loaded machine,
    6 tasks in 6 that held 600 MiB under a limit of 800 MiB and ran 150 programs were killed.)"""
    result = governed.app.tasks["t.spawns"].apply_async([384, 150], memory={"request": "512MiB", "limit": "512MiB"})
    assert result.get(timeout=120 * SLACK, propagate=False) == 150, governed.text()[-3000:]


def test_pool_children_have_a_raised_oom_score_adj_and_the_main_process_does_not(governed):
    info = governed.app.tasks["t.whoami"].delay().get(timeout=30)
    assert info["oom_score_adj"] == 500
    with open(f"/proc/{governed.pid}/oom_score_adj") as fh:
        assert int(fh.read()) == 0


def test_pages_shared_with_the_worker_are_not_charged_to_a_task(governed):
    # A pool child maps tens of MiB it shares copy-on-write with the worker
    # (RSS counts them); a task's peak counts only what its tree adds.
    info = governed.app.tasks["t.whoami"].delay().get(timeout=30)
    with open(f"/proc/{info['pid']}/statm") as fh:
        child_rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with MemoryEvents(governed.app) as events:
        result = governed.app.tasks["t.hog"].delay(0)
        result.get(timeout=30)
        got = events.wait([result.id], timeout=10 * SLACK)[result.id]
    assert child_rss > 20 * MiB
    assert got.peak < 8 * MiB, f"a task that allocates nothing was charged {got.memory}"


@pytest.mark.parametrize("fork", [False, True], ids=["exec", "fork"])
def test_a_task_scoped_to_its_subprocesses_outlives_their_kill_and_decides_its_outcome(governed, fork):
    # memory_scope="subprocesses" (Airflow's supervisor): the subprocess over the
    # limit dies, the task's own process lives on and sees the SIGKILL.
    spared = governed.app.tasks["t.spared"]
    kernel_kills = _kernel_kills(governed)
    got = spared.delay(1024, fork).get(timeout=60)
    assert got["returncode"] == -9
    assert _alive(got["pid"])
    assert _kernel_kills(governed) == kernel_kills
    line = governed.wait_for("] memory-killed: peak")
    assert "limit 256.0 MiB" in line
    # A fork without exec shares its parent's pages: they are not charged to it twice.
    assert spared.delay(64, fork).get(timeout=30)["returncode"] == 0
