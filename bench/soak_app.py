"""The app of bench/soak.py: well-behaved tasks and runaways of every kind a task can grow by.

OOMLESS_SOAK_GOVERNED=1: oomless installed (sizes come per call, as ``memory=``;
the history store points at a port where nothing listens: "the store is down");
0: vanilla Celery.  Both with Airflow's settings: ``task_acks_late``,
``task_reject_on_worker_lost``, prefetch 1.  Every attempt increments
``soak:attempts:<task id>`` in the broker's Redis, so the soak can count
re-executions.  Runaways stop by themselves at :data:`RUNAWAY_CAP` (vanilla
has nothing else to stop them: the kernel does, or the cap).
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading
import time

import redis
from common import airflow_app

MiB = 2**20
CHUNK = 32 * MiB
RUNAWAY_CAP = 3 * 2**30  # bytes a runaway stops at, whatever stops it first
RUNAWAY_SECONDS = 20.0  # ... or seconds
GROW_EVERY = 0.02  # s between chunks: ~1.6 GB/s

broker = os.environ["OOMLESS_SOAK_BROKER"]
app = airflow_app(
    "soak", broker, os.environ.get("OOMLESS_SOAK_QUEUE", "soak"),
    worker_prefetch_multiplier=1,
    # A message a dead worker held comes back after this (Airflow sets a day; a soak cannot wait that long).
    broker_transport_options={"visibility_timeout": float(os.environ.get("OOMLESS_SOAK_VISIBILITY", "20"))},
    result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
)
if os.environ.get("OOMLESS_SOAK_GOVERNED") == "1":
    import oomless

    oomless.install(app)
    app.conf.update(oomless_history=os.environ.get("OOMLESS_SOAK_HISTORY") or None)
_counter: redis.Redis | None = None


def _attempt(task_id: str) -> None:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(broker)
    try:
        _counter.incr(f"soak:attempts:{task_id}")
    except redis.RedisError:
        pass  # the broker is being restarted: the attempt is not counted, the task still runs


@app.task(name="soak.work", bind=True)
def work(self, mb: int, hold: float) -> int:
    """Hold ``mb`` MiB (every page touched) for ``hold`` seconds."""
    _attempt(self.request.id)
    data = [bytearray(MiB) for _ in range(mb)]
    time.sleep(hold)
    return len(data)


def _grow(keep: list, cap: int = RUNAWAY_CAP, seconds: float = RUNAWAY_SECONDS) -> None:
    end = time.monotonic() + seconds
    while len(keep) * CHUNK < cap and time.monotonic() < end:
        keep.append(bytearray(CHUNK))
        time.sleep(GROW_EVERY)


_GROW = (
    "import time\n"
    f"keep, end = [], time.monotonic() + {RUNAWAY_SECONDS}\n"
    f"while len(keep) * {CHUNK} < {RUNAWAY_CAP} and time.monotonic() < end:\n"
    f"    keep.append(bytearray({CHUNK})); time.sleep({GROW_EVERY})\n"
)


@app.task(name="soak.runaway", bind=True)
def runaway(self, kind: str) -> str:
    """Grow without end (to the cap) in one of the ways a task's memory can grow."""
    _attempt(self.request.id)
    keep: list = []
    if kind == "thread":
        _grow(keep)
    elif kind == "bgthread":
        t = threading.Thread(target=_grow, args=(keep,), daemon=True)
        t.start()
        t.join()
    elif kind == "subprocess":
        subprocess.run([sys.executable, "-c", _GROW], check=False)
    elif kind == "daemon":
        # Double fork and setsid: the grower is nobody's child but init's (or a subreaper's).
        code = "import os\nif os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\n" + _GROW
        subprocess.run([sys.executable, "-c", code], check=False)
        time.sleep(RUNAWAY_SECONDS)
    elif kind == "shm":
        path = f"/dev/shm/oomless-soak-{self.request.id}"
        try:
            with open(path, "wb") as fh:
                end = time.monotonic() + RUNAWAY_SECONDS
                while fh.tell() < RUNAWAY_CAP and time.monotonic() < end:
                    fh.write(b"\1" * CHUNK)
                    fh.flush()
                    time.sleep(GROW_EVERY)
        finally:
            if os.path.exists(path):
                os.unlink(path)
    elif kind == "shmmap":
        area = mmap.mmap(-1, RUNAWAY_CAP, flags=mmap.MAP_SHARED)
        end = time.monotonic() + RUNAWAY_SECONDS
        for off in range(0, RUNAWAY_CAP, CHUNK):
            if time.monotonic() > end:
                break
            area[off:off + CHUNK] = b"\1" * CHUNK
            time.sleep(GROW_EVERY)
    elif kind == "forkbomb":
        # Bounded: 48 processes of 64 MiB each (3 GiB), none waited for by anyone but the task.
        children = []
        for _ in range(48):
            pid = os.fork()
            if pid == 0:
                _hold = bytearray(64 * MiB)  # noqa: F841
                time.sleep(RUNAWAY_SECONDS)
                os._exit(0)
            children.append(pid)
            time.sleep(GROW_EVERY)
        for pid in children:
            os.waitpid(pid, 0)
    else:
        raise ValueError(f"unknown runaway kind {kind!r}")
    return kind
