"""What governing costs: no-op throughput, governed vs vanilla Celery, alternating in one run,
and the watchdog monitor thread's CPU with idle and with busy slots.

    .venv/bin/python bench/overhead.py [--tasks 4000] [--rounds 3] [--concurrency 2]

Each round starts a fresh worker per variant (vanilla, cgroup, watchdog), on
the same broker with the same concurrency and prefetch, pre-fills its queue
with N no-op tasks and measures the steady state: the time from the 10 % to
the 90 % completion mark, counted by the tasks themselves (an INCR each).
Governed tasks declare memory="64MiB", so every one goes through the full
enforcement path (slot arm/disarm, peak, log line).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import redis
from common import broker_url, emit, process_cpu_seconds, start_worker, thread_cpu_seconds, versions
from kombu import Connection

VARIANTS = {
    "vanilla": {"OOMLESS_BENCH_GOVERNED": "0"},
    "cgroup": {"OOMLESS_BENCH_GOVERNED": "1", "OOMLESS_BENCH_MODE": "cgroup"},
    "watchdog": {"OOMLESS_BENCH_GOVERNED": "1", "OOMLESS_BENCH_MODE": "watchdog"},
}


def _client(broker: str) -> redis.Redis:
    return redis.Redis.from_url(broker.replace("redis+socket://", "unix://"))


def _prefill(broker: str, queue: str, key: str, n: int) -> None:
    from celery import Celery

    app = Celery("noop", broker=broker)
    app.conf.task_default_queue = queue
    with Connection(broker) as conn, conn.Producer() as producer:
        for _ in range(n):
            app.send_task("noop.count", args=[key], producer=producer)
    app.close()


def throughput(
    broker: str, variant: str, n: int, concurrency: int, tmp: Path, variants: dict[str, dict] = VARIANTS
) -> float:
    """Steady-state no-op tasks/s of a fresh worker of ``variants[variant]`` (env for bench/noop_app.py)."""
    queue, key = f"bench-{uuid.uuid4().hex[:8]}", f"bench-count-{uuid.uuid4().hex[:8]}"
    r = _client(broker)
    _prefill(broker, queue, key, n)
    env = dict(variants[variant], OOMLESS_BENCH_BROKER=broker, OOMLESS_BENCH_QUEUE=queue)
    worker = start_worker("noop_app", env, ["-c", str(concurrency), "-Q", queue], tmp / f"{variant}-{queue}.log")
    try:
        marks = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = int(r.get(key) or 0)
            now = time.monotonic()
            for frac in (0.1, 0.9):
                if frac not in marks and done >= frac * n:
                    marks[frac] = (now, done)
            if 0.9 in marks:
                break
            time.sleep(0.005)
        (t1, d1), (t2, d2) = marks[0.1], marks[0.9]
        return (d2 - d1) / (t2 - t1)
    finally:
        worker.stop()
        r.delete(key, queue)


def monitor_cpu(broker: str, slots: int, busy: bool, seconds: float, tmp: Path) -> dict:
    """CPU of the watchdog monitor thread (and the whole main process) over ``seconds``."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = dict(VARIANTS["watchdog"], OOMLESS_BENCH_BROKER=broker, OOMLESS_BENCH_QUEUE=queue)
    worker = start_worker("noop_app", env, ["-c", str(slots), "-Q", queue, "-l", "debug"], tmp / f"cpu-{queue}.log")
    try:
        text = (tmp / f"cpu-{queue}.log").read_text()
        tid = int(text.split("monitor thread runs as tid ")[1].split()[0])
        if busy:
            from celery import Celery

            app = Celery("noop", broker=broker)
            app.conf.task_default_queue = queue
            for _ in range(slots):
                app.send_task("noop.sleep", args=[seconds + 10])
            time.sleep(3)  # let every slot pick one up
        t0, m0 = thread_cpu_seconds(worker.pid, tid), process_cpu_seconds(worker.pid)
        w0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - w0
        t1, m1 = thread_cpu_seconds(worker.pid, tid), process_cpu_seconds(worker.pid)
        return {
            "slots": slots,
            "busy": busy,
            "monitor_cpu_pct": round(100 * (t1 - t0) / elapsed, 2),
            "main_process_cpu_pct": round(100 * (m1 - m0) / elapsed, 2),
        }
    finally:
        worker.stop()
        _client(broker).delete(queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--cpu-seconds", type=float, default=20)
    args = parser.parse_args()
    broker = broker_url()
    tmp = Path(tempfile.mkdtemp(prefix="oomless-overhead-"))
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rnd in range(args.rounds):
        order = list(VARIANTS) if rnd % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            rate = throughput(broker, variant, args.tasks, args.concurrency, tmp)
            rates[variant].append(rate)
            print(f"round {rnd + 1}: {variant:9s} {rate:8.0f} tasks/s", flush=True)
    med = {v: statistics.median(r) for v, r in rates.items()}
    print()
    print(f"{'variant':10s} {'median tasks/s':>15s} {'ratio vs vanilla':>17s}")
    for v in VARIANTS:
        print(f"{v:10s} {med[v]:15.0f} {med[v] / med['vanilla']:17.3f}")
    cpu = [monitor_cpu(broker, 16, busy, args.cpu_seconds, tmp) for busy in (False, True)]
    print()
    for c in cpu:
        state = "busy" if c["busy"] else "idle"
        print(f"watchdog, {c['slots']} {state} slots: monitor thread {c['monitor_cpu_pct']:.2f} % of a core "
              f"(whole main process {c['main_process_cpu_pct']:.2f} %)")
    emit("overhead", {
        "tasks": args.tasks, "rounds": args.rounds, "concurrency": args.concurrency, "broker": broker.split(":")[0],
        "median_tasks_per_s": {v: round(m, 1) for v, m in med.items()},
        "ratio_vs_vanilla": {v: round(med[v] / med["vanilla"], 3) for v in VARIANTS},
        "all_tasks_per_s": {v: [round(x, 1) for x in r] for v, r in rates.items()},
        "watchdog_cpu": cpu, "versions": versions(),
    })


if __name__ == "__main__":
    main()
