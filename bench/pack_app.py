"""The app of bench/packing.py: tasks that hold a given amount of memory, and runaways.

OOMLESS_BENCH_GOVERNED=1: oomless installed (sizes come per call, as ``memory=``);
0: vanilla Celery.  Both run with ``task_acks_late`` and
``task_reject_on_worker_lost`` as Airflow's CeleryExecutor sets them.
Every attempt increments ``pack:attempts:<task id>`` in Redis, so the
benchmark can count redeliveries.
"""

import os
import time

import redis
from common import airflow_app

MiB = 2**20
CHUNK = 64 * MiB
SLACK = 24 * MiB  # interpreter churn beside the data, kept under the declared size

broker = os.environ["OOMLESS_BENCH_BROKER"]
app = airflow_app("pack", broker, os.environ.get("OOMLESS_BENCH_QUEUE", "pack"))
if os.environ.get("OOMLESS_BENCH_GOVERNED") == "1":
    import oomless

    oomless.install(app)
    app.conf.update({k: float(v) for k, v in os.environ.items() if k.startswith("oomless_")})
_counter = None


def _attempt(task_id: str) -> None:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(broker)
    _counter.incr(f"pack:attempts:{task_id}")


@app.task(name="pack.work", bind=True)
def work(self, size: int, hold: float) -> float:
    """Hold ``size`` bytes (every page touched) until ``hold`` seconds after the start."""
    start = time.time()
    _attempt(self.request.id)
    want = max(0, size - SLACK)
    data = [bytearray(CHUNK) for _ in range(want // CHUNK)]
    data.append(bytearray(want % CHUNK))
    time.sleep(max(0.0, start + hold - time.time()))
    del data
    return time.time() - start


@app.task(name="pack.runaway", bind=True)
def runaway(self) -> int:
    """Grow by 64 MiB every 50 ms (about 1.3 GiB/s), without end (stops at 32 GiB)."""
    _attempt(self.request.id)
    data = []
    for _ in range(512):
        data.append(bytearray(CHUNK))
        time.sleep(0.05)
    return len(data)
