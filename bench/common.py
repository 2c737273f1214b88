"""Shared pieces of the benchmarks: a broker, worker subprocesses, machine facts.

Workers and the embedded Redis are :mod:`oomless.testing`'s, as in the tests and the demo.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import socket
from pathlib import Path

from oomless import testing

HERE = Path(__file__).parent


def broker_url() -> str:
    """Local Redis when it runs, else an embedded one (kept alive for the process)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return "redis://127.0.0.1:6379/9"
    except OSError:
        embedded = testing.EmbeddedRedis()
        atexit.register(embedded.stop)
        return embedded.url


def airflow_app(name: str, broker: str, queue: str, **conf: object):
    """A benchmark's Celery app on ``broker`` (results there too), with Airflow's CeleryExecutor acks:
    late, and rejected (redelivered) when the worker is lost; ``conf`` adds or overrides settings."""
    from celery import Celery

    app = Celery(name, broker=broker, backend=broker)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        **conf,
    )
    return app


def versions() -> dict:
    import billiard
    import celery
    import kombu

    import oomless

    return {
        "python": platform.python_version(),
        "celery": celery.__version__,
        "billiard": billiard.__version__,
        "kombu": kombu.__version__,
        "oomless": oomless.__version__,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def start_worker(module: str, env: dict, args: list[str], log: Path) -> testing.Worker:
    """A Celery worker subprocess running ``bench/<module>.py``'s app, ready; its log in ``log``.

    Task events stay off (as in production by default): they would cost every variant alike.
    """
    return testing.start_worker(
        module, log, args=["--without-heartbeat", *args], env=env, cwd=HERE, pythonpath=[HERE], events=False,
        ready_timeout=60,
    )


def thread_cpu_seconds(pid: int, tid: int) -> float:
    with open(f"/proc/{pid}/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of process ``pid`` (every thread) and of its child processes together
    (those alive now; a pool child that exits takes its share with it)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        children = []
    total = 0.0
    for child in children:
        try:
            total += process_cpu_seconds(child)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return process_cpu_seconds(pid), total


def emit(name: str, payload: dict) -> None:
    """Print the benchmark's one JSON line."""
    print(f"BENCH {name} " + json.dumps(payload, sort_keys=True))
