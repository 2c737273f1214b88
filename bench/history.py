"""What the history costs: no-op throughput with and without recording, and the report and
recommender over a million recorded attempts.

    .venv/bin/python bench/history.py [--tasks 4000] [--rounds 3] [--concurrency 2] [--attempts 1000000]

Part 1 alternates, in one run, fresh workers of four variants on the same
broker (bench/overhead.py's method: pre-filled queue, steady state between the
10 % and 90 % marks): vanilla Celery, governed (watchdog) without history,
governed with ``oomless_history`` on an SQLite file, and governed with
history and Prometheus metrics.  Target: history / no history >= 0.97.

Part 2 fills an SQLite store with N synthetic attempts (40 task names, 4
workers, 0.5 % memory kills, spread over 30 days), then times ``oomless
report`` and ``oomless recommend`` on it as subprocesses and reads their peak
RSS.  Target: the report in under 30 s with bounded memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import broker_url, emit, versions
from overhead import throughput

MiB = 2**20


def variants(store: str) -> dict[str, dict]:
    governed = {"OOMLESS_BENCH_GOVERNED": "1", "OOMLESS_BENCH_MODE": "watchdog"}
    return {
        "vanilla": {"OOMLESS_BENCH_GOVERNED": "0"},
        "governed": governed,
        "history": dict(governed, OOMLESS_BENCH_HISTORY=store),
        "history+metrics": dict(governed, OOMLESS_BENCH_HISTORY=store, OOMLESS_BENCH_METRICS_PORT="0"),
    }


def fill(url: str, n: int, seed: int = 7) -> float:
    """N synthetic attempts in the store at ``url``; returns the seconds it took."""
    from oomless.history import Attempt
    from oomless.history.store import Store

    rng = random.Random(seed)
    store = Store(url)
    names = [f"etl.step_{i:02d}" for i in range(40)]
    typical = {name: rng.choice((32, 128, 512, 2048)) * MiB for name in names}
    start = time.time() - 30 * 86400
    began = time.monotonic()
    batch = []
    for i in range(n):
        name = names[i % 40]
        peak = int(typical[name] * rng.uniform(0.3, 1.1))
        size = int(peak / 3 * rng.uniform(0.9, 1.1))
        killed = rng.random() < 0.005
        batch.append(Attempt(
            task_name=name, task_id=f"{i:032x}", outcome="memory-killed" if killed else "ok",
            started_at=start + i * (30 * 86400 / n), duration=rng.uniform(0.5, 60),
            request=typical[name], limit=typical[name], peak_rss=typical[name] if killed else peak,
            input_size=size, mode="watchdog", worker_host=f"w{i % 4}@bench", worker_pid=1000 + i % 4,
        ))
        if len(batch) == 10_000:
            store.add(batch)
            batch = []
    if batch:
        store.add(batch)
    store.close()
    return time.monotonic() - began


def timed(cmd: list[str]) -> dict:
    """Wall time and peak RSS of one subprocess (its own rusage, from wait4)."""
    began = time.monotonic()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err.seek(0)
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read().decode()[-3000:]}")
    return {"seconds": round(took, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="oomless-history-bench-"))
    result: dict = {"versions": versions()}

    if not args.skip_throughput:
        broker = broker_url()
        table = variants(f"sqlite:///{tmp / 'throughput.sqlite'}")
        rates: dict[str, list[float]] = {v: [] for v in table}
        for rnd in range(args.rounds):
            order = list(table) if rnd % 2 == 0 else list(reversed(table))
            for variant in order:
                rate = throughput(broker, variant, args.tasks, args.concurrency, tmp, table).rate
                rates[variant].append(rate)
                print(f"round {rnd + 1}: {variant:16s} {rate:8.0f} tasks/s", flush=True)
        med = {v: statistics.median(r) for v, r in rates.items()}
        print(f"\n{'variant':16s} {'median tasks/s':>15s} {'vs vanilla':>11s} {'vs governed':>12s}")
        for v in table:
            print(f"{v:16s} {med[v]:15.0f} {med[v] / med['vanilla']:11.3f} {med[v] / med['governed']:12.3f}")
        result["throughput"] = {
            "tasks": args.tasks, "rounds": args.rounds, "concurrency": args.concurrency,
            "median_tasks_per_s": {v: round(m, 1) for v, m in med.items()},
            "ratio_vs_governed": {v: round(med[v] / med["governed"], 3) for v in table},
            "ratio_vs_vanilla": {v: round(med[v] / med["vanilla"], 3) for v in table},
            "all_tasks_per_s": {v: [round(x, 1) for x in r] for v, r in rates.items()},
        }

    url = f"sqlite:///{tmp / 'million.sqlite'}"
    print(f"\nfilling {url} with {args.attempts:,} attempts ...", flush=True)
    result["fill_seconds"] = round(fill(url, args.attempts), 1)
    oomless = [sys.executable, "-m", "oomless.cli"]
    report = timed([*oomless, "report", "--history", url, "-o", str(tmp / "report.html")])
    report["html_mib"] = round((tmp / "report.html").stat().st_size / MiB, 2)
    recommend = timed([*oomless, "recommend", "--history", url, "--format", "json"])
    result.update(attempts=args.attempts, report=report, recommend=recommend)
    print(f"report over {args.attempts:,} attempts: {report['seconds']} s, peak RSS {report['peak_rss_mib']} MiB, "
          f"{report['html_mib']} MiB of HTML")
    print(f"recommend over {args.attempts:,} attempts: {recommend['seconds']} s, peak RSS "
          f"{recommend['peak_rss_mib']} MiB")
    emit("history", result)
    (tmp / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
