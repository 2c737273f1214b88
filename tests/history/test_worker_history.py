"""A governed worker records every attempt in the history store: real worker, real Redis, real
SQLite file and, when it runs here, the local PostgreSQL server."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import oomless
from oomless.history.store import Store

from ..celery.harness import start_worker
from .workload import record_mixed

sys.path.insert(0, str(Path(__file__).parent.parent / "celery"))
from worker_app import make_app  # noqa: E402

MiB = 2**20


@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_every_attempt_is_recorded_with_its_outcome_spec_and_peak(tmp_path, redis_url, mode):
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    worker, [ok], killed, refused = record_mixed(tmp_path, redis_url, url, mode, (64,), "2GiB")
    assert "recording every attempt in sqlite:///" in worker.text()
    rows = {a.task_id: a for a in Store(url).attempts("t.hog")}
    assert rows[ok.id].outcome == "ok"
    assert 56 * MiB <= rows[ok.id].peak_rss <= 96 * MiB  # 64 MiB allocated
    assert (rows[ok.id].request, rows[ok.id].limit) == (256 * MiB, 256 * MiB)
    assert rows[ok.id].duration is not None and rows[ok.id].worker_pid and rows[ok.id].mode == mode
    assert rows[ok.id].worker_host.startswith(f"{worker.node}@")
    assert (rows[killed.id].outcome, rows[killed.id].limit) == ("memory-killed", 256 * MiB)
    assert rows[killed.id].peak_rss >= 256 * MiB
    assert (rows[refused.id].outcome, rows[refused.id].limit) == ("infeasible", 64 * 2**30)


def test_a_worker_whose_store_is_unreachable_runs_its_tasks_and_warns_once(tmp_path, redis_url):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", conf={"oomless_history": url})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    try:
        results = [app.tasks["t.hog"].delay(8) for _ in range(20)]
        assert [r.get(timeout=30) for r in results] == [8] * 20
        worker.wait_for("history store is unavailable", timeout=15)
        time.sleep(1.5)  # a retry or two
    finally:
        worker.stop()
        app.close()
    assert worker.text().count("history store is unavailable") == 1
    assert "20 attempts were not written to the history store" in worker.text()


def test_input_sizes_from_the_task_or_the_caller_and_a_sampled_pss_are_recorded(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", conf={"oomless_history": url})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    sized = app.tasks["t.sized"]
    try:
        from_task = sized.delay(40)
        from_caller = sized.apply_async([8], {"report": False}, input_size=123_456)
        task_wins = sized.apply_async([16], input_size=1)
        long = sized.apply_async([64], {"per_mb": 2, "hold": 2.5})
        for r in (from_task, from_caller, task_wins, long):
            r.get(timeout=30)
        with pytest.raises(ValueError, match="takes a number of bytes"):
            oomless.input_size(-1)
    finally:
        worker.stop()
        app.close()
    rows = {a.task_id: a for a in Store(url).attempts("t.sized")}
    assert rows[from_task.id].input_size == 40 * MiB
    assert rows[from_caller.id].input_size == 123_456
    assert rows[task_wins.id].input_size == 16 * MiB
    # 128 MiB held for 2.5 s: sampled (absolute PSS: the interpreter's share comes on top).
    assert 128 * MiB <= rows[long.id].peak_pss <= 128 * MiB + 200 * MiB
    assert rows[long.id].peak_rss >= 120 * MiB
