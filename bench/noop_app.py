"""The no-op app of bench/overhead.py; OOMLESS_BENCH_GOVERNED=1 installs oomless."""

import os

import redis
from celery import Celery

BROKER = os.environ["OOMLESS_BENCH_BROKER"]
app = Celery("noop", broker=BROKER)
app.conf.update(task_ignore_result=True, task_default_queue=os.environ["OOMLESS_BENCH_QUEUE"],
                worker_prefetch_multiplier=16)
governed = os.environ.get("OOMLESS_BENCH_GOVERNED") == "1"
if governed:
    import oomless

    oomless.install(app)
    app.conf.oomless_enforcement = os.environ.get("OOMLESS_BENCH_MODE", "auto")
    app.conf.oomless_history = os.environ.get("OOMLESS_BENCH_HISTORY")  # bench/history.py
    app.conf.oomless_metrics_port = os.environ.get("OOMLESS_BENCH_METRICS_PORT")

_counter = None


def _redis():
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(BROKER.replace("redis+socket://", "unix://"))
    return _counter


opts = {"memory": "64MiB"} if governed else {}


@app.task(name="noop.count", **opts)
def count(key):
    """Count itself done (in the pool child: the child is not the bottleneck)."""
    _redis().incr(key)


@app.task(name="noop.sleep", **opts)
def sleep(seconds):
    import time

    time.sleep(seconds)
