"""Airflow benchmark: one DAG of mixed memory tasks on one Celery worker inside a 6 GiB cgroup.

Stock CeleryExecutor and worker (worker_concurrency 16, Airflow's defaults)
against oomless (same worker_concurrency, the tasks' memory declared with
``oomless.airflow.memory``), in the same run, each on a fresh Airflow
deployment (api-server, scheduler, dag-processor on SQLite; Redis broker).
The DAG (bench/airflow_dags/bench_memory_mix.py): 16 × 128 MiB for 3 s,
8 × 768 MiB for 5 s, 3 × 2 GiB for 6 s, 2 × 1.5 GiB declared 1 GiB (escalate
× 2); every task has 3 retries.

Reported per engine: DAG run time, task instances succeeded/failed, tries
killed by the kernel (the cgroup's ``oom_kill`` counter), tries killed by
oomless, and worker restarts (the worker's main process died and was started
again, as systemd would).  Run as root on a host with a writable cgroup v1
memory controller::

    .venv/bin/python bench/airflow_dag.py --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "airflow"))

from common import emit, versions  # noqa: E402
from packing import Cgroup  # noqa: E402
from stack import Stack  # noqa: E402

from oomless.units import format_size, parse_size  # noqa: E402

DAG = "bench_memory_mix"


def run(engine: str, limit: int, cap: float, out: Path, redis_url: str) -> dict:
    cgroup = Cgroup(limit)
    home = out / f"airflow-{engine}-{int(time.time())}"
    stack = Stack(
        home, redis_url, dags=HERE / "airflow_dags", oomless=engine == "oomless",
        env={"AIRFLOW__CELERY__WORKER_CONCURRENCY": "16", "AIRFLOW__CORE__PARALLELISM": "64",
             "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "64"},
        worker_preexec=cgroup.join,
    )
    restarts = 0
    stopping = threading.Event()

    def supervise() -> None:  # restart the worker when its main process dies, and count it
        nonlocal restarts
        while not stopping.wait(0.5):
            proc = stack.procs.get("worker")
            if proc is not None and proc.poll() is not None:
                restarts += 1
                stack.start_worker()

    try:
        stack.start()
        stack.wait_for("worker", "ready.", 180)
        stack.wait_dag(DAG, 180)
        watcher = threading.Thread(target=supervise, daemon=True)
        watcher.start()
        run_id = stack.trigger(DAG)
        started = time.monotonic()
        finished = True
        try:
            stack.wait_run(DAG, run_id, cap)
        except TimeoutError:
            finished = False
        took = time.monotonic() - started
        stopping.set()
        states: dict[str, int] = {}
        tries = 0
        for ti in stack.api("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]:
            states[ti["state"] or "none"] = states.get(ti["state"] or "none", 0) + 1
            tries += ti["try_number"]
        worker_log = stack.text("worker")
        return {
            "engine": engine,
            "finished": finished,
            "run_s": round(took, 1),
            "succeeded": states.get("success", 0),
            "failed": states.get("failed", 0) + states.get("upstream_failed", 0),
            "other": sum(v for k, v in states.items() if k not in ("success", "failed", "upstream_failed")),
            "tries": tries,
            "kernel_oom_kills": cgroup.oom_kills(),
            "oomless_kills": worker_log.count("killed at its memory limit"),
            "worker_restarts": restarts,
        }
    finally:
        stopping.set()
        stack.stop()
        cgroup.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cgroup", default="6GiB", help="memory limit of the worker's cgroup")
    ap.add_argument("--cap", type=float, default=420, help="seconds before a DAG run is given up")
    ap.add_argument("--out", default="/tmp/oomless-bench-airflow")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    redis_url = "redis://127.0.0.1:6379"
    limit = parse_size(args.cgroup)
    results: dict[str, list[dict]] = {"stock": [], "oomless": []}
    for n in range(args.rounds):
        for engine in ("stock", "oomless") if n % 2 == 0 else ("oomless", "stock"):
            r = run(engine, limit, args.cap, out, redis_url)
            results[engine].append(r)
            print(r, flush=True)
    print(f"\nOne Airflow Celery worker (worker_concurrency 16) in a {format_size(limit)} cgroup; "
          f"{args.rounds} round(s), medians")
    print(f"{'engine':8} {'run s':>7} {'ok':>4} {'failed':>6} {'tries':>5} {'kernel OOM':>10} "
          f"{'oomless kills':>13} {'worker restarts':>15}")
    summary = {}
    for engine, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in
               ("run_s", "succeeded", "failed", "tries", "kernel_oom_kills", "oomless_kills", "worker_restarts")}
        capped = "" if all(r["finished"] for r in rs) else " (capped)"
        print(f"{engine:8} {med['run_s']:>7.1f}{capped} {med['succeeded']:>4g} {med['failed']:>6g} "
              f"{med['tries']:>5g} {med['kernel_oom_kills']:>10g} {med['oomless_kills']:>13g} "
              f"{med['worker_restarts']:>15g}")
        summary[engine] = {"median": med, "runs": rs}
    stock, ours = summary["stock"]["median"], summary["oomless"]["median"]
    if stock["run_s"]:
        print(f"oomless / stock run time: {ours['run_s'] / stock['run_s']:.2f}")
    emit("airflow_dag", {"cgroup": limit, "versions": versions(), **summary})


if __name__ == "__main__":
    main()
