"""Learned sizes on held-out inputs (issue 18, item 8): oomless's recommender against VPA's.

    .venv/bin/python bench/sizing.py [--mode cgroup] [--seed 1] [--train 36] [--heldout 36] [--skip-e2e]
                                     [--resend-after 0] [--skip-packing] [--packing-budget 1.5GiB]
                                     [--packing-cgroup 2GiB] [--packing-concurrency 12] [--packing-hold 1]
                                     [--vpa-days 7] [--history URL] [--json]

About 3.5 minutes on 2 cores (root: the cgroup mode, and the packing worker's
memory cgroup).  ``--history`` replays a training store of an earlier run (same
seed and counts) without a worker; the end-to-end and packing phases run on
copies of it, so it is never written.  ``PYTHONPATH=<older checkout>/src …
--skip-e2e --skip-packing --history …`` scores older code.

Eight task shapes with known peaks (bench/sizing_app.py): linear, noisy
(lognormal σ 0.15), flat, bimodal (15 % of calls 4×), superlinear
(30 MiB + 0.15 · size^1.5), drifting (+30 % from the first call to the
last), and linear and superlinear again with held-out inputs beyond the
largest trained (1 to 1.8 ×).

1. **Training**: ``--train`` calls per shape, round-robin over the shapes, on
   a real governed worker (``-c 2``, ``--mode``) declaring ``memory="2GiB"``
   (nothing is killed), ``oomless_history`` on an SQLite file: every attempt
   is recorded with the peak oomless measured.
2. **Offline, online in order**: for each of ``--heldout`` calls per shape at
   other inputs, each method gives (request, limit) from the history so far;
   a call is killed when its true peak is above its limit.  A kill is added
   to that method's history (oomless: a ``memory-killed`` row at that limit;
   VPA: its OOM sample, max(limit + 100 MiB, limit × 1.2)) and the call is
   sent again, up to ``RETRIES`` times.  Calls that run to their end add
   nothing (they would, in production: this measures what training taught).
   Methods: oomless (``recommend_all(rows)[…].for_size(size)``, whatever
   recommender is in the tree), VPA's target as request and limit (Guaranteed
   QoS), and VPA's target as request with its upper bound as limit; VPA sees
   the same recorded peaks, blind to input size, one peak per call, equal
   weights (its 24 h decay is flat over minutes), without its 250 MiB pod
   floor (which would only raise its figures); its upper bound's confidence is
   ``--vpa-days`` (this history spans a minute: 1 + 1/days would be ~2,500).
3. **End to end**: the held-out calls, in the same order, on a fresh worker
   (``-c 2``), each sent with ``memory=oomless.learned(input_size=size)``, all
   before the first runs.  The worker records into the store the client learns
   from, as in production: a copy of the training store (so the offline part
   and reruns stay reproducible), both ``oomless_history``.  A killed call is
   sent once more the same way, as a user's retry would: when its failed
   result comes back and its kill is in the store (the worker's recorder
   writes every second), or ``--resend-after`` seconds after the result if
   later.  The client reads the task's new kills at most every ``KILLS_EVERY``
   (10 s) per task name, so a resend gets a higher limit only when the client
   looked after the kill was written; the table says how many were killed
   again at the same limit.
4. **Packing, and what the median request costs in evictions**: the held-out
   calls in one seeded shuffle on ONE worker with a wide pool
   (``--packing-concurrency``) and a budget Σ request binds
   (``--packing-budget``), alone in a memory cgroup of ``--packing-cgroup``
   (its budget, its footprint and oomless's reserve: the node pressure is the
   worker's own), each call holding its peak ``--packing-hold`` seconds (so
   memory, not the 2 cores, bounds the makespan).  Two variants, same order, a
   fresh worker and a fresh copy of the training store (recorded into, learned
   from) each: ``learned`` sends ``oomless.learned(input_size=size)`` (request =
   median-based); ``request = limit`` sends the same learned limit as request
   and limit (``lookup_learned(...).memory.limit``: no overcommit), so the two
   differ only in the request.  Per variant: makespan (first send to the end
   of the last attempt, from the history), evictions (``evicted`` attempts in
   the history), calls that finally failed (evicted more than
   ``oomless_max_evictions`` = 3 times, memory-killed), how many attempts ran
   at once and the most their true peaks added up to, Σ request ÷ Σ true.

The true peak of a held-out call is the measured equivalent of the shape's
nominal bytes: nominal + the median of (recorded peak − nominal) over the
training calls (printed; the pool child's own churn during a task).
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from common import HERE, broker_url, emit, start_worker, versions
from packing import Cgroup
from sizing_app import SHAPES, TASKS, app, true_peak

import oomless
from oomless import testing
from oomless.history.learned import lookup_learned
from oomless.history.recommend import recommend_all
from oomless.history.store import Attempt, Store, open_reader
from oomless.units import parse_size

MiB = 2**20
TRAIN_SPEC = "2GiB"
RETRIES = 2  # a killed call is sent again at most this many times (offline)
PACKING_CAP = 300.0  # seconds a packing run may take
# VPA recommender defaults (kubernetes/autoscaler, vertical-pod-autoscaler/pkg/recommender/logic/recommender.go):
# target-memory-percentile 0.9, upper-bound percentile 0.95, recommendation-margin-fraction 0.15; the upper bound ×
# (1 + 1/confidence) (logic/estimator.go: WithMemoryConfidenceMultiplier(1.0, 1.0, …), getConfidence = days of
# history, capped by samples/1440).  Memory peaks go into an exponential histogram (model/aggregations_config.go:
# first bucket 1e7 bytes, each 5 % wider) whose Percentile returns the END of the bucket (util/histogram.go).
# OOM bump: model/container.go RecordOOM, max(used + 100 MiB, used × 1.2) (aggregations_config.go defaults).
VPA_TARGET, VPA_UPPER, VPA_MARGIN = 0.9, 0.95, 0.15
VPA_FIRST_BUCKET, VPA_RATIO = 1e7, 1.05
VPA_OOM_MIN, VPA_OOM_RATIO = 100 * MiB, 1.2

Call = tuple[str, int, int]  # (shape, input size in bytes, call index: training first)


def plan(seed: int, train: int, heldout: int) -> tuple[list[Call], list[Call]]:
    """Training and held-out calls, round-robin over the shapes; inputs drawn uniformly, 4 KiB-aligned."""
    rng = random.Random(seed)

    def draw(lo: int, hi: int, n: int) -> list[int]:
        return [int(rng.uniform(lo, hi) * MiB) // 4096 * 4096 for _ in range(n)]

    sizes = {s: (draw(*tr, train), draw(*ho, heldout)) for s, (tr, ho) in SHAPES.items()}
    training = [(s, sizes[s][0][i], i) for i in range(train) for s in SHAPES]
    held = [(s, sizes[s][1][i], train + i) for i in range(heldout) for s in SHAPES]
    return training, held


def vpa_percentile(peaks: list[int], q: float) -> float:
    """VPA's histogram percentile (equal weights: a day's decay half-life over minutes of history)."""

    def bucket(v: float) -> int:
        return 0 if v < VPA_FIRST_BUCKET else int(math.log(v * (VPA_RATIO - 1) / VPA_FIRST_BUCKET + 1, VPA_RATIO))

    counts: dict[int, int] = {}
    for p in peaks:
        counts[bucket(p)] = counts.get(bucket(p), 0) + 1
    partial, threshold = 0, q * len(peaks)
    for b in sorted(counts):
        partial += counts[b]
        if partial >= threshold:
            break
    return VPA_FIRST_BUCKET * (VPA_RATIO ** (b + 1) - 1) / (VPA_RATIO - 1)


class Oomless:
    """The recommender in the tree, over one task name's rows (plus the kills it caused)."""

    def __init__(self, rows: list[tuple]) -> None:
        self.rows, self._rec = list(rows), None

    def spec(self, size: int) -> tuple[int, int]:
        if self._rec is None:
            (self._rec,) = recommend_all(self.rows)
        return self._rec.for_size(size)

    def killed(self, size: int, request: int, limit: int) -> None:
        self.rows.append((self.rows[0][0], None, None, "memory-killed", limit, request, limit, size, time.time()))
        self._rec = None


class Vpa:
    """VPA's memory target (``upper=False``: request = limit = target) or target and upper bound."""

    def __init__(self, peaks: list[int], upper: bool, days: float) -> None:
        self.peaks, self.upper, self.days = list(peaks), upper, days

    def spec(self, size: int) -> tuple[int, int]:
        target = int(vpa_percentile(self.peaks, VPA_TARGET) * (1 + VPA_MARGIN))
        if not self.upper:
            return target, target
        return target, int(vpa_percentile(self.peaks, VPA_UPPER) * (1 + VPA_MARGIN) * (1 + 1 / self.days))

    def killed(self, size: int, request: int, limit: int) -> None:
        # RecordOOM bumps max(request, the window's peak); the limit is the reading most favourable to VPA.
        self.peaks.append(int(max(limit + VPA_OOM_MIN, limit * VPA_OOM_RATIO)))


def replay(method: Oomless | Vpa, calls: list[tuple[int, int]]) -> dict:
    """Held-out (size, true peak) calls in order; a killed call is taught to the method and sent again."""
    out = dict(calls=len(calls), killed=0, twice=0, twice_same=0, request=0, limit=0, true=0)
    for size, true in calls:
        request, limit = method.spec(size)
        out["request"] += request
        out["limit"] += limit
        out["true"] += true
        last = None
        for attempt in range(1 + RETRIES):
            if attempt:
                request, limit = method.spec(size)
            if true <= limit:
                break
            if attempt == 0:
                out["killed"] += 1
            elif attempt == 1:
                out["twice"] += 1
                out["twice_same"] += limit == last
            method.killed(size, request, limit)
            last = limit
    return out


def summed(per_shape: dict[str, dict]) -> dict:
    """The per-shape counts added up over every shape."""
    return {k: sum(per_shape[s][k] for s in SHAPES) for k in per_shape[next(iter(SHAPES))]}


def run_worker(broker: str, queue: str, mode: str, history: str, tmp: Path, label: str):
    env = {"OOMLESS_BENCH_BROKER": broker, "OOMLESS_BENCH_QUEUE": queue, "OOMLESS_BENCH_MODE": mode,
           "OOMLESS_BENCH_HISTORY": history}
    return start_worker("sizing_app", env, ["-c", "2", "-Q", queue], tmp / f"{label}.log")


def send(call: Call, seed: int, calls: int, memory, **kwargs):
    shape, size, index = call
    return TASKS[shape].apply_async((size, index, seed, calls), memory=memory, input_size=size, **kwargs)


def copy_store(url: str, path: Path) -> str:
    """A copy of the SQLite store at ``url`` in ``path`` (SQLite's backup: whatever its WAL holds too)."""
    if not url.startswith("sqlite:///"):
        raise SystemExit(f"the end-to-end and packing phases copy the training store, which must be SQLite: {url} "
                         "(or --skip-e2e --skip-packing)")
    source, target = sqlite3.connect(url.removeprefix("sqlite:///")), sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return f"sqlite:///{path}"


def train(broker: str, queue: str, mode: str, url: str, calls: list[Call], seed: int, total: int, tmp: Path) -> None:
    worker = run_worker(broker, queue, mode, url, tmp, "train")
    try:
        results = [send(c, seed, total, TRAIN_SPEC) for c in calls]
        for r in results:
            r.get(timeout=300, propagate=False)
    finally:
        worker.stop()


def end_to_end(broker: str, queue: str, mode: str, url: str, calls: list[Call], seed: int, total: int,
               tmp: Path, resend_after: float) -> dict[str, Any]:
    """Held-out calls with ``learned()`` on a worker recording into the store the client learns from (a
    copy of the training store); a killed call is sent once more when its result says so and its kill is
    in the store, ``resend_after`` seconds after that result at the soonest.  Per shape: what the run
    recorded."""
    url = copy_store(url, tmp / "e2e.sqlite")
    app.conf.oomless_history = url  # the client learns from the copy ...
    worker = run_worker(broker, queue, mode, url, tmp, "e2e")  # ... and the worker records into it
    reader = open_reader(url)
    sent: dict[str, tuple[Call, int]] = {}
    waited: dict[str, float] = {}  # resend id -> seconds from the killed result to the resend
    due: list[tuple[Call, str, float]] = []  # killed calls to resend: (call, killed id, when its result came)
    again = []

    def recorded(shape: str, task_id: str) -> bool:
        return any(a.task_id == task_id and a.outcome == "memory-killed" for a in reader.attempts(f"sizing.{shape}"))

    def resend_due() -> None:
        for item in list(due):
            c, killed_id, at = item
            if time.monotonic() < at + resend_after or not (recorded(c[0], killed_id) or time.monotonic() > at + 30):
                continue
            due.remove(item)
            r = send(c, seed, total, oomless.learned(input_size=c[1], default=TRAIN_SPEC))
            sent[r.id], waited[r.id] = (c, 1), time.monotonic() - at
            again.append(r)

    began = time.monotonic()
    try:
        first = [(c, send(c, seed, total, oomless.learned(input_size=c[1], default=TRAIN_SPEC))) for c in calls]
        for c, r in first:
            sent[r.id] = (c, 0)
            resend_due()
            r.get(timeout=300, propagate=False)
            if isinstance(r.result, oomless.MemoryLimitExceeded):
                due.append((c, r.id, time.monotonic()))
        while due:
            resend_due()
            time.sleep(0.05)
        for r in again:
            r.get(timeout=300, propagate=False)
    finally:
        worker.stop()
        reader.close()
    took = time.monotonic() - began
    out = {s: dict(killed=0, resent=0, resent_killed=0, same_limit=0, raised=0, request=0, limit=0) for s in SHAPES}
    firsts: dict[tuple[str, int], int] = {}
    store = Store(url)
    for a in store.attempts():
        if a.task_id not in sent:
            continue
        (shape, size, _), resend = sent[a.task_id]
        row, killed = out[shape], a.outcome == "memory-killed"
        if resend:
            row["resent"] += 1
            row["resent_killed"] += killed
            row["same_limit"] += killed and firsts.get((shape, size)) == a.limit
            row["raised"] += (a.limit or 0) > firsts.get((shape, size), 0)
        else:
            row["killed"] += killed
            row["request"] += a.request or 0
            row["limit"] += a.limit or 0
            firsts[(shape, size)] = a.limit
    store.close()
    return {**out, "_seconds": round(took, 1), "_waited": sorted(round(w, 1) for w in waited.values())}


#: the governor's eviction warning, and the pressure it names
EVICTING = re.compile(r"oomless: evicting \S+ for node memory pressure: (.*?); it uses")
PRESSURES = {"more than the budget": "budget", "eviction margin": "margin", "slots together reached": "shared limit",
             "kernel": "kernel"}


def pack_run(variant: str, broker: str, mode: str, url: str, order: list[Call], truth: dict[tuple[str, int], int],
             seed: int, total: int, tmp: Path, args: argparse.Namespace) -> dict:
    """The held-out calls in ``order`` on one fresh worker (``-c --packing-concurrency``, budget
    ``--packing-budget``, alone in a memory cgroup of ``--packing-cgroup``), recording into a fresh copy of the
    training store that its client learns from; each call's spec is ``learned()``, or, for ``request = limit``,
    that same learned limit as request and limit."""
    label = "packing-" + variant.replace(" ", "").replace("=", "-")
    url = copy_store(url, tmp / f"{label}.sqlite")
    app.conf.oomless_history = url
    queue = f"sizing-{label}-{uuid.uuid4().hex[:6]}"
    env = {"OOMLESS_BENCH_BROKER": broker, "OOMLESS_BENCH_QUEUE": queue, "OOMLESS_BENCH_MODE": mode,
           "OOMLESS_BENCH_HISTORY": url}
    group = Cgroup(parse_size(args.packing_cgroup))
    log = tmp / f"{label}.log"
    results = []
    try:
        worker = testing.start_worker(
            "sizing_app", log, env=env, cwd=HERE, pythonpath=[HERE], events=False, ready_timeout=60,
            cgroup=group.path, args=["--without-heartbeat", "-c", str(args.packing_concurrency), "-Q", queue,
                                     "--memory-budget", args.packing_budget],
        )
        try:
            began = time.time()
            for call in order:
                shape, size, _ = call
                if variant == "learned":
                    memory = oomless.learned(input_size=size)
                else:
                    name = f"sizing.{shape}"
                    found, how = lookup_learned(url, name, name, size)
                    if found is None:
                        raise SystemExit(f"{name}: {how}")
                    memory = {"request": found.memory.limit, "limit": found.memory.limit}
                results.append((call, send(call, seed, total, memory, kwargs={"hold": args.packing_hold},
                                           queue=queue)))
            deadline = time.monotonic() + PACKING_CAP
            for _, r in results:
                r.get(timeout=max(1.0, deadline - time.monotonic()), propagate=False)
        finally:
            worker.stop()
    finally:
        oom_kills = group.oom_kills()
        group.close()
    ids = {r.id: call for call, r in results}
    store = Store(url)
    attempts = [a for a in store.attempts() if a.task_id in ids]
    store.close()
    firsts: dict[str, Attempt] = {}
    for a in attempts:
        firsts.setdefault(a.task_id, a)
    outcomes = Counter(a.outcome for a in attempts)
    evicted = [a for a in attempts if a.outcome == "evicted"]
    finals = Counter(type(r.result).__name__ if r.state == "FAILURE" else r.state for _, r in results)
    ends = [a.started_at + (a.duration or 0.0) for a in attempts]
    # Attempts in time: how many ran at once, the most their true peaks added up to, the most 4× bimodal calls.
    median_bimodal = statistics.median(t for (shape, _), t in truth.items() if shape == "bimodal")
    edges = []
    for a, end in zip(attempts, ends, strict=True):
        shape, _, index = ids[a.task_id]
        true = truth[(shape, index)]
        four = int(shape == "bimodal" and true > 2 * median_bimodal)
        edges += [(a.started_at, 1, true, four), (end, -1, -true, -four)]
    running = peak_running = held = peak_held = big = peak_big = 0
    for _, step, size, large in sorted(edges, key=lambda e: (e[0], e[1])):
        running, held, big = running + step, held + size, big + large
        peak_running, peak_held, peak_big = max(peak_running, running), max(peak_held, held), max(peak_big, big)
    makespan = max(ends) - began
    text = log.read_text(errors="replace")
    reasons = Counter(next((word for key, word in PRESSURES.items() if key in why), "other")
                      for why in EVICTING.findall(text))
    true_sum = sum(truth[(c[0], c[2])] for c in ids.values())
    return {
        "variant": variant,
        "calls": len(results),
        "makespan_s": round(makespan, 1),
        "tasks_per_min": round(60 * len(results) / makespan, 1),
        "evictions": len(evicted),
        "evicted_calls": len({a.task_id for a in evicted}),
        "evicted_by_shape": dict(Counter(ids[a.task_id][0] for a in evicted)),
        "evicted_within_request": sum(1 for a in evicted if a.peak_rss is not None and a.request is not None
                                      and a.peak_rss <= a.request),
        "eviction_reasons": dict(reasons),
        "outcomes": dict(outcomes),
        "finals": dict(finals),
        "failed_evicted": finals.get("EvictedForMemoryPressure", 0),
        "failed_killed": finals.get("MemoryLimitExceeded", 0),
        "failed_other": sum(n for k, n in finals.items() if k not in ("SUCCESS", "EvictedForMemoryPressure",
                                                                        "MemoryLimitExceeded")),
        "peak_running": peak_running,
        "peak_true_gib": round(peak_held / 2**30, 2),
        "peak_big_bimodal": peak_big,
        "big_bimodal_calls": sum(1 for (shape, _), t in truth.items() if shape == "bimodal" and t > 2 * median_bimodal),
        "children_killed": text.count("exited with 'signal 9 (SIGKILL)'"),
        "mean_running": round(sum(a.duration or 0.0 for a in attempts) / makespan, 2),
        "request_true": round(sum(a.request or 0 for a in firsts.values()) / true_sum, 3),
        "limit_true": round(sum(a.limit or 0 for a in firsts.values()) / true_sum, 3),
        "oom_kills": oom_kills,
        "budget_line": next((line.split("] ", 1)[-1] for line in text.splitlines() if "oomless: budget" in line
                             or "oomless: governing" in line), None),
        "warnings": [line.split("] ", 1)[-1] for line in text.splitlines()
                     if ("WARNING" in line or "ERROR" in line) and "evict" not in line
                     and "exited with 'signal 9 (SIGKILL)'" not in line][:5],
    }


def ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="cgroup", help="oomless_enforcement of the workers (cgroup, watchdog)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train", type=int, default=36, help="training calls per shape")
    ap.add_argument("--heldout", type=int, default=36, help="held-out calls per shape")
    ap.add_argument("--vpa-days", type=float, default=7.0,
                    help="VPA's confidence (days of history) for its upper bound: ×(1 + 1/days)")
    ap.add_argument("--history", help="a training store from an earlier run with the same --seed/--train/--heldout "
                                      "(skips training)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--resend-after", type=float, default=0.0,
                    help="end to end: seconds after a killed call's result before it is sent again (at the soonest; "
                         "never before its kill is in the store)")
    ap.add_argument("--skip-packing", action="store_true")
    ap.add_argument("--packing-budget", default="1.5GiB", help="the packing worker's --memory-budget")
    ap.add_argument("--packing-cgroup", default="2GiB",
                    help="memory limit of the packing worker's cgroup (budget + its footprint + oomless's reserve)")
    ap.add_argument("--packing-concurrency", type=int, default=12, help="the packing worker's pool (-c)")
    ap.add_argument("--packing-hold", type=float, default=1.0, help="seconds a packing call holds its peak")
    ap.add_argument("--json", action="store_true", help="also print the BENCH json line")
    args = ap.parse_args()
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="oomless-sizing-"))
    broker, queue = broker_url(), f"sizing-{uuid.uuid4().hex[:8]}"
    app.conf.update(broker_url=broker, result_backend=broker, task_default_queue=queue)
    training, held = plan(args.seed, args.train, args.heldout)
    total = args.train + args.heldout
    url = args.history or f"sqlite:///{tmp / 'train.sqlite'}"
    if not args.history:
        train(broker, queue, args.mode, url, training, args.seed, total, tmp)
    trained_at = time.monotonic()

    store = Store(url)
    index = {(f"sizing.{s}", size): i for s, size, i in training}
    offsets, rows = [], {s: [] for s in SHAPES}
    peaks: dict[str, list[int]] = {s: [] for s in SHAPES}
    for a in store.attempts():
        shape = a.task_name.removeprefix("sizing.")
        i = index.get((a.task_name, a.input_size))
        if shape not in SHAPES or i is None or a.outcome != "ok" or a.peak_rss is None:
            continue
        offsets.append(a.peak_rss - true_peak(shape, a.input_size, i, args.seed, total))
        peaks[shape].append(a.peak_rss)
    for row in store.samples():
        if row[0].removeprefix("sizing.") in rows:
            rows[row[0].removeprefix("sizing.")].append(row)
    store.close()
    if len(offsets) != len(training):
        raise SystemExit(f"the training store holds {len(offsets)} ok attempts of the {len(training)} sent: {url}")
    offset = int(statistics.median(offsets))
    truth = {s: [(size, true_peak(s, size, i, args.seed, total) + offset) for sh, size, i in held if sh == s]
             for s in SHAPES}

    methods = {
        "oomless": lambda s: Oomless(rows[s]),
        "VPA target": lambda s: Vpa(peaks[s], False, args.vpa_days),
        "VPA target+upper": lambda s: Vpa(peaks[s], True, args.vpa_days),
    }
    offline = {m: {s: replay(make(s), truth[s]) for s in SHAPES} for m, make in methods.items()}
    e2e = None if args.skip_e2e else end_to_end(broker, queue, args.mode, url, held, args.seed, total, tmp,
                                                args.resend_after)
    packed = None
    if not args.skip_packing:
        order = list(held)
        random.Random(f"packing/{args.seed}").shuffle(order)
        true_of = {(s, i): true_peak(s, size, i, args.seed, total) + offset for s, size, i in held}
        packed = [pack_run(v, broker, args.mode, url, order, true_of, args.seed, total, tmp, args)
                  for v in ("learned", "request = limit")]

    print(f"\n## Learned sizes on held-out inputs (`{' '.join(['bench/sizing.py', *sys.argv[1:]])}`)\n")
    print(f"versions: {versions()}")
    took = "reused" if args.history else f"{trained_at - began:.0f} s"
    print(f"training: {len(training)} calls ({took}), stored in {url}; "
          f"recorded − nominal peak: median "
          f"{offset / MiB:+.2f} MiB (min {min(offsets) / MiB:+.2f}, max {max(offsets) / MiB:+.2f}); true peak = "
          f"nominal {offset / MiB:+.2f} MiB. VPA confidence {args.vpa_days:g} days (upper bound "
          f"×{1 + 1 / args.vpa_days:.3f}).\n")
    print("| shape | method | killed | killed twice (same limit) | Σ request ÷ Σ true | Σ limit ÷ Σ true "
          "| end to end: killed, resent killed (same limit) |")
    print("|---|---|---|---|---|---|---|")
    for s in [*SHAPES, "all"]:
        for m in methods:
            got = offline[m]
            r = got[s] if s != "all" else summed(got)
            e = "–"
            if e2e is not None and m == "oomless":
                x = e2e[s] if s != "all" else summed(e2e)
                e = f"{x['killed']}/{r['calls']}, {x['resent_killed']}/{x['resent']} ({x['same_limit']})"
            name = f"**{s}**" if s == "all" else s
            print(f"| {name} | {m} | {r['killed']}/{r['calls']} ({100 * r['killed'] / r['calls']:.2f} %) | "
                  f"{r['twice']} ({r['twice_same']}) | {ratio(r['request'], r['true'])} | "
                  f"{ratio(r['limit'], r['true'])} | {e} |")
    every = {m: summed(offline[m]) for m in methods}
    o, v = every["oomless"], every["VPA target"]
    checks = {
        "≤ 1 % of calls killed": o["killed"] <= 0.01 * o["calls"],
        "no call killed twice at the same limit": o["twice_same"] == 0,
        "Σ request ≤ 1.25 × Σ true": o["request"] <= 1.25 * o["true"],
        "Σ limit ≤ 1.6 × Σ true": o["limit"] <= 1.6 * o["true"],
        "fewer kills than VPA target": o["killed"] < v["killed"] or o["killed"] == v["killed"] == 0,
        "less Σ request than VPA target": o["request"] < v["request"],
        "less Σ limit than VPA target": o["limit"] < v["limit"],
    }
    verdicts = "; ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in checks.items())
    print(f"\ntargets (oomless, all shapes): {verdicts}")
    if e2e is not None:
        x = summed(e2e)
        print(f"end to end: {len(held)} calls in {e2e['_seconds']} s on one worker (-c 2, {args.mode}), all sent "
              f"before the first ran, the worker recording into the store the client reads (a copy of the "
              f"training store); {x['resent']} killed call(s) resent once their kill was in the store, "
              f"{args.resend_after:g} s after the failed result at the soonest (waited {e2e['_waited']} s); "
              f"{x['raised']} got a higher limit than the one killed, {x['same_limit']} were killed again at the "
              f"same limit.")
    if packed is not None:
        print(f"\n### Packing: the held-out calls in one shuffled order on one worker (-c {args.packing_concurrency}, "
              f"budget {args.packing_budget}, in a {args.packing_cgroup} memory cgroup, {args.mode}), each holding "
              f"its peak {args.packing_hold:g} s; a fresh worker per variant\n")
        print("| variant | makespan (s) | tasks/min | evictions (calls) | failed: evicted out, memory-killed, other "
              "| running: peak (mean) | most Σ true running (GiB) | Σ request ÷ Σ true | Σ limit ÷ Σ true "
              "| kernel OOM kills |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for p in packed:
            print(f"| {p['variant']} | {p['makespan_s']} | {p['tasks_per_min']} | {p['evictions']} "
                  f"({p['evicted_calls']}) | {p['failed_evicted']}, {p['failed_killed']}, {p['failed_other']} | "
                  f"{p['peak_running']} ({p['mean_running']}) | {p['peak_true_gib']} | {p['request_true']:.2f} | "
                  f"{p['limit_true']:.2f} | {p['oom_kills']} |")
        print("\nmost Σ true running: the true peaks of the attempts running at once, each from its start to its "
              "end (an upper estimate: a call takes a while to allocate its peak).")
        for p in packed:
            print(f"\n{p['variant']}: attempts {p['outcomes']}; evicted by shape {p['evicted_by_shape']}, "
                  f"{p['evicted_within_request']} within their request; pressure named {p['eviction_reasons']}; "
                  f"pool children SIGKILLed {p['children_killed']}; 4× bimodal calls "
                  f"{p['big_bimodal_calls']}, at most {p['peak_big_bimodal']} running at once; "
                  f"worker: {p['budget_line']}")
            for line in p["warnings"]:
                print(f"  worker warned: {line}")
    print(f"total: {time.monotonic() - began:.0f} s")
    if args.json:
        emit("sizing", {"versions": versions(), "args": vars(args), "offset": offset, "offline": offline,
                        "e2e": e2e, "packing": packed, "checks": checks})


if __name__ == "__main__":
    main()
