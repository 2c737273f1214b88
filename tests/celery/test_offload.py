"""Claim check through real workers and brokers: large values travel by reference, messages stay small."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from kombu.exceptions import ContentDisallowed, EncodeError

from oomless.celery import offload
from oomless.data.claim import MARK
from oomless.errors import ClaimMissing

from .harness import start_worker
from .worker_app import make_app

MiB = 2**20


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _drain(app, name: str, count: int) -> list:
    """Take ``count`` messages from queue ``name`` (no worker consumes it), then delete the queue."""
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(name)
        try:
            assert queue.qsize() == count
            messages = [queue.get(timeout=10) for _ in range(count)]
            for m in messages:
                m.ack()
        finally:
            queue.close()
            conn.default_channel.queue_delete(name)
    return messages


def _files(root: Path, under: str) -> list[Path]:
    return sorted(p for p in (root / under).rglob("*") if p.is_file()) if (root / under).exists() else []


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def claims(request, tmp_path_factory, redis_url):
    """A worker and a client sharing one claim store (a local directory)."""
    broker = request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else redis_url
    tmp = tmp_path_factory.mktemp(f"offload-{request.param}")
    conf = {"oomless_offload": str(tmp / "claims"), "oomless_offload_ttl": 3600}
    worker = start_worker(tmp, broker, redis_url, mode="watchdog", conf=conf)
    app = make_app(broker, redis_url, worker.queue, "watchdog", conf=conf)
    worker.app, worker.root, worker.broker = app, tmp / "claims", broker
    yield worker
    worker.stop()
    app.close()


def test_a_large_argument_and_a_large_result_arrive_whole(claims):
    data = os.urandom(3 * MiB).hex()  # 6 MiB of text
    got = claims.app.tasks["t.digest"].delay(data, label="small").get(timeout=60)
    assert got == {"len": len(data), "sha": hashlib.sha256(data.encode()).hexdigest(), "label": "small"}
    result = claims.app.tasks["t.blob"].delay(5 * MiB, fill="z")
    assert result.get(timeout=60) == "z" * (5 * MiB)
    assert len(_files(claims.root, f"results/{result.id}")) == 1


def test_the_message_on_the_broker_holds_a_reference_and_the_same_value_is_stored_once(claims):
    app = claims.app
    parked = f"{claims.queue}-parked"  # no worker consumes it: the test reads the message itself
    data = "q" * (4 * MiB)
    before = set(_files(claims.root, "args"))
    for _ in range(2):
        app.tasks["t.digest"].apply_async((data,), queue=parked)
    bodies = _drain(app, parked, 2)
    for m in bodies:
        assert m.content_type == "application/x-oomless+json"
        assert len(m.body) < 2048, len(m.body)
    added = set(_files(claims.root, "args")) - before
    assert len(added) == 1
    stored = added.pop()
    assert stored.name == hashlib.sha256(f'"{data}"'.encode()).hexdigest()
    # A consumer that only accepts JSON refuses it instead of running with a reference for data.
    with pytest.raises(ContentDisallowed):
        from kombu.serialization import loads

        loads(bodies[0].body, bodies[0].content_type, bodies[0].content_encoding, accept=["json"])


def test_the_worker_main_process_never_holds_the_value(claims):
    """A prefork worker's main process decodes every message; with a claim check it sees only the reference."""
    digest = claims.app.tasks["t.digest"]
    digest.delay("warm-up").get(timeout=30)
    before = _vm_hwm(claims.pid)
    data = "m" * (96 * MiB)
    assert digest.delay(data).get(timeout=120)["len"] == len(data)
    grew = _vm_hwm(claims.pid) - before
    assert grew < 16 * MiB, f"the worker's main process peak grew by {grew / MiB:.1f} MiB"


def test_without_the_claim_check_the_same_value_passes_through_the_main_process(tmp_path, redis_url):
    """The control for the test above: the measurement sees the value when it travels inline."""
    conf = {"oomless_max_message_size": "1GiB"}
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", conf=conf)
    app = make_app(redis_url, redis_url, worker.queue, "watchdog", conf=conf)
    try:
        app.tasks["t.digest"].delay("warm-up").get(timeout=30)
        before = _vm_hwm(worker.pid)
        assert app.tasks["t.digest"].delay("m" * (96 * MiB)).get(timeout=120)["len"] == 96 * MiB
        assert _vm_hwm(worker.pid) - before > 96 * MiB
    finally:
        worker.stop()
        app.close()


def test_a_value_gone_from_the_store_fails_the_task_with_claim_missing(claims):
    data = "g" * (2 * MiB)
    result = claims.app.tasks["t.digest"].apply_async((data,), countdown=3)  # the worker holds it 3 s
    key = hashlib.sha256(f'"{data}"'.encode()).hexdigest()
    path = claims.root / "args" / key[:2] / key
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    path.unlink()
    with pytest.raises(ClaimMissing, match="is gone") as info:
        result.get(timeout=60)
    assert info.value.key == f"args/{key[:2]}/{key}"
    assert result.state == "FAILURE"


def test_a_forgotten_result_leaves_the_store_at_the_next_sweep(claims):
    result = claims.app.tasks["t.blob"].delay(3 * MiB)
    assert len(result.get(timeout=60)) == 3 * MiB
    kept = claims.app.tasks["t.blob"].delay(3 * MiB, fill="k")
    kept.get(timeout=60)
    result.forget()
    removed = offload.sweep(claims.app, grace=0)
    assert removed["results"] >= 1
    assert _files(claims.root, f"results/{result.id}") == []
    assert len(_files(claims.root, f"results/{kept.id}")) == 1


def test_a_chord_of_large_results_reaches_its_callback(claims):
    from celery import chord

    blob, lengths = claims.app.tasks["t.blob"], claims.app.tasks["t.lengths"]
    result = chord([blob.s(2 * MiB, fill=c) for c in "abc"])(lengths.s())
    assert result.get(timeout=90) == [2 * MiB] * 3


def test_small_messages_stay_inline(claims):
    before = set(_files(claims.root, "args"))
    assert claims.app.tasks["t.digest"].delay("tiny").get(timeout=30)["len"] == 4
    assert set(_files(claims.root, "args")) == before


def test_the_worker_sweeps_expired_arguments_itself(tmp_path, redis_url):
    conf = {"oomless_offload": str(tmp_path / "claims"), "oomless_offload_ttl": 2,
            "oomless_offload_sweep_interval": 1}
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", conf=conf)
    app = make_app(redis_url, redis_url, worker.queue, "watchdog", conf=conf)
    try:
        worker.wait_for("travel by reference")
        assert app.tasks["t.digest"].delay("s" * (2 * MiB)).get(timeout=60)["len"] == 2 * MiB
        assert len(_files(tmp_path / "claims", "args")) == 1
        worker.wait_for("claim store swept", timeout=20)
        assert _files(tmp_path / "claims", "args") == []
    finally:
        worker.stop()
        app.close()


@pytest.mark.parametrize("broker_name", ["redis", "rabbitmq"])
def test_without_a_store_an_oversized_message_is_refused_before_it_is_sent(request, tmp_path, redis_url, broker_name):
    broker = request.getfixturevalue("rabbitmq_url") if broker_name == "rabbitmq" else redis_url
    queue = f"oomless-oversized-{os.getpid()}-{broker_name}"
    app = make_app(broker, redis_url, queue, "watchdog", conf={"oomless_max_message_size": "2MiB"})
    try:
        with pytest.raises(EncodeError) as info:
            app.tasks["t.digest"].delay("o" * (3 * MiB))
        text = str(info.value)
        assert "3.0 MiB" in text and "2.0 MiB" in text and "oomless_offload" in text
        # Nothing reached the broker; a message within the limit still goes, as plain JSON.
        app.tasks["t.digest"].delay("fits")
        [m] = _drain(app, queue, 1)
        assert m.content_type == "application/json"
    finally:
        app.close()


def test_the_default_limit_follows_the_broker():
    for url, limit in [("amqp://guest@localhost//", 16 * MiB), ("pyamqp://x", 16 * MiB),
                       ("redis://localhost:6379/0", 128 * MiB), ("rediss://h", 128 * MiB),
                       ("redis+socket:///tmp/r.sock", 128 * MiB), ("sqs://", 192 * 1024)]:
        app = make_app(url, "redis://127.0.0.1:6379/1", "q", "watchdog", conf={})
        assert app.conf.task_serializer == "oomless-guard+json"
        assert app.oomless_offload.limit == limit, url
        app.close()


def test_a_reference_in_a_message_cannot_reach_outside_the_store(claims):
    """Broker messages are untrusted: a forged reference with a path fails the task, it reads nothing."""
    forged = {MARK: "../../../../etc/passwd", "size": 10, "owner": None}
    result = claims.app.tasks["t.digest"].delay(forged)
    with pytest.raises(ClaimMissing, match="SHA-256"):
        result.get(timeout=30)
