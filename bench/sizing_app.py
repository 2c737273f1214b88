"""The app of bench/sizing.py: one task per memory shape, each holding a known number of bytes.

``true_peak`` is a pure function of (shape, input size, call index, seed): the
worker's task allocates exactly that (anonymous ``mmap``, every page written,
so glibc's heap keeps nothing behind) and holds it ``hold`` seconds (``HOLD``
unless the call says); the benchmark uses the same function to know each
held-out call's true peak.
OOMLESS_BENCH_MODE chooses the enforcement, OOMLESS_BENCH_HISTORY the store.
"""

from __future__ import annotations

import mmap
import os
import random
import time

from celery import Celery

import oomless

MiB = 2**20
HOLD = 0.1  # seconds at the peak: the watchdog's look sees it too
BLOCK = b"\1" * MiB

#: shape -> (smallest, largest) input in MiB of the training calls, and of the held-out calls
SHAPES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "linear": ((10, 120), (10, 120)),
    "noisy": ((10, 120), (10, 120)),
    "flat": ((10, 120), (10, 120)),
    "bimodal": ((10, 120), (10, 120)),
    "superlinear": ((10, 120), (10, 120)),
    "drifting": ((10, 120), (10, 120)),
    "linear_out": ((10, 120), (120, 216)),  # out of range: held-out inputs up to 1.8 × the largest seen
    "superlinear_out": ((10, 120), (120, 216)),
}
DRIFT = 0.3  # drifting: the last call needs 30 % more than the first at the same input


def true_peak(shape: str, size: int, index: int, seed: int, calls: int) -> int:
    """Bytes call ``index`` (of ``calls``, training first) of ``shape`` holds for an input of ``size`` bytes."""
    rng = random.Random(f"{shape}/{seed}/{index}")
    mib = size / MiB
    if shape in ("linear", "linear_out"):
        peak = 30 + 2 * mib
    elif shape == "noisy":
        peak = (30 + 2 * mib) * rng.lognormvariate(0, 0.15)
    elif shape == "flat":
        peak = 80 * rng.lognormvariate(0, 0.1)
    elif shape == "bimodal":
        peak = (240 if rng.random() < 0.15 else 60) * rng.lognormvariate(0, 0.05)
    elif shape in ("superlinear", "superlinear_out"):
        peak = 30 + 0.15 * mib**1.5
    elif shape == "drifting":
        peak = (30 + 2 * mib) * (1 + DRIFT * index / calls)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return int(peak * MiB) // 4096 * 4096


def _hold(n: int, seconds: float) -> None:
    buf = mmap.mmap(-1, n)
    try:
        for _ in range(n // MiB):
            buf.write(BLOCK)
        buf.write(BLOCK[: n % MiB])
        time.sleep(seconds)
    finally:
        buf.close()


app = Celery("sizing")
app.conf.update(worker_prefetch_multiplier=1, result_expires=3600, broker_connection_retry_on_startup=True)
if "OOMLESS_BENCH_BROKER" in os.environ:
    app.conf.update(broker_url=os.environ["OOMLESS_BENCH_BROKER"], result_backend=os.environ["OOMLESS_BENCH_BROKER"],
                    task_default_queue=os.environ["OOMLESS_BENCH_QUEUE"])
oomless.install(app)
app.conf.update(oomless_enforcement=os.environ.get("OOMLESS_BENCH_MODE", "auto"),
                oomless_history=os.environ.get("OOMLESS_BENCH_HISTORY"))


def _task(shape: str):
    def run(size: int, index: int, seed: int, calls: int, hold: float = HOLD) -> int:
        oomless.input_size(size)
        peak = true_peak(shape, size, index, seed, calls)
        _hold(peak, hold)
        return peak

    run.__name__ = run.__qualname__ = shape
    run.__doc__ = f"Hold the {shape} shape's true peak for this input and call."
    return app.task(name=f"sizing.{shape}")(run)


TASKS = {shape: _task(shape) for shape in SHAPES}
