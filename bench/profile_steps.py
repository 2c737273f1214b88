"""Where a governed worker's CPU goes per no-op task, step by step, beside vanilla Celery.

    .venv/bin/python bench/profile_steps.py [--tasks 6000] [--variants vanilla,cgroup,watchdog]

Each variant runs one worker (-c 2, the no-op app of bench/overhead.py) with
cProfile on its main thread (from ``worker_ready`` to shutdown) and on each
pool child, timed in thread CPU time (so idle waits and a loaded machine do
not count).  Every function of oomless, and every call oomless makes into the
standard library (logging, formatting) or into kombu's QoS, is charged to one
step below; calls oomless makes back into Celery, billiard or kombu (the task's
own start, Celery's ``on_success``) are Celery's own work, which vanilla does
too.  Figures are µs of profiled CPU per task: cProfile inflates every call,
so compare them with each other and with the ``all`` row (the thread's whole
profiled CPU per task), not with the unprofiled µs of bench/overhead.py.
"""

from __future__ import annotations

import argparse
import glob
import pstats
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

from common import broker_url, emit, start_worker, versions
from overhead import VARIANTS, _client, _prefill

#: (file part, function name or "*") -> step; the first match wins
STEPS = [
    ("oomless/celery/request.py", "GovernedRequest.__init__", "receipt and spec"),
    ("oomless/celery/message_spec.py", "*", "receipt and spec"),
    ("oomless/spec.py", "*", "receipt and spec"),
    ("oomless/celery/republish.py", "*", "receipt and spec"),
    ("oomless/celery/fetch.py", "*", "fetch control"),
    ("oomless/celery/gate.py", "MemoryGate.acknowledged", "fetch control"),
    ("oomless/celery/request.py", "_acknowledged", "fetch control"),
    ("oomless/celery/gate.py", "*", "gate acquire/finish"),
    ("oomless/celery/governor.py", "Governor.release", "gate acquire/finish"),
    ("oomless/admission/queue.py", "Admission.describe", "gate acquire/finish"),
    ("oomless/admission/", "*", "ledger"),
    ("oomless/celery/governor.py", "Governor.on_kill_notice", "kill-notice pipe"),
    ("oomless/enforce/reports.py", "*", "kill-notice pipe"),
    ("oomless/celery/governor.py", "Governor.finished", "event and log"),
    ("oomless/celery/ends.py", "*", "event and log"),
    ("oomless/celery/events.py", "*", "event and log"),
    ("oomless/celery/request.py", "*", "request subclass overrides"),
    ("oomless/celery/compat.py", "*", "request subclass overrides"),
    ("oomless/celery/child.py", "*", "child: arm/disarm around the task"),
    ("oomless/enforce/slots.py", "*", "child: slot table writes"),
    ("oomless/enforce/", "*", "child: measure and limit"),
    ("oomless/linux/", "*", "child: measure and limit"),
    ("oomless/", "*", "other oomless"),
]
#: callees outside oomless that count as oomless's cost when oomless calls them
CHARGED_CALLEES = ("logging/", "kombu/common.py", "string", "{built-in method builtins", "{method 'format'")


def step_of(filename: str, func: str) -> str | None:
    for part, name, step in STEPS:
        if part in filename and (name == "*" or name == func):
            return step
    return None


def breakdown(prof_path: str) -> tuple[dict[str, float], float]:
    """Profiled CPU seconds per step, and the thread's whole profiled CPU."""
    stats = pstats.Stats(prof_path).stats  # type: ignore[attr-defined]
    steps: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _, func), (_, _, tt, _, callers) in stats.items():
        total += tt
        step = step_of(filename, func)
        if step is not None:
            steps[step] += tt
            continue
        # Time of a non-oomless function, charged to the oomless caller's step where it is a helper.
        if not any(c in filename or c in func for c in CHARGED_CALLEES):
            continue
        for (cfile, _, cfunc), (_, _, _, cct) in callers.items():
            cstep = step_of(cfile, cfunc)
            if cstep is not None:
                steps["event and log" if "logging" in filename else cstep] += cct
    return steps, total


def run(broker: str, variant: str, n: int, concurrency: int, tmp: Path) -> dict:
    out = tmp / variant
    out.mkdir()
    queue, key = f"bench-{uuid.uuid4().hex[:8]}", f"bench-count-{uuid.uuid4().hex[:8]}"
    r = _client(broker)
    _prefill(broker, queue, key, n)
    env = dict(VARIANTS[variant], OOMLESS_BENCH_BROKER=broker, OOMLESS_BENCH_QUEUE=queue,
               OOMLESS_BENCH_PROFILE=str(out))
    worker = start_worker("noop_app", env, ["-c", str(concurrency), "-Q", queue], tmp / f"{variant}.log")
    try:
        deadline = time.monotonic() + 900
        while int(r.get(key) or 0) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        done = int(r.get(key) or 0)
    finally:
        worker.stop()
        r.delete(key, queue)
    roles: dict[str, dict] = {}
    for role in ("main", "child"):
        steps: dict[str, float] = defaultdict(float)
        total = 0.0
        for path in glob.glob(f"{out}/{role}-*.prof"):
            s, t = breakdown(path)
            total += t
            for k, v in s.items():
                steps[k] += v
        roles[role] = {"us_per_task": {k: 1e6 * v / done for k, v in steps.items()}, "all": 1e6 * total / done}
    return {"variant": variant, "tasks": done, **roles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--variants", default="vanilla,cgroup,watchdog")
    args = parser.parse_args()
    broker = broker_url()
    tmp = Path(tempfile.mkdtemp(prefix="oomless-profile-"))
    results = [run(broker, v, args.tasks, args.concurrency, tmp) for v in args.variants.split(",")]
    steps = sorted({k for r in results for role in ("main", "child") for k in r[role]["us_per_task"]})
    for role in ("main", "child"):
        print(f"\n{role} {'thread' if role == 'main' else 'processes'}: profiled CPU µs per task")
        print(f"{'step':38s}" + "".join(f"{r['variant']:>10s}" for r in results))
        for step in steps:
            if any(step in r[role]["us_per_task"] for r in results):
                print(f"{step:38s}" + "".join(f"{r[role]['us_per_task'].get(step, 0):10.1f}" for r in results))
        print(f"{'all (the whole thread)':38s}" + "".join(f"{r[role]['all']:10.1f}" for r in results))
    emit("profile_steps", {"concurrency": args.concurrency, "results": results, "versions": versions()})


if __name__ == "__main__":
    main()
