"""The admission gate's give-back, driven in-process with real Celery requests and a broker that is down.

The gate's clock is injected (its ``clock`` argument), so waiting 30 s takes no time; the
requests are real ``celery.worker.request.Request`` objects built from real kombu messages; the
broker the give-back publishes to refuses the connection, so the republish fails for real.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from celery import Celery
from celery.worker import state
from celery.worker.request import Request
from kombu import Connection
from kombu.asynchronous import Hub
from kombu.common import QoS

from oomless.admission import Admission
from oomless.celery.gate import MemoryGate
from oomless.spec import Memory
from oomless.units import GiB, MiB


@pytest.fixture
def app():
    # Port 1 refuses connections: every publish (and the backlog probe) fails, without retries.
    app = Celery("gate", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.task_publish_retry_policy = {"max_retries": 0}
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    app.conf.broker_transport_options = {"max_retries": 0}

    @app.task(name="gate.work")
    def work():
        return None

    return app


def _request(app, task_id: str, priority: int, memory: int) -> Request:
    """A real request for ``gate.work`` sent with ``priority``, carrying its resolved memory."""
    sent = app.amqp.as_task_v2(task_id, "gate.work")
    with Connection("memory://") as conn:
        queue = conn.SimpleQueue(f"gate-{task_id}")
        queue.put(sent.body, headers=sent.headers, serializer="json", priority=priority)
        message = queue.get(timeout=1)
        queue.close()
    req = Request(message, app=app, task=app.tasks["gate.work"])
    req.oomless_spec = Memory(request=memory, limit=memory)
    return req


def test_a_give_back_the_broker_refuses_keeps_the_tasks_place_and_its_priority(app):
    """Before 9b21525 the refused task was submitted again with priority 0 (Redis: the highest)."""
    now = [0.0]
    started: list[str] = []
    gate = MemoryGate(
        Admission(GiB, 2, backfill_window=60.0, give_back_after=30.0), max_waiting=4,
        higher_priority_first=False,  # Redis: 0 first
        refuse=lambda req: pytest.fail(f"{req.id} refused"), clock=lambda: now[0],
    )
    running = _request(app, "running", 5, 768 * MiB)
    late = _request(app, "late-low-priority", 9, 600 * MiB)
    urgent = _request(app, "urgent", 1, 600 * MiB)
    state.task_reserved(running)  # Celery holds it: the gate's reconciliation must not free it
    try:
        assert gate.acquire(lambda req: started.append(req.id), running)
        assert not gate.acquire(lambda req: started.append(req.id), late)  # waits: 256 MiB free
        now[0] = 25.0
        assert not gate.acquire(lambda req: started.append(req.id), urgent)
        now[0] = 31.0
        gate.tick()  # "late" is overdue; giving it back fails (the broker is down): it stays here
        assert [w.key.id for w in gate.adm.waiting] == ["urgent", "late-low-priority"]
        now[0] = 32.0
        gate.finish(running)  # 1 GiB free: room for one of the two
        assert started == ["running", "urgent"]
        assert [w.key.id for w in gate.adm.waiting] == ["late-low-priority"]
    finally:
        state.task_ready(running)


def _gate(slots: int = 2, budget: int = GiB) -> MemoryGate:
    return MemoryGate(Admission(budget, slots), max_waiting=slots, higher_priority_first=False,
                      refuse=lambda req: pytest.fail(f"{req.id} refused"), clock=lambda: 0.0)


def test_a_task_waiting_for_a_slot_is_said_at_debug_and_one_waiting_for_memory_at_info(app, caplog):
    caplog.set_level(logging.INFO, logger="oomless")
    gate = _gate()
    first, second = _request(app, "first", 0, 256 * MiB), _request(app, "second", 0, 256 * MiB)
    slot_wait, big = _request(app, "slot-wait", 0, 64 * MiB), _request(app, "big", 0, 768 * MiB)
    for req in (first, second, slot_wait):
        gate.acquire(lambda req: None, req)
    assert [r.message for r in caplog.records] == []  # Celery's prefetch at work: nothing to say
    gate.finish(first)  # slot-wait starts: still nothing
    assert [r.message for r in caplog.records] == []
    gate.acquire(lambda req: None, big)  # 768 MiB cannot fit beside 2 x 256 MiB... and 64 MiB
    gate.finish(second)
    gate.finish(slot_wait)
    messages = [r.message for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("oomless: gate.work[big] waits (its request does not fit): request 768.0 MiB")
    assert messages[1].startswith("oomless: admitted gate.work[big] after waiting 0.0 s: request 768.0 MiB")


def test_tasks_waiting_only_for_a_slot_leave_celerys_prefetch_alone(app):
    qos = QoS(lambda prefetch_count: None, 32)
    gate = _gate()
    gate.register(Hub(), SimpleNamespace(qos=qos))
    for i in range(6):  # 2 run, 4 wait for a slot; 6 x 64 MiB fit the budget
        gate.acquire(lambda req: None, _request(app, f"small-{i}", 0, 64 * MiB))
    qos.update()
    assert (len(gate.adm.running), len(gate.adm.waiting), qos.prev) == (2, 4, 32)
    # Now tasks that cannot fit wait: the gate holds prefetch back (no hoarding).
    for i in range(2):
        gate.acquire(lambda req: None, _request(app, f"big-{i}", 0, 1000 * MiB))
    qos.update()
    assert gate.stopped and qos.prev < 32
