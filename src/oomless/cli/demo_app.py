"""The Celery app ``oomless demo`` runs: tasks of several sizes and two runaways.

The worker subprocess (``celery -A oomless.cli.demo_app worker``) and the demo
command build the same app from the same environment variables:

* ``OOMLESS_DEMO_BROKER``: broker and result backend URL (the demo passes
  ``redis+socket:///<tmp>/redis.socket`` of its embedded Redis);
* ``OOMLESS_DEMO_ENFORCEMENT``: ``auto``, ``cgroup`` or ``watchdog``;
* ``OOMLESS_DEMO_DIR``: where each task notes when it started (one line per
  start), so the demo can show run times and prove nothing ran twice.

The runaways allocate until oomless stops them.  So that a *broken* enforcer
cannot take the machine down, they give up at :data:`SAFETY_STOP` and return:
the demo then reports a runaway that "succeeded" as the failure it is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from celery import Celery

import oomless

from ..outcomes import MEMORY_KILLED, OK

__all__ = ["make_app", "app", "SHOWCASE", "Showcase", "SAFETY_STOP_MIB", "STARTS_FILE"]

MiB = 2**20

#: A runaway gives up here (far above its 256 MiB limit) if nothing stopped it.
SAFETY_STOP_MIB = 1024

#: File in ``OOMLESS_DEMO_DIR`` where every task start is noted as "<task id> <epoch seconds>".
STARTS_FILE = "starts.log"

#: Seconds a well-behaved task holds its memory, so that it is still running
#: (and must survive) while the runaways next to it are killed.
HOLD_SECONDS = 1.0

ALLOC_STEP = 8 * MiB


@dataclass(frozen=True)
class Showcase:
    """One task of the demo workload: its Celery name, what it does, what must happen."""

    name: str
    label: str
    does: str
    args: tuple[int, ...]
    expect: str  # OK or MEMORY_KILLED


SHOWCASE: tuple[Showcase, ...] = (
    # Runaways first, so that they are killed while well-behaved tasks run beside them.
    Showcase("oomless.demo.runaway", "runaway", "allocates without end", (), MEMORY_KILLED),
    Showcase("oomless.demo.allocate", "large", "allocates 300 MiB", (300,), OK),
    Showcase(
        "oomless.demo.runaway_subprocess", "runaway subprocess", "starts a subprocess that allocates without end",
        (), MEMORY_KILLED,
    ),
    Showcase("oomless.demo.allocate_medium", "medium", "allocates 128 MiB", (128,), OK),
    Showcase("oomless.demo.allocate_small", "small", "allocates 32 MiB", (32,), OK),
)


def _note_start(task_id: str | None) -> None:
    folder = os.environ.get("OOMLESS_DEMO_DIR")
    if folder and task_id:
        # One short O_APPEND write per line: lines from concurrent tasks never interleave.
        with open(os.path.join(folder, STARTS_FILE), "a") as fh:
            fh.write(f"{task_id} {time.time():.6f}\n")


def _hold(mb: int) -> int:
    chunks = [bytearray(ALLOC_STEP) for _ in range(mb * MiB // ALLOC_STEP)]
    time.sleep(HOLD_SECONDS)
    return len(chunks) * ALLOC_STEP // MiB


# The subprocess runaway: a separate interpreter, so its memory is not the pool
# child's; only enforcement of the whole process tree can stop it.
_RUNAWAY_CODE = (
    "import time\n"
    "chunks = []\n"
    f"while len(chunks) * {ALLOC_STEP} < {SAFETY_STOP_MIB * MiB}:\n"
    f"    chunks.append(bytearray({ALLOC_STEP}))\n"
    "time.sleep(1)\n"
)


def make_app(broker: str | None = None, enforcement: str | None = None) -> Celery:
    """The demo app on ``broker`` (also the result backend), governed by oomless."""
    url = broker or os.environ.get("OOMLESS_DEMO_BROKER", "memory://")
    backend = url if url.startswith("redis") else "cache+memory://"
    app = Celery("oomless_demo", broker=url, backend=backend)
    app.conf.update(
        # The configuration that turns a memory kill into an endless redelivery
        # loop in vanilla Celery (celery#9082); oomless fails the task once.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        oomless_enforcement=enforcement or os.environ.get("OOMLESS_DEMO_ENFORCEMENT", "auto"),
    )
    oomless.install(app)

    @app.task(name="oomless.demo.allocate_small", bind=True, memory="64MiB")
    def allocate_small(self, mb: int) -> int:  # type: ignore[no-untyped-def]
        """Allocate and hold ``mb`` MiB, well under its 64 MiB limit."""
        _note_start(self.request.id)
        return _hold(mb)

    @app.task(name="oomless.demo.allocate_medium", bind=True, memory="256MiB")
    def allocate_medium(self, mb: int) -> int:  # type: ignore[no-untyped-def]
        """Allocate and hold ``mb`` MiB, well under its 256 MiB limit."""
        _note_start(self.request.id)
        return _hold(mb)

    @app.task(name="oomless.demo.allocate", bind=True, memory="512MiB")
    def allocate(self, mb: int) -> int:  # type: ignore[no-untyped-def]
        """Allocate and hold ``mb`` MiB, under its 512 MiB limit."""
        _note_start(self.request.id)
        return _hold(mb)

    @app.task(name="oomless.demo.runaway", bind=True, memory="256MiB")
    def runaway(self) -> int:  # type: ignore[no-untyped-def]
        """Allocate in a tight loop until stopped (or the safety stop)."""
        _note_start(self.request.id)
        chunks: list[bytearray] = []
        while len(chunks) * ALLOC_STEP < SAFETY_STOP_MIB * MiB:
            chunks.append(bytearray(ALLOC_STEP))
        return len(chunks) * ALLOC_STEP // MiB

    @app.task(name="oomless.demo.runaway_subprocess", bind=True, memory="256MiB")
    def runaway_subprocess(self) -> int:  # type: ignore[no-untyped-def]
        """Start a Python subprocess that allocates until stopped (or the safety stop)."""
        _note_start(self.request.id)
        subprocess.run([sys.executable, "-c", _RUNAWAY_CODE], check=True)
        return SAFETY_STOP_MIB

    return app


app = make_app()
