"""Where a governed worker's CPU goes, measured in place: per task, per step, in the main process
and the pool children, beside a vanilla worker running at the same time.

    .venv/bin/python bench/inplace.py [--seconds 10] [--rounds 3] [--variants vanilla,cgroup,watchdog]

A variant ``cgroup@/tmp/old/src`` runs the oomless of another checkout (``git worktree add``) in that
mode, beside this one's: a change measured before and after in one run.

cProfile (bench/profile_steps.py) charges every Python call about a microsecond, so its figures
are inflated and spread unevenly; timed one by one in a loop (bench/micro.py) the steps run with
warm caches and cost a third to a fifth of what they cost between a task's other work.  Here the
worker runs as usual and a probe (``bench/inplace/sitecustomize.py``, on ``PYTHONPATH`` for this
benchmark only) wraps a few named functions with thread-CPU timers, each step's time *exclusive* of
the other timed steps it calls.  The same Celery functions are timed in the vanilla worker.

Each round starts one worker per variant (-c 2, Celery's defaults, no-op tasks from a pre-filled
queue of their own), lets them warm up for 3 s, and reads over ``--seconds``:

* user and system CPU per task of the main process (and how much of it its threads other than the
  main one took: the watchdog monitor) and of the pool children (``/proc/PID/stat``);
* the steps' µs per task (the probe's sums, from its last write).
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psutil
from common import HERE, broker_url, emit, start_worker, versions
from overhead import VARIANTS, _client, _prefill

#: The pool child's steps: oomless's signal handlers and the filter that puts the memory on Celery's
#: line; inside them, the enforcer's start and end of a task (exclusive of the rest).
CHILD_STEPS = [
    "oomless.celery.install:on_task_prerun",  # the names the signals were connected with
    "oomless.celery.install:on_task_postrun",
    "oomless.celery.child:TaskLine.filter",
    "oomless.enforce.base:Enforcer.task_start",
    "oomless.enforce.base:Enforcer.task_end",
    "oomless.enforce.base:Enforcer.task_peak",
    "oomless.enforce.base:Enforcer.clear_leftovers",
    "oomless.celery.events:figures",
    # the system calls, each with the little Python around it: a slot's cgroup files (cgroup mode),
    # the child's own /proc files and rusage (watchdog mode), the leftover-children check
    "oomless.linux.cgroup.slots:SlotGroups._set",
    "oomless.linux.cgroup.slots:SlotGroups._get",
    "oomless.linux.proc.memory:OwnMemory.reset_peak",
    "oomless.linux.proc.memory:OwnMemory.peak",
    "oomless.linux.proc.memory:OwnMemory.rss",
    "oomless.linux.proc.tree:OwnChildren.any",
]
#: The main process's: Celery's request and hand-over to the pool (both workers), oomless's request
#: subclass, gate and governor.
MAIN_STEPS = [
    "celery.worker.request:Request.__init__",
    "celery.worker.request:Request.acknowledge",
    "billiard.pool:Pool.apply_async",
    "kombu.asynchronous.semaphore:LaxBoundedSemaphore.acquire",
    "kombu.asynchronous.semaphore:LaxBoundedSemaphore.release",
    "oomless.celery.request:GovernedRequest.__init__",
    "oomless.celery.gate:MemoryGate.acquire",
    "oomless.celery.gate:MemoryGate.release",
    "oomless.celery.gate:MemoryGate.finish",
    "oomless.celery.governor:Governor.finished",
]
_CLK = 100.0


def _cpu(pid: int, tid: int | None = None) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK, int(fields[12]) / _CLK


def _main_thread(pid: int) -> float:
    """User and system CPU seconds of the main process's main thread (the rest of the process: its
    other threads, the watchdog monitor among them)."""
    return sum(_cpu(pid, pid))


def _probe(out: Path, label: str) -> dict[str, tuple[int, int, dict[str, int]]]:
    """The probe's last sums per role of worker ``label``: (tasks, thread CPU ns, {step: ns})."""
    error = out / f"{label}.error"
    if error.exists():
        raise RuntimeError(f"the probe failed in {label}:\n{error.read_text()}")
    sums: dict[str, list] = {}
    for path in out.glob(f"{label}.*.*"):
        role = path.name.split(".")[1]
        tasks, cpu, steps = ast.literal_eval(path.read_text())
        got = sums.setdefault(role, [0, 0, defaultdict(int)])
        got[0] += tasks
        got[1] += cpu
        for step, ns in steps.items():
            got[2][step] += ns
    return {role: (t, c, dict(s)) for role, (t, c, s) in sums.items()}


def _label(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def one_round(broker: str, names: list[str], seconds: float, tmp: Path) -> dict[str, dict]:
    r = _client(broker)
    out = tmp / f"probe-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    queues = [f"bench-{uuid.uuid4().hex[:8]}" for _ in names]
    keys = [f"bench-count-{uuid.uuid4().hex[:8]}" for _ in names]
    for queue, key in zip(queues, keys, strict=True):
        _prefill(broker, queue, key, 20000 + int(2000 * seconds))
    workers = []
    try:
        for name, queue in zip(names, queues, strict=True):
            variant, _, tree = name.partition("@")  # "cgroup@/tmp/old/src": another checkout's oomless
            env = dict(VARIANTS[variant], OOMLESS_BENCH_BROKER=broker, OOMLESS_BENCH_QUEUE=queue,
                       OOMLESS_INPLACE_OUT=str(out / _label(name)),
                       OOMLESS_INPLACE_WRAP=",".join(CHILD_STEPS + MAIN_STEPS),
                       PYTHONPATH=os.pathsep.join(filter(None, [tree, str(HERE / "inplace")])))
            workers.append(start_worker("noop_app", env, ["-c", "2", "-Q", queue], tmp / f"{_label(name)}-{queue}.log"))
        time.sleep(3)
        kids = [[c.pid for c in psutil.Process(w.pid).children()] for w in workers]

        def sample() -> tuple[list[int], list[list[tuple[float, float]]]]:
            done = [int(x or 0) for x in r.mget(keys)]
            return done, [[_cpu(w.pid), (_main_thread(w.pid), 0.0)] + [_cpu(k) for k in ks]
                          for w, ks in zip(workers, kids, strict=True)]

        d0, c0 = sample()
        time.sleep(seconds)
        d1, c1 = sample()
        result = {}
        for i, name in enumerate(names):
            n = max(1, d1[i] - d0[i])
            main = [(b - a) * 1e6 / n for a, b in zip(c0[i][0], c1[i][0], strict=True)]
            thread = (c1[i][1][0] - c0[i][1][0]) * 1e6 / n
            pool = [sum(c1[i][j][k] - c0[i][j][k] for j in range(2, len(c0[i]))) * 1e6 / n for k in (0, 1)]
            probe = _probe(out, _label(name))
            result[name] = {
                "rate": n / seconds,
                "main_user_us": main[0], "main_sys_us": main[1], "main_other_threads_us": sum(main) - thread,
                "children_user_us": pool[0], "children_sys_us": pool[1],
                "steps": {role: {step: ns / 1000 / t for step, ns in steps.items()} | {"thread CPU": cpu / 1000 / t}
                          for role, (t, cpu, steps) in probe.items()},
            }
        return result
    finally:
        for worker in workers:
            worker.stop(2)
        r.delete(*keys, *queues)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="vanilla,cgroup,watchdog")
    args = parser.parse_args()
    names = args.variants.split(",")
    if names[0] != "vanilla":
        names.insert(0, "vanilla")
    broker = broker_url()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="oomless-inplace-") as tmp:
        for i in range(args.rounds):
            rounds.append(one_round(broker, names[i % len(names):] + names[: i % len(names)], args.seconds, Path(tmp)))
    med = statistics.median
    width = max(10, *map(len, names))
    print(f"{'variant':{width}s} {'tasks/s':>8s} {'main user':>10s} {'main sys':>9s} {'of which threads':>17s} "
          f"{'pool user':>10s} {'pool sys':>9s}")
    summary = {}
    for name in names:
        fig = {k: med(r[name][k] for r in rounds) for k in rounds[0][name] if k != "steps"}
        steps = {}
        for role in ("main", "child"):
            keys = {s for r in rounds for s in r[name]["steps"].get(role, {})}
            steps[role] = {s: med(r[name]["steps"].get(role, {}).get(s, 0.0) for r in rounds) for s in sorted(keys)}
        summary[name] = {**fig, "steps": steps}
        print(f"{name:{width}s} {fig['rate']:8.0f} {fig['main_user_us']:10.0f} {fig['main_sys_us']:9.0f} "
              f"{fig['main_other_threads_us']:17.0f} "
              f"{fig['children_user_us']:10.0f} {fig['children_sys_us']:9.0f}")
    for role in ("main", "child"):
        print(f"\n{role}: µs per task, exclusive, median of {args.rounds} rounds")
        keys = sorted({s for name in names for s in summary[name]["steps"][role]})
        print(f"{'step':34s}" + "".join(f"{name:>{width + 1}s}" for name in names))
        for step in keys:
            print(f"{step:34s}" + "".join(f"{summary[n]['steps'][role].get(step, 0.0):{width + 1}.1f}" for n in names))
    emit("inplace", {"rounds": args.rounds, "seconds": args.seconds, "summary": summary, **versions()})


if __name__ == "__main__":
    main()
