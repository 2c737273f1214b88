"""What governing costs: no-op throughput, governed vs vanilla Celery, alternating in one run,
and the watchdog monitor thread's CPU with idle and with busy slots.

    .venv/bin/python bench/overhead.py [--tasks 4000] [--rounds 9] [--settings default,airflow-c2,airflow-c16]
                                       [--variants vanilla,cgroup,watchdog,...] [--paired]

Each round starts a fresh worker per variant, on the same broker with the same
concurrency and prefetch, pre-fills its queue with N no-op tasks and measures
the steady state: the time from the 10 % to the 90 % completion mark, counted
by the tasks themselves (an INCR each).  Variants run in a different order
each round (rotated), and each round's ratio is taken against that round's
vanilla worker: the table gives the median ratio over the rounds and its
spread (min–max).

``--paired``: each round runs every governed variant *at the same time* as a
vanilla worker (each on its own queue, one window for both), and takes the
ratio within the pair.  Side by side they share whatever speed the machine
has at that moment; on these machines it moved by half within seconds, which
put a ±25 % spread on the ratios of rounds run one after the other.

Governed tasks declare memory="64MiB", so every one goes through the full
enforcement path (admission, slot arm/disarm, peak, log line); ``…-undeclared``
variants declare none.  Settings:

* ``default``: Celery's defaults, -c 2 (prefetch multiplier 4, early acks);
* ``airflow-c2`` / ``airflow-c16``: Airflow's CeleryExecutor settings
  (``task_acks_late``, prefetch multiplier 1), -c 2 and -c 16.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import redis
from common import (
    broker_url,
    emit,
    process_cpu_seconds,
    start_worker,
    thread_cpu_seconds,
    tree_cpu_seconds,
    versions,
)
from kombu import Connection

_GOV = {"OOMLESS_BENCH_GOVERNED": "1"}
VARIANTS = {
    "vanilla": {"OOMLESS_BENCH_GOVERNED": "0"},
    "cgroup": dict(_GOV, OOMLESS_BENCH_MODE="cgroup"),
    "watchdog": dict(_GOV, OOMLESS_BENCH_MODE="watchdog"),
    "cgroup-undeclared": dict(_GOV, OOMLESS_BENCH_MODE="cgroup", OOMLESS_BENCH_DECLARE="0"),
    "watchdog-undeclared": dict(_GOV, OOMLESS_BENCH_MODE="watchdog", OOMLESS_BENCH_DECLARE="0"),
    "cgroup-no-admission": dict(_GOV, OOMLESS_BENCH_MODE="cgroup", OOMLESS_BENCH_ADMISSION="0"),
    "watchdog-no-admission": dict(_GOV, OOMLESS_BENCH_MODE="watchdog", OOMLESS_BENCH_ADMISSION="0"),
    # history (a SQLite store, set per run) and metrics (any free port) on
    "cgroup+history+metrics": dict(_GOV, OOMLESS_BENCH_MODE="cgroup", OOMLESS_BENCH_METRICS_PORT="0",
                                   OOMLESS_BENCH_HISTORY="sqlite:///{tmp}/history-{queue}.sqlite"),
    "watchdog+history+metrics": dict(_GOV, OOMLESS_BENCH_MODE="watchdog", OOMLESS_BENCH_METRICS_PORT="0",
                                     OOMLESS_BENCH_HISTORY="sqlite:///{tmp}/history-{queue}.sqlite"),
}
SETTINGS = {
    "default": (2, {}),
    "airflow-c2": (2, {"OOMLESS_BENCH_ACKS_LATE": "1", "OOMLESS_BENCH_PREFETCH": "1"}),
    "airflow-c16": (16, {"OOMLESS_BENCH_ACKS_LATE": "1", "OOMLESS_BENCH_PREFETCH": "1"}),
}


class Run(NamedTuple):
    """One worker's steady state: tasks/s, and CPU µs per task of its main process (every thread)
    and of its pool children together (both counted while it ran, not waited)."""

    rate: float
    main_us: float
    children_us: float


def _client(broker: str) -> redis.Redis:
    return redis.Redis.from_url(broker.replace("redis+socket://", "unix://"))


def _prefill_together(broker: str, queues: list[str], keys: list[str], n: int) -> None:
    """``n`` no-op tasks on each queue, one to each in turn."""
    from celery import Celery

    app = Celery("noop", broker=broker)
    with Connection(broker) as conn, conn.Producer() as producer:
        for _ in range(n):
            for queue, key in zip(queues, keys, strict=True):
                app.send_task("noop.count", args=[key], producer=producer, queue=queue)
    app.close()


def _prefill(broker: str, queue: str, key: str, n: int) -> None:
    from celery import Celery

    app = Celery("noop", broker=broker)
    app.conf.task_default_queue = queue
    with Connection(broker) as conn, conn.Producer() as producer:
        for _ in range(n):
            app.send_task("noop.count", args=[key], producer=producer)
    app.close()


def throughput(
    broker: str, variant: str, n: int, concurrency: int, tmp: Path, variants: dict[str, dict] = VARIANTS,
    extra_env: dict[str, str] | None = None,
) -> Run:
    """Steady-state no-op tasks/s and CPU per task of a fresh worker of ``variants[variant]``
    (env for bench/noop_app.py, ``{tmp}`` and ``{queue}`` filled in), with ``extra_env`` on top."""
    return together(broker, [variant], n, concurrency, tmp, variants, extra_env, prefill_first=True)[0]


def together(
    broker: str, names: list[str], n: int, concurrency: int, tmp: Path, variants: dict[str, dict] = VARIANTS,
    extra_env: dict[str, str] | None = None, prefill_first: bool = False,
) -> list[Run]:
    """:func:`throughput` of one fresh worker per variant in ``names``, all running at once, each on a
    queue of its own with ``n`` tasks, measured over one window: from when every one has done 10 %
    to when the first has done 90 %.  Run side by side, they share whatever speed the machine has
    at that moment (on these machines it moved by half within seconds), so their ratio does not
    move with it.  ``prefill_first``: fill the queues before the workers start (else: once every
    worker is ready, one message to each queue in turn)."""
    r = _client(broker)
    queues = [f"bench-{uuid.uuid4().hex[:8]}" for _ in names]
    keys = [f"bench-count-{uuid.uuid4().hex[:8]}" for _ in names]
    if prefill_first:
        for queue, key in zip(queues, keys, strict=True):
            _prefill(broker, queue, key, n)
    workers = []
    try:
        for name, queue in zip(names, queues, strict=True):
            env = {k: v.format(tmp=tmp, queue=queue) for k, v in variants[name].items()}
            env.update(extra_env or {}, OOMLESS_BENCH_BROKER=broker, OOMLESS_BENCH_QUEUE=queue)
            workers.append(start_worker("noop_app", env, ["-c", str(concurrency), "-Q", queue],
                                        tmp / f"{name}-{queue}.log"))
        if not prefill_first:
            _prefill_together(broker, queues, keys, n)
        first = last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = [int(x or 0) for x in r.mget(keys)]
            now = time.monotonic()
            if first is None and min(done) >= 0.1 * n:
                first = (now, done, [tree_cpu_seconds(w.pid) for w in workers])
            if first is not None and max(done) >= 0.9 * n:
                last = (now, done, [tree_cpu_seconds(w.pid) for w in workers])
                break
            time.sleep(0.005)
        assert first is not None and last is not None, "the workers did not get through their tasks in 600 s"
        (t1, d1, c1), (t2, d2, c2) = first, last
        runs = []
        for i in range(len(names)):
            count = d2[i] - d1[i]
            cpu = [1e6 * (b - a) / max(1, count) for a, b in zip(c1[i], c2[i], strict=True)]
            runs.append(Run(count / (t2 - t1), cpu[0], cpu[1]))
        return runs
    finally:
        # Measured: no need to let pool children wait (billiard waits up to 20 s for the main process
        # to take results it no longer reads, vanilla Celery too) before the harness kills the tree.
        for worker in workers:
            worker.stop(2)
        r.delete(*keys, *queues)


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
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="vanilla is always run")
    parser.add_argument("--cpu-seconds", type=float, default=20, help="0: skip the monitor CPU measurement")
    parser.add_argument("--paired", action="store_true",
                        help="run each variant at the same time as a vanilla worker (see together())")
    args = parser.parse_args()
    broker = broker_url()
    tmp = Path(tempfile.mkdtemp(prefix="oomless-overhead-"))
    variants = ["vanilla", *[v for v in args.variants.split(",") if v != "vanilla"]]
    tables = {}
    for name in args.settings.split(","):
        concurrency, extra = SETTINGS[name]
        runs: dict[str, list[Run]] = {v: [] for v in variants}
        base: dict[str, list[Run]] = {v: [] for v in variants}  # --paired: the vanilla beside each run
        print(f"\n{name}: -c {concurrency}, {extra or 'Celery defaults'}"
              f"{', each beside a vanilla worker' if args.paired else ''}", flush=True)
        for rnd in range(args.rounds):
            k = rnd % len(variants)
            for variant in variants[k:] + variants[:k]:  # each variant first in some round
                if args.paired and variant == "vanilla":
                    continue
                if args.paired:
                    pair = ["vanilla", variant] if rnd % 2 == 0 else [variant, "vanilla"]  # who starts first
                    got = dict(zip(pair, together(broker, pair, args.tasks, concurrency, tmp, extra_env=extra),
                                   strict=True))
                    run, base[variant] = got[variant], [*base[variant], got["vanilla"]]
                    runs["vanilla"].append(got["vanilla"])
                else:
                    run = throughput(broker, variant, args.tasks, concurrency, tmp, extra_env=extra)
                runs[variant].append(run)
                beside = f" (vanilla beside it: {base[variant][-1].rate:.0f})" if args.paired else ""
                print(f"  round {rnd + 1}: {variant:26s} {run.rate:8.0f} tasks/s{beside}, CPU µs per task: "
                      f"main {run.main_us:5.0f}, children {run.children_us:5.0f}", flush=True)
        rows = {}
        for v in variants:
            against = base[v] if args.paired and v != "vanilla" else runs["vanilla"]
            if not runs[v] or not against:
                continue
            ratios = [a.rate / b.rate for a, b in zip(runs[v], against, strict=True)]
            rows[v] = {
                "median_tasks_per_s": round(statistics.median(r.rate for r in runs[v]), 1),
                "ratio_median": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                "tasks_per_s": [round(r.rate, 1) for r in runs[v]],
                "main_cpu_us_median": round(statistics.median(r.main_us for r in runs[v]), 1),
                "children_cpu_us_median": round(statistics.median(r.children_us for r in runs[v]), 1),
            }
        tables[name] = {"concurrency": concurrency, "env": extra, "rows": rows}
        print(f"\n{name}: {'variant':26s} {'median tasks/s':>15s} {'ratio (median)':>15s} {'spread':>14s} "
              f"{'CPU µs/task: main':>18s} {'children':>9s}")
        for v, row in rows.items():
            print(f"{name}: {v:26s} {row['median_tasks_per_s']:15.0f} {row['ratio_median']:15.3f} "
                  f"{row['ratio_min']:6.3f}–{row['ratio_max']:.3f} {row['main_cpu_us_median']:18.0f} "
                  f"{row['children_cpu_us_median']:9.0f}", flush=True)
    cpu = [monitor_cpu(broker, 16, busy, args.cpu_seconds, tmp) for busy in (False, True)] if args.cpu_seconds else []
    print()
    for c in cpu:
        state = "busy" if c["busy"] else "idle"
        print(f"watchdog, {c['slots']} {state} slots: monitor thread {c['monitor_cpu_pct']:.2f} % of a core "
              f"(whole main process {c['main_process_cpu_pct']:.2f} %)")
    emit("overhead", {
        "tasks": args.tasks, "rounds": args.rounds, "paired": args.paired, "broker": broker.split(":")[0],
        "settings": tables,
        "watchdog_cpu": cpu, "versions": versions(),
    })


if __name__ == "__main__":
    main()
