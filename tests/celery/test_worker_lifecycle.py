"""Slots are set up and torn down with the worker; bad configurations refuse to start."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from oomless.linux import cgroup

from .harness import start_worker

sys.path.insert(0, str(Path(__file__).parent))
from worker_app import make_app  # noqa: E402

HOST = cgroup.detect()
needs_cgroup = pytest.mark.skipif(not HOST.usable, reason=f"cgroup mode unavailable here: {HOST.reason}")


def _parent(worker) -> str:
    """The group the worker was started in (cgroup v2: one of its own, see harness.start_worker)."""
    path = worker.group.path if worker.group is not None else HOST.path
    assert path is not None
    return path


def _groups_of(worker) -> list[str]:
    return [n for n in os.listdir(_parent(worker)) if n.startswith(f"oomless-{worker.pid}-")]


@needs_cgroup
def test_slot_cgroups_exist_while_the_worker_runs_and_are_removed_when_it_stops(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="cgroup")
    parent = _parent(worker)
    try:
        (group,) = _groups_of(worker)
        assert sorted(os.listdir(os.path.join(parent, group))).count("slot-0") == 1
        if HOST.version == 2:  # "no internal processes": the worker moved into a leaf of its own
            with open(f"/proc/{worker.pid}/cgroup") as fh:
                assert fh.read().strip().endswith(f"/{group}/worker")
        remains = os.path.join(parent, group)
        assert worker.proc.poll() is None
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0
        assert not os.path.exists(remains)
    finally:
        worker.stop()


@needs_cgroup
@pytest.mark.skipif(
    HOST.version == 2,
    reason="cgroup v2: no process can join a group that enables controllers for its children, so a successor "
    "never starts in its crashed predecessor's group; the service manager removes that (systemd: KillMode="
    "control-group and its cgroup trimming), and the successor kills the task processes by their mark",
)
def test_slot_cgroups_of_a_crashed_worker_are_removed_on_the_next_start(tmp_path, redis_url):
    crashed = start_worker(tmp_path, redis_url, redis_url, mode="cgroup")
    (group,) = _groups_of(crashed)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.proc.wait(10)
    assert os.path.isdir(os.path.join(HOST.path, group))
    successor = start_worker(tmp_path, redis_url, redis_url, mode="cgroup")
    try:
        assert not os.path.exists(os.path.join(HOST.path, group))
        assert f"removed slot cgroups {os.path.join(HOST.path, group)}" in successor.text()
    finally:
        successor.stop()
        crashed.stop()


def test_explicit_mode_that_cannot_work_refuses_to_start(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", extra=("-P", "solo"), wait_ready=False)
    assert worker.proc.wait(60) != 0
    assert "oomless_enforcement=watchdog cannot work" in worker.text()
    assert "prefork" in worker.text()


def test_auto_mode_on_a_pool_that_cannot_isolate_tasks_warns_and_runs_unenforced(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="auto", extra=("-P", "solo"))
    try:
        assert "memory limits are NOT enforced" in worker.text()
        app = make_app(redis_url, redis_url, worker.queue)
        assert app.tasks["t.hog"].delay(8).get(timeout=30) == 8
    finally:
        worker.stop()


def test_a_task_memory_event_carries_limit_and_peak(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="auto")
    app = make_app(redis_url, redis_url, worker.queue)
    seen: list[dict] = []
    ready = threading.Event()
    receivers = []

    def listen() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"task-memory": seen.append})
            receivers.append(receiver)
            ready.set()
            receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        ready.wait(10)
        time.sleep(0.5)
        result = app.tasks["t.hog"].delay(64)
        result.get(timeout=30)
        deadline = time.monotonic() + 10
        while not any(e["uuid"] == result.id for e in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        event = next(e for e in seen if e["uuid"] == result.id)
        assert event["outcome"] == "ok"
        assert event["limit"] == 256 * 2**20
        assert 0.9 * 64 * 2**20 <= event["peak"] <= 96 * 2**20
        assert event["mode"] in ("cgroup", "watchdog")
    finally:
        for receiver in receivers:
            receiver.should_stop = True
        thread.join(5)
        worker.stop()
