"""Learned sizes on held-out inputs (issue 18, item 8): oomless's recommender against VPA's.

    .venv/bin/python bench/sizing.py [--mode cgroup] [--seed 1] [--train 36] [--heldout 36] [--skip-e2e]
                                     [--vpa-days 7] [--history URL] [--json]

About 75 s on 2 cores (root, for the cgroup mode).  ``--history`` replays a
training store of an earlier run (same seed and counts) without a worker:
``PYTHONPATH=<older checkout>/src … --skip-e2e --history …`` scores older code.

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
3. **End to end**: the held-out calls, in the same order, on a fresh worker,
   each sent with ``memory=oomless.learned(input_size=size)`` by a client whose
   ``oomless_history`` is the training store; the worker records into another
   file, so the client learns nothing from this run's kills.  A killed call is
   sent once more the same way: the client's learned cache (600 s) gives the
   same spec.

The true peak of a held-out call is the measured equivalent of the shape's
nominal bytes: nominal + the median of (recorded peak − nominal) over the
training calls (printed; the pool child's own churn during a task).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import broker_url, emit, start_worker, versions
from sizing_app import SHAPES, TASKS, app, true_peak

import oomless
from oomless.history.recommend import recommend_all
from oomless.history.store import Store

MiB = 2**20
TRAIN_SPEC = "2GiB"
RETRIES = 2  # a killed call is sent again at most this many times (offline)
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


def send(call: Call, seed: int, calls: int, memory):
    shape, size, index = call
    return TASKS[shape].apply_async((size, index, seed, calls), memory=memory, input_size=size)


def train(broker: str, queue: str, mode: str, url: str, calls: list[Call], seed: int, total: int, tmp: Path) -> None:
    worker = run_worker(broker, queue, mode, url, tmp, "train")
    try:
        results = [send(c, seed, total, TRAIN_SPEC) for c in calls]
        for r in results:
            r.get(timeout=300, propagate=False)
    finally:
        worker.stop()


def end_to_end(broker: str, queue: str, mode: str, url: str, calls: list[Call], seed: int, total: int,
               tmp: Path) -> dict[str, dict]:
    """Held-out calls with ``learned()``; a killed one is sent once more.  Per shape: what the run recorded."""
    recorded = f"sqlite:///{tmp / 'e2e.sqlite'}"
    app.conf.oomless_history = url  # the client learns from the training store ...
    worker = run_worker(broker, queue, mode, recorded, tmp, "e2e")  # ... the worker records elsewhere
    sent: dict[str, tuple[Call, int]] = {}
    began = time.monotonic()
    try:
        first = [(c, send(c, seed, total, oomless.learned(input_size=c[1], default=TRAIN_SPEC))) for c in calls]
        again = []
        for c, r in first:
            sent[r.id] = (c, 0)
            r.get(timeout=300, propagate=False)
            if isinstance(r.result, oomless.MemoryLimitExceeded):
                again.append((c, send(c, seed, total, oomless.learned(input_size=c[1], default=TRAIN_SPEC))))
        for c, r in again:
            sent[r.id] = (c, 1)
            r.get(timeout=300, propagate=False)
    finally:
        worker.stop()
    took = time.monotonic() - began
    out = {s: dict(killed=0, resent=0, resent_killed=0, same_limit=0, request=0, limit=0) for s in SHAPES}
    firsts: dict[tuple[str, int], int] = {}
    for a in Store(recorded).attempts():
        if a.task_id not in sent:
            continue
        (shape, size, _), resend = sent[a.task_id]
        row, killed = out[shape], a.outcome == "memory-killed"
        if resend:
            row["resent"] += 1
            row["resent_killed"] += killed
            row["same_limit"] += killed and firsts.get((shape, size)) == a.limit
        else:
            row["killed"] += killed
            row["request"] += a.request or 0
            row["limit"] += a.limit or 0
            firsts[(shape, size)] = a.limit
    out["_seconds"] = round(took, 1)
    return out


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
    e2e = None if args.skip_e2e else end_to_end(broker, queue, args.mode, url, held, args.seed, total, tmp)

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
        print(f"end to end: {len(held)} calls in {e2e['_seconds']} s on one worker (-c 2, {args.mode}), all sent "
              "before the first ran; the client's learned sizes are read once (cache: 600 s), so no kill of this "
              "run is seen by a later call, and a resent call gets the spec that was just killed.")
    print(f"total: {time.monotonic() - began:.0f} s")
    if args.json:
        emit("sizing", {"versions": versions(), "args": vars(args), "offset": offset, "offline": offline,
                        "e2e": e2e, "checks": checks})


if __name__ == "__main__":
    main()
