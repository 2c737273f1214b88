"""Packing benchmark: a mixed memory workload on one worker inside a 6 GiB cgroup.

Engines, alternating, ``--rounds`` times each, in the same invocation:

* ``oomless``: governed worker, ``--concurrency`` as a ceiling, default
  oomless settings apart from the budget;
* ``vanilla-safe``: vanilla Celery prefork at ⌊budget / largest task⌋;
* ``vanilla-same``: vanilla Celery prefork at oomless's concurrency.

All three with ``task_acks_late`` and ``task_reject_on_worker_lost`` as
Airflow's CeleryExecutor sets them.  The worker runs inside a fresh cgroup v1
memory group limited to ``--cgroup`` (the client stays outside); a supervisor
restarts the worker's main process if it dies, as systemd would, and counts
it.  A run ends when every task has a final state, or at ``--cap`` seconds.

LB = Σ(size × hold) / budget over the well-behaved tasks: no packing can
finish them sooner.  Makespan = last well-behaved task done − submission.
Each run also reports makespan over two other bounds: over the durations the
tasks really took (``makespan_lb_held``: allocating and freeing GiBs on 2 cores
stretches a hold by a few %), and, with ``--budget auto``, over the budget the
worker measured for itself at the end (``makespan_lb_own``).

Run as root on a host with a writable cgroup v1 memory controller:
``.venv/bin/python bench/packing.py`` (about 25 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import timezone
from pathlib import Path

from celery import Celery
from common import HERE, broker_url, emit, versions

import oomless
from oomless.units import format_size, parse_size

MiB, GiB = 2**20, 2**30
CG_ROOT = "/sys/fs/cgroup/memory"
#: the governor's eviction warning: what the task used, against its request
EVICTED = re.compile(
    r"evicting \S+ for node memory pressure: .*?; it uses ([\d.]+ \w+) against a request of ([\d.]+ \w+)"
)
#: the budget line: "oomless: budget X = ..." (auto, once the pool is up), else the start-up line
BUDGET_LINE = re.compile(r"oomless: (?:governing \d+ slots; )?budget ([\d.]+ \w+)(?: =|;| \()")

#: (count, size, hold seconds): many small, some medium, a few of over a third of the budget.
WORKLOAD = [(60, 128 * MiB, 2.0), (30, 512 * MiB, 3.0), (12, 2 * GiB, 4.0)]
RUNAWAYS = 2
RUNAWAY_DECLARED = 512 * MiB


#: ``--workload stranger`` (issue 14): what a new user declares, not what the benchmark was tuned on:
#: sizes spread evenly over 256 MiB–2.5 GiB, request = what the task uses, limit = request + 128 MiB.
STRANGER = (80, 256 * MiB, int(2.5 * GiB), 2.0, 5.0)
STRANGER_LIMIT_SLACK = 128 * MiB


def tasks(seed: int, workload: str = "default") -> list[tuple[str, int, float]]:
    """The workload in submission order: ("work", size, hold) and ("runaway", 0, 0)."""
    rng = random.Random(seed)
    if workload == "stranger":
        count, low, high, short, long = STRANGER
        sizes = [low, high] + [rng.randrange(low, high, MiB) for _ in range(count - 2)]  # both ends included
        items = [("work", size, round(rng.uniform(short, long), 1)) for size in sizes]
    else:
        items = [("work", size, hold) for count, size, hold in WORKLOAD for _ in range(count)]
    items += [("runaway", 0, 0.0)] * RUNAWAYS
    rng.shuffle(items)
    return items


class Cgroup:
    """A v1 memory cgroup for one run; removed (with anything left in it) on close."""

    def __init__(self, limit: int) -> None:
        self.path = os.path.join(CG_ROOT, f"oomless-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        os.mkdir(self.path)
        with open(os.path.join(self.path, "memory.limit_in_bytes"), "w") as fh:
            fh.write(str(limit))

    def join(self) -> None:  # preexec_fn of the worker
        with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))

    def oom_kills(self) -> int:
        """Kernel OOM kills in this group and every group below it."""
        total = 0
        for folder, _, _ in os.walk(self.path):
            try:
                with open(os.path.join(folder, "memory.oom_control")) as fh:
                    for line in fh:
                        if line.startswith("oom_kill "):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def close(self) -> None:
        for _ in range(100):
            folders = sorted((f for f, _, _ in os.walk(self.path)), key=len, reverse=True)
            for folder in folders:
                try:
                    with open(os.path.join(folder, "cgroup.procs")) as fh:
                        for pid in fh.read().split():
                            try:
                                os.kill(int(pid), signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    os.rmdir(folder)
                except OSError:
                    pass
            if not os.path.exists(self.path):
                return
            time.sleep(0.1)
        print(f"warning: could not remove {self.path}", file=sys.stderr)


class Supervised:
    """The worker, restarted if its main process dies (counted)."""

    def __init__(self, cmd: list[str], env: dict, log: Path, cgroup: Cgroup) -> None:
        self.cmd, self.env, self.log, self.cgroup = cmd, env, log, cgroup
        self.deaths = 0
        self._stopping = False
        self._start()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self) -> None:
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(
                self.cmd, cwd=HERE, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=self.cgroup.join,
            )

    def _watch(self) -> None:
        while not self._stopping:
            if self.proc.poll() is not None and not self._stopping:
                self.deaths += 1
                self._start()
            time.sleep(0.2)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "ready." not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(5)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def run(
    engine: str, concurrency: int, budget: int | None, cgroup_limit: int, cap: float, seed: int, out: Path,
    workload: str = "default",
) -> dict:
    broker = broker_url()
    queue = f"pack-{engine}-{uuid.uuid4().hex[:6]}"
    governed = engine == "oomless"
    env = dict(
        os.environ,
        PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        OOMLESS_BENCH_BROKER=broker,
        OOMLESS_BENCH_QUEUE=queue,
        OOMLESS_BENCH_GOVERNED="1" if governed else "0",
    )
    cmd = [sys.executable, "-m", "celery", "-A", "pack_app", "worker", "-l", "info", "-c", str(concurrency),
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{queue}@%h"]
    if governed and budget is not None:
        cmd += ["--memory-budget", str(budget)]
    client = Celery("client", broker=broker, backend=broker)
    client.conf.update(task_default_queue=queue, result_expires=3600)
    oomless.install(client)  # moves memory= into the message header
    cgroup = Cgroup(cgroup_limit)
    log = out / f"{queue}.log"
    worker = Supervised(cmd, env, log, cgroup)
    try:
        worker.wait_ready()
        items = tasks(seed, workload)
        submitted = time.time()
        results = []
        for kind, size, hold in items:
            opts = {"queue": queue}
            if kind == "work":
                if governed:
                    slack = STRANGER_LIMIT_SLACK if workload == "stranger" else 0
                    opts["memory"] = oomless.Memory(request=size, limit=size + slack)
                results.append((kind, size, hold, client.send_task("pack.work", (size, hold), **opts)))
            else:
                if governed:
                    opts["memory"] = RUNAWAY_DECLARED
                results.append((kind, size, hold, client.send_task("pack.runaway", (), **opts)))
        deadline = submitted + cap
        while time.time() < deadline and not all(r.ready() for *_, r in results):
            time.sleep(0.5)
        ended = time.time()
        oom_kills = cgroup.oom_kills()
        import redis

        counter = redis.Redis.from_url(broker)
        ok = failed = lost = 0
        last_done = submitted
        runaway_attempts, runaway_outcomes = [], []
        timeline: list[tuple[float, float, int, str]] = []  # (start, end, size, id) of each ok task
        for kind, size, _, r in results:
            attempts = int(counter.get(f"pack:attempts:{r.id}") or 0)
            state = r.state
            if kind == "runaway":
                runaway_attempts.append(attempts)
                runaway_outcomes.append(_outcome(r))
                continue
            if state == "SUCCESS":
                ok += 1
                meta = r._get_task_meta()
                done = meta.get("date_done")
                if done is not None:
                    if isinstance(done, str):
                        from datetime import datetime

                        done = datetime.fromisoformat(done)
                    end = done.replace(tzinfo=timezone.utc).timestamp()
                    last_done = max(last_done, end)
                    timeline.append((round(end - meta["result"] - submitted, 3), round(end - submitted, 3), size, r.id))
            elif state == "FAILURE":
                failed += 1
            else:
                lost += 1
        well = sum(1 for kind, *_ in items if kind == "work")
        makespan = (last_done - submitted) if ok == well else (ended - submitted)
        text = log.read_text(errors="replace")
        children_killed = text.count("exited with 'signal 9 (SIGKILL)'")
        evicted = [(parse_size(u.replace(" ", "")), parse_size(r.replace(" ", ""))) for u, r in EVICTED.findall(text)]
        announced = BUDGET_LINE.findall(text)  # auto: the budget moves with the worker's footprint
        re_executions = sum(max(0, int(counter.get(f"pack:attempts:{r.id}") or 0) - 1)
                            for kind, *_, r in results if kind == "work")
        (out / f"{queue}.timeline.json").write_text(json.dumps(sorted(timeline)))
        for *_, r in results:
            counter.delete(f"pack:attempts:{r.id}")
            r.forget()
        return {
            "engine": engine,
            "concurrency": concurrency,
            "makespan_s": round(makespan, 2),
            "complete": ok == well,
            "ok": ok,
            "failed": failed,
            "lost": lost,
            "oom_kills": oom_kills,
            "worker_deaths": worker.deaths,
            "pool_children_killed": children_killed,
            "runaway_attempts": runaway_attempts,
            "runaway_outcomes": runaway_outcomes,
            "evictions": text.count("evicted for node memory pressure ("),
            "evictions_within_request": sum(1 for used, request in evicted if used <= request),
            "re_executions": re_executions,
            "budget": parse_size(announced[-1].replace(" ", "")) if announced else budget,
            "budget_low": min((parse_size(b.replace(" ", "")) for b in announced), default=budget),
            # Σ(size × the duration the task really took: allocating and freeing on 2 cores stretch its hold)
            "held_gib_s": round(sum(size * (end - start) for start, end, size, _ in timeline) / GiB, 1),
            "given_back": text.count(" back to the broker after "),
        }
    finally:
        worker.stop()
        cgroup.close()
        client.connection_for_write().channel().queue_delete(queue)
        client.close()


def _outcome(r) -> str:
    if r.state == "FAILURE":
        return type(r.result).__name__ if isinstance(r.result, BaseException) else "FAILURE"
    return r.state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cap", type=float, default=200.0, help="seconds a run may take")
    ap.add_argument("--budget", default="5GiB",
                    help="oomless's budget (and the base of the safe concurrency); 'auto': left to oomless, "
                         "as a user leaves it (LB and safe concurrency then use the cgroup limit - 512 MiB)")
    ap.add_argument("--cgroup", default="6GiB", help="memory limit of the worker's cgroup")
    ap.add_argument("--concurrency", default="16",
                    help="oomless's pool size (a ceiling); 'auto': cgroup limit / smallest task")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--engines", default="oomless,vanilla-safe,vanilla-same")
    ap.add_argument("--workload", choices=("default", "stranger"), default="default",
                    help="stranger: 80 tasks of 256 MiB-2.5 GiB, limit = request + 128 MiB (issue 14)")
    args = ap.parse_args()
    limit = parse_size(args.cgroup)
    auto = args.budget.strip().lower() == "auto"
    budget = limit - 512 * MiB if auto else parse_size(args.budget)
    items = tasks(args.seed, args.workload)
    well = [(size, hold) for kind, size, hold in items if kind == "work"]
    largest, smallest = max(size for size, _ in well), min(size for size, _ in well)
    safe = max(1, budget // largest)
    # auto: as many slots as the smallest task fits in the worker's memory (a user's "high --concurrency")
    ceiling = limit // smallest if args.concurrency == "auto" else int(args.concurrency)
    area = sum(size * hold for size, hold in well)
    lb = area / budget
    out = Path(os.environ.get("OOMLESS_BENCH_OUT", "/tmp")) / f"oomless-packing-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    conc = {"oomless": ceiling, "vanilla-safe": safe, "vanilla-same": ceiling}
    engines = args.engines.split(",")
    print(f"workload {args.workload}: {len(well)} well-behaved tasks of {format_size(smallest)}-{format_size(largest)} "
          f"+ {RUNAWAYS} runaways declaring {format_size(RUNAWAY_DECLARED)}; budget "
          f"{'auto' if auto else format_size(budget)} in a {format_size(limit)} cgroup; "
          f"LB {lb:.1f} s (over {format_size(budget)}); safe concurrency {safe}; logs in {out}", flush=True)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for rnd in range(args.rounds):
        for engine in engines:
            res = run(engine, conc[engine], None if auto else budget, limit, args.cap, args.seed, out, args.workload)
            res["makespan_lb"] = round(res["makespan_s"] / lb, 2)
            if res["complete"]:  # the same ratio over the durations the tasks really took (a lower bound too)
                res["makespan_lb_held"] = round(res["makespan_s"] / (res["held_gib_s"] * GiB / budget), 2)
                if auto and res["budget"]:  # and over the budget the worker itself measured at the end
                    res["makespan_lb_own"] = round(res["makespan_s"] / (area / res["budget"]), 2)
            runs[engine].append(res)
            print(f"round {rnd + 1} {engine}: {res}", flush=True)
    print()
    print(f"{'engine':13} {'conc':>4} {'makespan/LB':>20} {'ok/failed/lost':>16} {'OOM kills':>10} "
          f"{'worker deaths':>13} {'children killed':>15} {'runaway attempts':>17} {'evicted in req.':>15} "
          f"{'re-runs':>9}")
    summary = {}
    for engine, rs in runs.items():
        def med(key: str, rs: list[dict] = rs) -> str:
            vals = [r[key] for r in rs]
            return f"{statistics.median(vals):g} ({min(vals):g}–{max(vals):g})"

        ratio = [r["makespan_lb"] for r in rs]
        capped = "" if all(r["complete"] for r in rs) else " *"
        okfl = "/".join(str(statistics.median([r[k] for r in rs])) for k in ("ok", "failed", "lost"))
        attempts = [a for r in rs for a in r["runaway_attempts"]]
        print(f"{engine:13} {conc[engine]:>4} {med('makespan_lb'):>18}{capped:2} {okfl:>16} {med('oom_kills'):>10} "
              f"{med('worker_deaths'):>13} {med('pool_children_killed'):>15} "
              + f"{statistics.median(attempts):g} ({min(attempts)}–{max(attempts)})".rjust(18)
              + f" {med('evictions_within_request'):>15} {med('re_executions'):>9}")
        summary[engine] = {"makespan_lb_median": statistics.median(ratio), "runs": rs}
    if "oomless" in runs and "vanilla-safe" in runs:
        o = statistics.median(r["makespan_s"] for r in runs["oomless"])
        v = statistics.median(r["makespan_s"] for r in runs["vanilla-safe"])
        print(f"\noomless makespan / safe vanilla makespan: {o / v:.2f}  (* = some runs hit the {args.cap:g} s cap: "
              f"makespan is then the cap)")
        summary["oomless_vs_safe"] = round(o / v, 3)
    emit("packing", {"lb_s": round(lb, 2), "budget": budget, "cgroup": limit, "versions": versions(), **summary})


if __name__ == "__main__":
    main()
