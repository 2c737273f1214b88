"""A governed Celery app: run it as written.

    cd examples/celery_app
    celery -A etl worker --concurrency 4 --memory-budget 2GiB -l info     # terminal 1
    python client.py                                                        # terminal 2

Broker and backend default to the local Redis; set OOMLESS_BROKER to use
another (e.g. amqp://guest:guest@127.0.0.1:5672//).
"""

import os
import subprocess
import sys

from celery import Celery

import oomless

BROKER = os.environ.get("OOMLESS_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("etl", broker=BROKER, backend=os.environ.get("OOMLESS_BACKEND", "redis://127.0.0.1:6379/1"))
app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1)
oomless.install(app)

MiB = 2**20


@app.task(memory="256MiB")
def transform(rows: int) -> int:
    """Well-behaved: about 80 bytes a row."""
    data = [bytes(80) for _ in range(rows)]
    return len(data)


@app.task(memory=oomless.Memory(request="128MiB", limit="512MiB"))
def train(size_mib: int) -> int:
    """Uses ``size_mib``; fails with MemoryLimitExceeded above 512 MiB."""
    blocks = [bytearray(MiB) for _ in range(size_mib)]
    return len(blocks)


@app.task(memory="256MiB")
def shell_sort(size_mib: int) -> int:
    """Memory used by a subprocess counts against the task's limit too."""
    code = f"x = [bytearray(1 << 20) for _ in range({size_mib})]"
    subprocess.run([sys.executable, "-c", code], check=True)
    return size_mib
