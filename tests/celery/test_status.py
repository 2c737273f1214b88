"""The ``oomless_status`` control command: what a real governed worker reports about itself."""

from __future__ import annotations

import time

import pytest

from oomless.celery.control import COMMAND

from .harness import start_worker
from .worker_app import make_app

MiB = 2**20


def _status(app, node: str, timeout: float = 2.0) -> dict:
    for reply in app.control.broadcast(COMMAND, reply=True, timeout=timeout):
        for name, body in reply.items():
            if name.startswith(f"{node}@"):
                return body
    raise AssertionError(f"no {COMMAND} reply from {node}")


def _used(app, node: str) -> list[int]:
    return [int(r["used"]) for r in _status(app, node)["running"]]


@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_status_shows_budget_running_tasks_with_live_memory_and_waiting_tasks(tmp_path, redis_url, mode):
    worker = start_worker(tmp_path, redis_url, redis_url, mode=mode, extra=("--memory-budget", "1GiB"))
    app = make_app(redis_url, redis_url, worker.queue, mode)
    try:
        big = app.tasks["t.hold"].apply_async([6, 200], memory="600MiB")
        worker.wait_for(f"t.hold[{big.id}] received")
        deadline = time.monotonic() + 20  # until it allocated its 200 MiB (slower on a loaded machine)
        while time.monotonic() < deadline and max(_used(app, worker.node), default=0) < 180 * MiB:
            time.sleep(0.1)
        second = app.tasks["t.hold"].apply_async([1, 0], memory="600MiB")  # cannot fit beside the first
        worker.wait_for(f"t.hold[{second.id}] waits")
        status = _status(app, worker.node)
        assert status["governed"] is True
        assert (status["budget"], status["mode"], status["slots"]) == (1024 * MiB, mode, 2)
        assert status["reserved"] == 600 * MiB
        [running] = status["running"]
        assert (running["id"], running["name"], running["limit"]) == (big.id, "t.hold", 600 * MiB)
        assert 180 * MiB <= running["used"] <= 260 * MiB
        assert status["used"] == running["used"]
        [waiting] = status["waiting"]
        assert (waiting["id"], waiting["request"], waiting["fits"]) == (second.id, 600 * MiB, False)
        assert waiting["waited"] > 0
        big.get(timeout=30), second.get(timeout=30)
        # The result reaches the client before the worker's main process hears that the task ended
        # (the pool child clears its slot row first, the main process then releases the reservation).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = _status(app, worker.node)
            if (after["running"], after["waiting"], after["reserved"]) == ([], [], 0):
                break
            time.sleep(0.1)
        assert (after["running"], after["waiting"], after["reserved"]) == ([], [], 0)
        assert after["counts"]["ok"] == 2
    finally:
        worker.stop()
        app.close()
