"""How tightly and how fast a runaway is stopped: overshoot and time to a visible failure.

    .venv/bin/python bench/enforcement.py [--trials 5]

A task allocates 4 MiB steps at 256 MiB/s, 1 GiB/s and as fast as it can,
against a 512 MiB limit, under oomless (cgroup, watchdog) and under vanilla
Celery with the do-it-yourself guard people use today (a thread in the task
polling psutil RSS every 100 ms and killing the process).  The task stamps
the time of every step in a shared file, so the moment it crossed the limit
is known independently of the enforcer.

* overshoot = what the enforcer measured when it acted − limit
  (cgroup: the kernel never lets the slot pass the limit; the figure is the
  slot's recorded peak − limit);
* allocated past the limit = the task's own last completed step − limit
  (a lower bound of what it really held);
* latency = client sees the failure − the task crossed the limit.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import struct
import tempfile
import time
import uuid
from pathlib import Path

from common import broker_url, emit, start_worker, versions

LIMIT = 512 * 2**20
STEP = 4 * 2**20
MiB = 2**20
RATES = {"256MiB/s": 256 * MiB, "1GiB/s": 1024 * MiB, "max": 0}
VARIANTS = {
    "cgroup": {"OOMLESS_BENCH_GOVERNED": "1", "OOMLESS_BENCH_MODE": "cgroup"},
    "watchdog": {"OOMLESS_BENCH_GOVERNED": "1", "OOMLESS_BENCH_MODE": "watchdog"},
    "vanilla+diy": {"OOMLESS_BENCH_GOVERNED": "0"},
}


def _crossing_time(stamps: list[float], rate: int) -> float:
    """When the task's allocation reached LIMIT (interpolated/extrapolated from step stamps)."""
    k = LIMIT // STEP  # step index whose completion puts LIMIT in place
    if len(stamps) >= k:
        return stamps[k - 1]
    tail = stamps[-8:]
    per_step = (tail[-1] - tail[0]) / (len(tail) - 1) if len(tail) > 1 else STEP / (rate or 4 * 2**30)
    return stamps[-1] + (k - len(stamps)) * per_step


def trial(app, rate: int, tmp: Path) -> dict:
    path = tmp / f"progress-{uuid.uuid4().hex[:8]}"
    path.write_bytes(b"\0" * (16 + 8 * 4096))
    result = app.send_task("alloc.run", args=[rate, str(path)])
    error = None
    try:
        result.get(timeout=120, propagate=True)
    except Exception as exc:  # noqa: BLE001 - we classify it below
        error = exc
    seen = time.time()
    with open(path, "r+b") as fh:
        mem = mmap.mmap(fh.fileno(), 0)
        steps, diy_seen = struct.unpack_from("<qq", mem, 0)
        stamps = list(struct.unpack_from(f"<{steps}d", mem, 16))
        mem.close()
    path.unlink()
    crossed = _crossing_time(stamps, rate)
    measured = getattr(error, "peak", None) or (diy_seen or None)
    return {
        "outcome": type(error).__name__ if error else "succeeded",
        "overshoot_mib": None if measured is None else (measured - LIMIT) / MiB,
        "allocated_past_limit_mib": (steps * STEP - LIMIT) / MiB,
        "latency_s": seen - crossed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    broker = broker_url()
    tmp = Path(tempfile.mkdtemp(prefix="oomless-enforce-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    rows = []
    from celery import Celery

    for variant in args.variants.split(","):
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        env = dict(VARIANTS[variant], OOMLESS_BENCH_BROKER=broker, OOMLESS_BENCH_QUEUE=queue)
        worker = start_worker("alloc_app", env, ["-c", "1", "-Q", queue], tmp / f"{variant}.log")
        app = Celery("alloc", broker=broker, backend=broker)
        app.conf.task_default_queue = queue
        try:
            import oomless  # noqa: F401 - so MemoryLimitExceeded is rebuilt with limit/peak

            for rate_name, rate in RATES.items():
                runs = [trial(app, rate, tmp) for _ in range(args.trials)]
                over = [r["overshoot_mib"] for r in runs if r["overshoot_mib"] is not None]
                row = {
                    "variant": variant,
                    "rate": rate_name,
                    "outcomes": sorted({r["outcome"] for r in runs}),
                    "overshoot_mib_median": round(statistics.median(over), 1) if over else None,
                    "overshoot_mib_max": round(max(over), 1) if over else None,
                    "allocated_past_limit_mib_max": round(max(r["allocated_past_limit_mib"] for r in runs), 1),
                    "latency_s_median": round(statistics.median(r["latency_s"] for r in runs), 3),
                    "latency_s_max": round(max(r["latency_s"] for r in runs), 3),
                }
                rows.append(row)
                print(
                    f"{variant:12s} {rate_name:9s} {','.join(row['outcomes']):22s} overshoot median "
                    f"{row['overshoot_mib_median']} MiB, max {row['overshoot_mib_max']} MiB; task's own "
                    f"allocation past the limit max {row['allocated_past_limit_mib_max']} MiB; latency median "
                    f"{row['latency_s_median']} s, max {row['latency_s_max']} s",
                    flush=True,
                )
        finally:
            worker.stop()
            app.close()
    emit("enforcement", {"trials": args.trials, "limit_mib": LIMIT // MiB, "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
