"""oomless.testing starts a real worker, reports its tasks' memory from events, and leaves nothing behind.

The worker runs ``tests/celery/worker_app.py`` (configured by ``OOMLESS_TEST_*``
variables), started through the public harness itself, not the tests' layer
over it.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from oomless.testing import EmbeddedRedis, MemoryEvents, WorkerError, start_worker

from ..celery.harness import HERE, SLACK, alive, wait_file, wait_gone
from ..celery.worker_app import make_app

MiB = 2**20


def _start(tmp_path, redis_url, **kwargs):
    queue = f"oomless-testing-{uuid.uuid4().hex[:8]}"
    env = {"OOMLESS_TEST_BROKER": redis_url, "OOMLESS_TEST_BACKEND": redis_url, "OOMLESS_TEST_QUEUE": queue,
           "OOMLESS_TEST_MODE": "watchdog"}
    worker = start_worker("worker_app", tmp_path / "worker.log", concurrency=2, env=env, cwd=HERE,
                          pythonpath=[HERE], ready_timeout=30 * SLACK, **kwargs)
    return worker, make_app(redis_url, redis_url, queue, "watchdog")


def test_memory_events_give_each_tasks_outcome_peak_limit_and_mode(tmp_path, redis_url):
    worker, app = _start(tmp_path, redis_url)
    try:
        with worker, MemoryEvents(app) as events:
            ok = app.tasks["t.hog"].delay(64)
            killed = app.tasks["t.hog"].delay(512)
            ok.get(timeout=30 * SLACK)
            with pytest.raises(Exception, match="memory limit"):
                killed.get(timeout=30 * SLACK)
            seen = events.wait([ok.id, killed.id], timeout=10 * SLACK)
    finally:
        app.close()
    assert seen[ok.id].outcome == "ok" and seen[ok.id].peak >= 56 * MiB
    assert seen[ok.id].limit == 256 * MiB and seen[ok.id].mode == "watchdog"
    assert seen[killed.id].outcome == "memory-killed" and seen[killed.id].peak >= 256 * MiB
    assert seen[ok.id].memory.startswith("ok: peak ")


def test_stop_kills_a_worker_that_ignores_sigterm_and_the_daemon_its_task_left(tmp_path, redis_url):
    worker, app = _start(tmp_path, redis_url)
    pidfile = tmp_path / "daemon.pid"
    try:
        app.tasks["t.daemon_hog"].delay(8, str(pidfile), hold=120)
        (daemon,) = map(int, wait_file(pidfile, timeout=30 * SLACK))
        code = worker.stop(timeout=1)  # a warm shutdown waits for the task: not given the time
    finally:
        worker.stop()
        app.close()
    assert code < 0
    assert any("SIGKILLed" in note for note in worker.notes), worker.notes
    assert wait_gone(daemon)
    assert not alive(worker.pid)


def test_a_worker_that_exits_before_it_is_ready_raises_with_its_log(tmp_path, redis_url):
    with pytest.raises(WorkerError, match="exited with code .* before its log said") as failed:
        start_worker("no_such_app_module", tmp_path / "worker.log", broker=redis_url)
    assert "no_such_app_module" in str(failed.value)


def test_embedded_redis_serves_then_stops_and_removes_its_files():
    with EmbeddedRedis() as redis:
        assert redis.url.startswith("redis+socket://")
        assert redis.client.ping()
        pid, folder, socket = redis.pid, redis.folder, redis.url[len("redis+socket://"):]
        assert pid is not None and alive(pid)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert not folder.exists() and not os.path.exists(socket)
    assert redis.notes == []
