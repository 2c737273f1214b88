"""Simulate the pure admission logic (``oomless.admission.Admission``) on packing workloads.

No worker, no broker: a discrete-event loop starts and ends tasks as the real
``Admission`` decides, with the gate's give-back (a task that cannot fit and
waited ``give_back_after`` here is handed back and comes straight back, keeping
its age: one worker), and each hold stretched by ``--stretch`` (what allocating
and freeing GiBs on 2 cores adds; 4.7 % in bench/packing.py's stranger runs).
Reports makespan ÷ LB per seed, LB = Σ(size × hold) / the LB budget.

``--queue path/to/queue.py`` runs another version of the admission module
(e.g. a variant being considered) on the same workloads::

    .venv/bin/python bench/admission_sim.py
    .venv/bin/python bench/admission_sim.py --queue /tmp/variant.py
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import random
import sys
from pathlib import Path

from packing import tasks

MiB, GiB = 2**20, 2**30
SRC = Path(__file__).resolve().parent.parent / "src" / "oomless" / "admission" / "queue.py"


def simulate(admission, items, budget, slots, stretch, window=60.0, give_back=30.0):
    """Makespan of ``items`` (("work", size, hold), …, in arrival order) on one worker."""
    adm = admission(budget, slots, window, give_back)
    work = [(i, size, hold) for i, (kind, size, hold) in enumerate(items) if kind == "work"]
    duration = {i: hold * stretch for i, _, hold in work}
    size = {i: s for i, s, _ in work}
    events: list[tuple[float, int, str, int | None]] = []
    seq = 0

    def push(at, what, key):
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, what, key))

    for n, (i, _, _) in enumerate(work):
        push(n * 0.005, "arrive", i)  # the client sends them about as fast as this
    for tick in range(1, 2000):
        push(float(tick), "tick", None)  # the gate's once-a-second look
    done, last = 0, 0.0
    while events and done < len(work):
        now, _, what, key = heapq.heappop(events)
        if what == "arrive":
            started = adm.submit(key, size[key], now, kind=("work", size[key]))
        elif what == "end":
            done, last = done + 1, now
            started = adm.finish(key, now)
        else:
            started = []
            for w in adm.overdue(now):
                adm.forget(w.key)
                started += adm.submit(w.key, w.request, now, waited=now - w.since, kind=w.kind)
        for k in started:
            push(now + duration[k], "end", k)
    return last


def synthetic(name: str, seed: int) -> list[tuple[str, int, float]]:
    """Workloads nothing was tuned on (besides bench/packing.py's own)."""
    rng = random.Random(seed)
    if name == "lognormal":
        items = [("work", min(int(rng.lognormvariate(0, 1) * 300 * MiB), 5 * GiB), round(rng.uniform(1, 10), 1))
                 for _ in range(100)]
    elif name == "twokinds":
        items = [("work", GiB, 5.0)] * 40 + [("work", 200 * MiB, 1.0)] * 40
    elif name == "bigfew":
        items = [("work", int(rng.uniform(3, 4.5) * GiB), round(rng.uniform(5, 15), 1)) for _ in range(6)]
        items += [("work", int(rng.uniform(50, 400)) * MiB, round(rng.uniform(0.5, 3), 1)) for _ in range(150)]
    else:
        return tasks(seed, name)
    rng.shuffle(items)
    return items


#: (label, workload, budget, slots, LB budget): the two of bench/packing.py as run there, and others
CASES = [
    ("stranger -c 24", "stranger", int(5.35 * GiB), 24, 6 * GiB - 512 * MiB),
    ("default -c 16", "default", 5 * GiB, 16, 5 * GiB),
    ("lognormal -c 24", "lognormal", int(5.35 * GiB), 24, int(5.35 * GiB)),
    ("twokinds -c 16", "twokinds", int(5.35 * GiB), 16, int(5.35 * GiB)),
    ("bigfew -c 24", "bigfew", int(5.35 * GiB), 24, int(5.35 * GiB)),
    ("stranger -c 8", "stranger", int(5.35 * GiB), 8, int(5.35 * GiB)),
    ("default -c 24", "default", 5 * GiB, 24, 5 * GiB),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queue", default=str(SRC), help="the admission module to run")
    ap.add_argument("--seeds", default="7-12")
    ap.add_argument("--stretch", type=float, default=1.047)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("admission_under_test", args.queue)
    module = importlib.util.module_from_spec(spec)
    sys.modules["admission_under_test"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    first, last = (int(x) for x in args.seeds.split("-"))
    for label, workload, budget, slots, lb_budget in CASES:
        ratios = []
        for seed in range(first, last + 1):
            items = synthetic(workload, seed)
            area = sum(size * hold for kind, size, hold in items if kind == "work")
            ratios.append(simulate(module.Admission, items, budget, slots, args.stretch) / (area / lb_budget))
        print(f"{label:16} " + " ".join(f"{r:.3f}" for r in ratios) + f"  mean {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()
