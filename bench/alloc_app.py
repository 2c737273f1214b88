"""The allocating app of bench/enforcement.py.

OOMLESS_BENCH_GOVERNED=1: oomless enforces memory="512MiB".
OOMLESS_BENCH_GOVERNED=0: vanilla Celery with the do-it-yourself recipe people
use today: a thread in the task polls its RSS (psutil, every 100 ms) and
kills the process when it is over the limit.
"""

import mmap
import os
import struct
import threading
import time

from celery import Celery

LIMIT = 512 * 2**20
STEP = 4 * 2**20
DIY_POLL = 0.1

app = Celery("alloc", broker=os.environ["OOMLESS_BENCH_BROKER"], backend=os.environ["OOMLESS_BENCH_BROKER"])
app.conf.update(task_default_queue=os.environ["OOMLESS_BENCH_QUEUE"], worker_prefetch_multiplier=1)
governed = os.environ.get("OOMLESS_BENCH_GOVERNED") == "1"
if governed:
    import oomless

    oomless.install(app)
    app.conf.oomless_enforcement = os.environ.get("OOMLESS_BENCH_MODE", "auto")


def _progress(path):
    fd = os.open(path, os.O_RDWR)
    mem = mmap.mmap(fd, 0)
    os.close(fd)
    return mem


def _diy_guard(mem, baseline):
    import psutil

    me = psutil.Process()
    while True:
        used = me.memory_info().rss - baseline
        if used > LIMIT:
            struct.pack_into("<q", mem, 8, used)  # what the guard saw when it fired
            os.kill(os.getpid(), 9)
        time.sleep(DIY_POLL)


@app.task(name="alloc.run", **({"memory": "512MiB"} if governed else {}))
def run(rate, path):
    """Allocate STEP bytes at ``rate`` bytes/s (0: as fast as possible) until killed.

    Records in ``path`` (mmap): [0] steps done, [1] DIY detection, then a
    double per step: the time.time() when that step's bytes were in place.
    """
    mem = _progress(path)
    if not governed:
        import psutil

        threading.Thread(target=_diy_guard, args=(mem, psutil.Process().memory_info().rss), daemon=True).start()
    chunks = []
    start = time.time()
    for k in range(4096):
        if rate:
            delay = start + (k * STEP) / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        chunks.append(bytearray(STEP))  # zero-filled: every page touched
        struct.pack_into("<d", mem, 16 + 8 * k, time.time())
        struct.pack_into("<q", mem, 0, k + 1)
    return len(chunks)
