"""Memory fields reach event consumers: Celery's own event State, and a real Flower's task page."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from oomless.testing import free_port

from .harness import HERE, start_worker
from .worker_app import make_app


def _get(url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_event_state_merges_the_memory_fields_without_changing_the_task_state(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog")
    app = make_app(redis_url, redis_url, worker.queue)
    state = app.events.State()
    ready = threading.Event()
    receivers = []

    def listen() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": state.event})
            receivers.append(receiver)
            ready.set()
            receiver.capture(limit=None, timeout=None, wakeup=False)

    threading.Thread(target=listen, daemon=True).start()
    try:
        ready.wait(10)
        time.sleep(0.5)
        ok = app.tasks["t.hog"].delay(64)
        killed = app.tasks["t.hog"].delay(512)
        ok.get(timeout=30)
        with pytest.raises(Exception, match="memory limit"):
            killed.get(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            getattr(state.tasks.get(t.id), "memory", None) and state.tasks[t.id].state in ("SUCCESS", "FAILURE")
            for t in (ok, killed)
        ):
            time.sleep(0.1)
    finally:
        for r in receivers:
            r.should_stop = True
        worker.stop()
        app.close()
    task = state.tasks[ok.id]
    assert task.state == "SUCCESS"
    assert task.memory.startswith("ok: peak ") and "limit 256.0 MiB, request 256.0 MiB [watchdog]" in task.memory
    assert task.limit == 256 * 2**20 and task.peak >= 56 * 2**20
    task = state.tasks[killed.id]
    assert task.state == "FAILURE"
    assert task.memory.startswith("memory-killed: peak ") and task.outcome == "memory-killed"


def test_flower_shows_the_memory_row_on_the_task_page(tmp_path, redis_url):
    pytest.importorskip("flower", reason="Flower is installed with the airflow extra (Python 3.11+)")
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog")
    app = make_app(redis_url, redis_url, worker.queue)
    conf = tmp_path / "flowerconfig.py"
    conf.write_text("import oomless.celery.events\noomless.celery.events.show_in_flower()\n")
    port = free_port()
    log = open(tmp_path / "flower.log", "w")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker_app", "flower", "--address=127.0.0.1", f"--port={port}",
         f"--conf={conf}"],
        cwd=HERE, env=worker.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _get(f"http://127.0.0.1:{port}/healthcheck")
        time.sleep(1.0)  # Flower's event consumer is up
        ok = app.tasks["t.hog"].delay(64)
        ok.get(timeout=30)
        deadline = time.monotonic() + 20
        while True:
            page = _get(f"http://127.0.0.1:{port}/task/{ok.id}")
            if "ok: peak" in page or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        flower.terminate()
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(flower.pid, 9)
        log.close()
        worker.stop()
        app.close()
    assert "Memory" in page, (tmp_path / "flower.log").read_text()[-2000:]
    assert "ok: peak" in page and "limit 256.0 MiB, request 256.0 MiB [watchdog]" in page
