"""Airflow tries sized from the history (``[oomless] learned = True``, ``memory("auto")``), on a real
Airflow 3.3 deployment whose history was seeded first: what each try ran with, what its log says, and a
kill at the learned limit that the retry's size counts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("airflow.providers.celery", reason="Airflow 3.3 needs Python 3.11+ (the 'airflow' extra)")

sys.path.insert(0, str(Path(__file__).parent))
from stack import Stack, _kill_marked  # noqa: E402

from oomless.history import Attempt  # noqa: E402
from oomless.history.store import Store  # noqa: E402

from ..celery.harness import SLACK  # noqa: E402

DAG = "oomless_learned"
FLOOR_DAG = "oomless_floor"
MiB = 2**20


@pytest.fixture(scope="module")
def run(tmp_path_factory, redis_url):
    home = tmp_path_factory.mktemp("airflow-learned")
    history = f"sqlite:///{home / 'oomless-history.sqlite'}"
    # six earlier tries of grows peaked at 100 MiB: learned request 115 MiB, limit 120 MiB
    Store(history).add([Attempt("execute_workload", f"old{i}", "ok", time.time() - 3600, 1.0, peak_rss=100 * MiB,
                                dag_id=DAG, af_task_id="grows", run_id="old", try_number=1) for i in range(6)])
    stack = Stack(home, redis_url, dags=Path(__file__).parent / "dags_learned", slack=SLACK, env={
        "AIRFLOW__OOMLESS__BUDGET": "3GiB",
        "AIRFLOW__OOMLESS__HISTORY": history,
        "AIRFLOW__OOMLESS__LEARNED": "True",
        "OOMLESS_LEARNED_MIB": "160",
    })
    stack.history = history
    try:
        stack.start()
        stack.wait_for("worker", "ready.", 120)
        stack.wait_dag(DAG)
        stack.wait_dag(FLOOR_DAG)
        run_id, stack.floor_run = stack.trigger(DAG), stack.trigger(FLOOR_DAG)
        stack.state = stack.wait_run(DAG, run_id, 300)["state"]
        stack.floor_state = stack.wait_run(FLOOR_DAG, stack.floor_run, 300)["state"]
        stack.run_id = run_id
        yield stack
    finally:
        stack.stop()
        assert _kill_marked(stack.marker) == [], "processes of the deployment survived its stop"


def _log(run, task_id, try_number):
    return "\n".join(run.log(DAG, run.run_id, task_id, try_number))


#: every try the tests read: the run's success says they ended, not that the recorder has written them
EXPECTED = {("grows", 1), ("grows", 2), ("auto_new", 1), ("plain", 1)}


def _tries(run) -> dict[tuple[str, int], Attempt]:
    deadline = time.monotonic() + 15 * SLACK  # the recorder writes about once a second
    while True:
        rows = {(a.af_task_id, a.try_number): a for a in Store(run.history).attempts()
                if a.dag_id == DAG and a.run_id == run.run_id}
        if EXPECTED <= rows.keys() or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_a_task_that_declares_nothing_runs_with_its_learned_size_and_its_log_says_so(run):
    assert run.state == "success"
    first = _log(run, "grows", 1)
    assert ("oomless: this try runs with memory request 115.0 MiB, limit 120.0 MiB: learned from 6 attempts of "
            "oomless_learned.grows in the history") in first


def test_a_kill_at_the_learned_limit_is_counted_in_the_retrys_size(run):
    first, second = _log(run, "grows", 1), _log(run, "grows", 2)
    assert "exceeded its memory limit of 120.0 MiB" in first
    # killed at 120 MiB: it needs max(× 1.2, + 100 MiB) = 220 MiB; the limit is that × 1.2
    assert "is sized from the history again, which counts this kill: a limit of at least 264.0 MiB" in first
    assert ("this try runs with memory request 115.0 MiB, limit 264.0 MiB: learned from 6 attempts of "
            "oomless_learned.grows in the history, raised for 1 memory kill recorded since it was read") in second
    tries = _tries(run)
    assert (tries[("grows", 1)].outcome, tries[("grows", 1)].limit) == ("memory-killed", 120 * MiB)
    assert (tries[("grows", 2)].outcome, tries[("grows", 2)].limit) == ("ok", 264 * MiB)


def test_without_history_auto_gets_its_default_and_a_plain_task_the_workers_and_their_logs_say_why(run):
    url = run.history
    auto, plain = _log(run, "auto_new", 1), _log(run, "plain", 1)
    why = f"nothing is learned for it yet: fewer than 5 attempts in the last 30 days of {url}"
    assert f"this try runs with memory request 256.0 MiB, limit 256.0 MiB: {why}; it runs with the default= of " \
           f"memory('auto')" in auto
    assert f"this try runs with no memory spec (the worker's default): {why}; it runs with the worker's default " \
           f"memory" in plain
    tries = _tries(run)
    assert (tries[("auto_new", 1)].outcome, tries[("auto_new", 1)].limit) == ("ok", 256 * MiB)
    assert tries[("plain", 1)].outcome == "ok"


def test_a_limit_below_what_any_try_costs_is_said_in_the_trys_log(run):
    text = "\n".join(run.log(FLOOR_DAG, run.floor_run, "tiny", 1))
    assert ("oomless: a memory limit of 16.0 MiB is below the 64.0 MiB an Airflow try is charged before the "
            "task's code runs") in text
    assert "give it at least 64.0 MiB plus what the task itself uses" in text
    # cgroup mode (this host): 16 MiB is broken before the try reaches its code (even before its task
    # runner is forked, so the kill takes the supervisor too), and the try fails
    assert run.floor_state == "failed"
    assert "execute_workload" in run.text("worker") and "memory-killed: peak 16.0 MiB, limit 16.0 MiB" in \
        run.text("worker")
