"""What the claim check costs and saves: round trips of large arguments and results, inline vs by reference.

    .venv/bin/python bench/offload.py [--sizes 1KiB,2MiB,16MiB,64MiB] [--rounds 2]

For each broker (local Redis; RabbitMQ when it runs here), each value size and
three variants — vanilla Celery, oomless without a store (the size guard only,
limit raised to 1 GiB) and oomless with the claim check (a local directory) —
a fresh worker (-c 1) serves N sequential calls of two tasks: one that takes
the value as its argument and returns its length (``arg``), one that returns a
value of that size (``result``).  Reported per case: the median round trip
(send to result in the client) and the growth of the worker's *main* process
peak RSS (VmHWM) over the calls.  Variants alternate order between rounds;
medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import emit, start_worker, versions  # noqa: E402

from oomless.units import format_size, parse_size  # noqa: E402

VARIANTS = ("vanilla", "guard", "claim")
CALLS = {1 << 10: 200, 2 << 20: 30, 16 << 20: 10, 64 << 20: 5}


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_case(broker: str, backend: str, variant: str, size: int, calls: int, tmp: Path) -> dict:
    queue = f"offload-bench-{uuid.uuid4().hex[:8]}"
    store = tmp / f"claims-{queue}"
    env = {"OOMLESS_BENCH_VARIANT": variant, "OOMLESS_BENCH_BROKER": broker, "OOMLESS_BENCH_BACKEND": backend,
           "OOMLESS_BENCH_QUEUE": queue, "OOMLESS_BENCH_STORE": str(store)}
    os.environ.update(env)
    sys.modules.pop("offload_app", None)
    import offload_app  # the client builds the same app as the worker

    app = offload_app.app
    worker = start_worker("offload_app", env, ["-c", "1", "-P", "prefork"], tmp / f"{queue}.log")
    try:
        app.tasks["offload.size"].delay("warm").get(timeout=60)
        app.tasks["offload.make"].delay(10).get(timeout=60)
        base = _hwm(worker.pid)
        value = "a" * size
        arg, res = [], []
        for _ in range(calls):
            t0 = time.perf_counter()
            assert app.tasks["offload.size"].delay(value).get(timeout=300) == size
            arg.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert len(app.tasks["offload.make"].delay(size).get(timeout=300)) == size
            res.append(time.perf_counter() - t0)
        grew = _hwm(worker.pid) - base
    finally:
        worker.stop()
        app.close()
        shutil.rmtree(store, ignore_errors=True)
    return {"arg_s": statistics.median(arg), "result_s": statistics.median(res), "main_grew": grew}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1KiB,2MiB,16MiB,64MiB")
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    sizes = [parse_size(s) for s in opts.sizes.split(",")]
    brokers = {"redis": "redis://127.0.0.1:6379/11"}
    if _reachable(5672):
        brokers["rabbitmq"] = "amqp://guest:guest@127.0.0.1:5672//"
    backend = "redis://127.0.0.1:6379/12"
    tmp = Path(tempfile.mkdtemp(prefix="oomless-offload-bench-"))
    rows = []
    for bname, broker in brokers.items():
        for size in sizes:
            calls = CALLS.get(size, max(3, int(64 / max(size / 2**20, 1))))
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for r in range(opts.rounds):
                order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
                for variant in order:
                    runs[variant].append(run_case(broker, backend, variant, size, calls, tmp))
            med = {v: {k: statistics.median(x[k] for x in runs[v]) for k in runs[v][0]} for v in VARIANTS}
            for variant in VARIANTS:
                m = med[variant]
                row = {"broker": bname, "size": size, "variant": variant, "calls": calls, **m,
                       "arg_vs_vanilla": m["arg_s"] / med["vanilla"]["arg_s"],
                       "result_vs_vanilla": m["result_s"] / med["vanilla"]["result_s"],
                       "arg_vs_guard": m["arg_s"] / med["guard"]["arg_s"],
                       "result_vs_guard": m["result_s"] / med["guard"]["result_s"]}
                rows.append(row)
                emit("offload", row)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nversions: {versions()}\n")
    table(rows)


def table(rows: list[dict]) -> None:
    """The markdown table (``guard`` = oomless without a store: the governor's own cost is in it)."""
    print("| broker | value | variant | round trip, argument | vs vanilla | vs guard | round trip, result "
          "| vs vanilla | vs guard | main process peak growth |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['broker']} | {format_size(r['size'])} | {r['variant']} | {r['arg_s'] * 1000:.1f} ms "
              f"| {r['arg_vs_vanilla']:.2f} | {r['arg_vs_guard']:.2f} | {r['result_s'] * 1000:.1f} ms "
              f"| {r['result_vs_vanilla']:.2f} | {r['result_vs_guard']:.2f} | {format_size(max(r['main_grew'], 0))} |")


if __name__ == "__main__":
    main()
