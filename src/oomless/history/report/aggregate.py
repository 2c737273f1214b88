"""The report's numbers: one pass over the recorded attempts into plain figures per worker, task name and bucket.

:func:`choose_grid` fixes the time buckets from the period alone (so they are known before any row
is read); :func:`aggregate` then reads :meth:`~oomless.history.store.Store.timeline` rows once, in
any order, and returns a :class:`ReportData`: memory per worker and bucket, peaks per task name,
the newest kills, evictions and refusals.

What is kept while the rows stream by is bounded by workers × task names × buckets, never by the
number of attempts: memory per bucket is a difference array per (worker, task name), p95 peaks come
from a log-scale histogram (bins under 0.8 % wide), the markers from a heap of the newest
:data:`MAX_MARKERS`.

The history holds one peak per attempt, not a series of samples: an attempt counts with its whole
peak in every bucket it ran in (with its request when no peak was measured), so memory per bucket
is an upper bound of what was in use, never a measured curve.

Not here: reading the store and writing the file (:mod:`.build`), charts (:mod:`.charts`), the page
(:mod:`.page`), recommendations (:mod:`oomless.history.recommend`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ... import outcomes
from ..attempt import task_label
from ..recommend import MEASURED
from .text import duration

__all__ = ["aggregate", "choose_grid", "Grid", "Mark", "ReportData", "TaskPeaks", "TooManyBuckets", "WorkerMemory",
           "worker_label", "MAX_BARS", "MAX_BUCKETS", "MAX_MARKERS", "MAX_STACKED", "MARKED", "OTHER"]

#: Buckets per memory chart when the width is chosen automatically.
AUTO_BUCKETS = 600
#: The most buckets an explicit ``bucket`` width may produce per chart.
MAX_BUCKETS = 2_000
#: Task names stacked individually per worker; the rest are summed as :data:`OTHER`.
MAX_STACKED = 12
#: Workers that get a memory chart (those with the most byte-seconds).
MAX_WORKER_CHARTS = 16
#: Individual markers on the kills timeline (the newest).
MAX_MARKERS = 5_000
#: Task names in the requested-vs-peak chart (those that waste the most in total).
MAX_BARS = 40
#: Rows read between two calls of the progress callback.
PROGRESS_EVERY = 10_000

#: Outcomes marked on the timeline: killed over the limit, evicted under it, refused as larger than the budget.
MARKED = (outcomes.MEMORY_KILLED, outcomes.EVICTED, outcomes.INFEASIBLE)
#: The series that sums a worker's task names beyond :data:`MAX_STACKED`.
OTHER = "other"
#: The worker of attempts recorded without a host.
UNKNOWN_WORKER = "(unknown worker)"
#: "Nice" automatic bucket widths, in seconds.
_NICE_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                2 * 86400, 7 * 86400)


class TooManyBuckets(ValueError):
    """An explicit bucket width would cut the period into more than :data:`MAX_BUCKETS` buckets."""


@dataclass(frozen=True)
class Grid:
    """The time buckets of the memory charts."""

    start: float  # seconds since the epoch, a multiple of width
    width: float  # seconds
    count: int

    def edges(self) -> list[float]:
        """Bucket starts and the end of the last one (seconds since the epoch)."""
        return [self.start + i * self.width for i in range(self.count + 1)]


def choose_grid(first: float, last: float, bucket: float | None) -> Grid:
    """Buckets covering ``first`` to ``last``: ``bucket`` seconds wide, or (``None``) the first round width
    giving at most :data:`AUTO_BUCKETS`.  :class:`TooManyBuckets` when ``bucket`` gives more than
    :data:`MAX_BUCKETS`."""
    span = max(last - first, 1.0)
    if bucket is not None:
        width = bucket
        if math.ceil(span / width) + 1 > MAX_BUCKETS:
            raise TooManyBuckets(
                f"a bucket of {bucket:g} s cuts the {duration(span)} covered into {math.ceil(span / width) + 1:,} "
                f"buckets per chart, more than {MAX_BUCKETS:,}: use a bucket of at least "
                f"{math.ceil(span / (MAX_BUCKETS - 1)):,} s, or a shorter --since"
            )
    else:
        fits = [w for w in _NICE_WIDTHS if math.ceil(span / w) + 1 <= AUTO_BUCKETS]
        width = float(fits[0] if fits else math.ceil(span / (AUTO_BUCKETS - 1)))
    start = math.floor(first / width) * width
    return Grid(start, width, max(1, math.ceil((last - start) / width)))


@dataclass(frozen=True)
class WorkerMemory:
    """One worker's memory over time: per series, the sum of its running attempts' peaks in each bucket."""

    worker: str  # its host, or UNKNOWN_WORKER
    names: list[str]  # task names, most byte-seconds first; OTHER last when more than MAX_STACKED ran
    values: list[list[float]]  # per name: bytes in each bucket of the grid


@dataclass(frozen=True)
class TaskPeaks:
    """One task name's measured attempts (``ok`` and ``failed``): request against peak."""

    name: str
    measured: int  # attempts
    mean_request: int | None  # None: none declared a request
    p95_peak: int  # nearest rank, to within 0.4 %
    max_peak: int
    waste: int | None  # mean of max(0, request - peak) over those with a request


@dataclass(frozen=True)
class Mark:
    """One memory-killed, evicted or infeasible attempt, for the timeline."""

    task_name: str
    task_id: str
    outcome: str  # one of MARKED
    started: float  # seconds since the epoch
    worker: str  # its host, or UNKNOWN_WORKER
    request: int | None
    limit: int | None
    peak: int | None  # None: not measured


@dataclass(frozen=True)
class ReportData:
    """Everything the report draws, as plain numbers (bytes, seconds since the epoch)."""

    grid: Grid
    outcomes: dict[str, int]  # attempts per outcome
    workers: int  # that ran attempts with a known peak or request
    task_names: int
    memory: list[WorkerMemory]  # the MAX_WORKER_CHARTS workers with the most byte-seconds, most first
    byte_seconds: dict[str, float]  # per task name, over all workers
    peaks: list[TaskPeaks]  # the MAX_BARS task names wasting the most in total, most first
    peaks_left_out: int  # task names beyond MAX_BARS
    marks: list[Mark]  # the newest MAX_MARKERS, oldest first
    marks_left_out: int  # older ones beyond MAX_MARKERS

    @property
    def attempts(self) -> int:
        """Attempts read."""
        return sum(self.outcomes.values())


def worker_label(host: str | None) -> str:
    """How a worker is named: its host, or :data:`UNKNOWN_WORKER`."""
    return host or UNKNOWN_WORKER


class _TaskStats:
    """One task name's measured peaks, in constant space per distinct peak bin."""

    __slots__ = ("measured", "peak_max", "bins", "request_sum", "request_n", "waste_sum")

    def __init__(self) -> None:
        self.measured = 0
        self.peak_max = 0
        self.bins: dict[int, int] = {}  # log-scale bin of a peak -> attempts
        self.request_sum = 0
        self.request_n = 0
        self.waste_sum = 0  # sum of max(0, request - peak)

    def add(self, peak: int, request: int | None) -> None:
        self.measured += 1
        b = _peak_bin(peak)
        self.bins[b] = self.bins.get(b, 0) + 1
        if peak > self.peak_max:
            self.peak_max = peak
        if request is not None:
            self.request_sum += request
            self.request_n += 1
            if request > peak:
                self.waste_sum += request - peak

    def quantile(self, q: float) -> int:
        """The ``q`` quantile of the peaks (nearest rank; the middle of its bin, at most the max)."""
        rank = max(1, math.ceil(q * self.measured))
        seen = 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= rank:
                return min(self.peak_max, _bin_middle(b))
        return self.peak_max

    def peaks(self, name: str) -> TaskPeaks:
        n = self.request_n
        return TaskPeaks(name, self.measured, self.request_sum // n if n else None, self.quantile(0.95),
                         self.peak_max, self.waste_sum // n if n else None)


def _peak_bin(peak: int) -> int:
    """A peak's histogram bin: its bit length and next 7 bits (bins under 0.8 % wide; exact below 256 B)."""
    bits = peak.bit_length()
    return peak if bits <= 8 else (bits << 7) | ((peak >> (bits - 8)) & 127)


def _bin_middle(b: int) -> int:
    if b < 256:
        return b
    bits, fraction = b >> 7, b & 127
    return ((2 * (128 + fraction) + 1) << (bits - 8)) // 2


@dataclass
class _Totals:
    """Everything one pass over the attempts leaves behind: bounded by workers × task names, not by rows."""

    grid: Grid
    outcomes: dict[str, int] = field(default_factory=dict)
    #: per (worker_host, task name): [byte-seconds, difference array of bytes per bucket].  Byte-seconds
    #: are peak (or request) × duration of the attempts that ran.  A running attempt's peak is added at
    #: its first bucket and taken off after its last: O(1) per attempt however many buckets it spans.
    used: dict[tuple[str | None, str], list[Any]] = field(default_factory=dict)
    tasks: dict[str, _TaskStats] = field(default_factory=dict)
    #: min-heap of (started_at, n, task name, row): the newest MAX_MARKERS memory-killed, evicted and
    #: infeasible attempts (n, unique, keeps the rows out of the comparisons)
    marks: list[tuple[float, int, str, tuple[Any, ...]]] = field(default_factory=list)
    marked: int = 0

    def memory(self) -> list[WorkerMemory]:
        """Per charted worker (the MAX_WORKER_CHARTS with the most byte-seconds): its series, biggest first
        (the rest summed as OTHER), and bytes per bucket for each."""
        per_worker: dict[str | None, dict[str, float]] = {}
        for (host, name), (byte_seconds, _) in self.used.items():
            per_worker.setdefault(host, {})[name] = byte_seconds
        ranked = sorted(per_worker.items(), key=lambda item: (-sum(item[1].values()), worker_label(item[0])))
        out = []
        for host, names in ranked[:MAX_WORKER_CHARTS]:
            order = sorted(names, key=lambda name: (-names[name], name))
            series = [self.used[(host, name)][1] for name in order[:MAX_STACKED]]
            if len(order) > MAX_STACKED:
                other = [0.0] * (self.grid.count + 1)
                for name in order[MAX_STACKED:]:
                    for i, d in enumerate(self.used[(host, name)][1]):
                        other[i] += d
                series.append(other)
            labels = order[:MAX_STACKED] + ([OTHER] if len(order) > MAX_STACKED else [])
            out.append(WorkerMemory(worker_label(host), labels, [_running_sum(diff) for diff in series]))
        return out

    def byte_seconds(self) -> dict[str, float]:
        """Per task name, over all workers."""
        out: dict[str, float] = {}
        for (_, name), (byte_seconds, _) in self.used.items():
            out[name] = out.get(name, 0.0) + byte_seconds
        return out

    def peaks(self) -> tuple[list[TaskPeaks], int]:
        """The MAX_BARS task names wasting the most in total, and how many more there are."""
        ranked = sorted(self.tasks, key=lambda name: (-self.tasks[name].waste_sum, name))
        return [self.tasks[name].peaks(name) for name in ranked[:MAX_BARS]], max(0, len(ranked) - MAX_BARS)

    def newest_marks(self) -> list[Mark]:
        """The marks kept, oldest first."""
        return [
            Mark(task_name=name, task_id=row[8], outcome=row[1], started=started, worker=worker_label(row[7]),
                 request=row[4], limit=row[5], peak=row[6])
            for started, _, name, row in sorted(self.marks)
        ]

    def data(self) -> ReportData:
        peaks, peaks_left_out = self.peaks()
        return ReportData(
            grid=self.grid, outcomes=self.outcomes, workers=len({host for host, _ in self.used}),
            task_names=len({name for _, name in self.used} | set(self.tasks)), memory=self.memory(),
            byte_seconds=self.byte_seconds(), peaks=peaks, peaks_left_out=peaks_left_out,
            marks=self.newest_marks(), marks_left_out=self.marked - len(self.marks),
        )


def _running_sum(diff: list[float]) -> list[float]:
    total, values = 0.0, []
    for d in diff[:-1]:
        total += d
        values.append(total if total > 0 else 0.0)  # float error must not draw a sliver below zero
    return values


def aggregate(rows: Iterable[tuple[Any, ...]], grid: Grid, tick: Callable[[int], None]) -> ReportData:
    """The figures of :meth:`Store.timeline <oomless.history.store.Store.timeline>` ``rows`` (any order) on
    ``grid``; ``tick(rows read)`` every :data:`PROGRESS_EVERY` rows and at the end.

    The hottest loop of a report: locals, no calls that can be avoided.
    """
    totals = _Totals(grid)
    outcomes = totals.outcomes
    per_key, tasks, marks = totals.used, totals.tasks, totals.marks
    start, width, last = grid.start, grid.width, grid.count - 1
    zeros = [0.0] * (grid.count + 1)
    ceil, measured, marked_outcomes = math.ceil, MEASURED, MARKED
    n = marked = 0
    for row in rows:
        name, outcome, started, duration, request, _limit, peak, host, _task_id, dag_id, af_task_id = row
        if dag_id:
            name = task_label(name, dag_id, af_task_id)  # one call per Airflow row only
        n += 1
        if n % PROGRESS_EVERY == 0:
            tick(n)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # Refused attempts (infeasible, invalid) have no duration: they never ran and used no memory.
        used = peak if peak is not None else request
        if duration is not None and used:
            key = (host, name)
            acc = per_key.get(key)
            if acc is None:
                acc = per_key[key] = [0.0, zeros.copy()]
            acc[0] += used * duration
            b0 = int((started - start) // width)
            # An attempt ending exactly on an edge does not run in the bucket that starts there.
            b1 = ceil((started + duration - start) / width) - 1
            # Rows written after the period was measured may fall outside the grid: clamp them.
            b0 = 0 if b0 < 0 else last if b0 > last else b0
            b1 = b0 if b1 < b0 else last if b1 > last else b1
            diff = acc[1]
            diff[b0] += used
            diff[b1 + 1] -= used
        if peak is not None and outcome in measured:
            stats = tasks.get(name)
            if stats is None:
                stats = tasks[name] = _TaskStats()
            stats.add(peak, request)
        elif outcome in marked_outcomes:
            marked += 1
            entry = (started, marked, name, row)
            if len(marks) < MAX_MARKERS:
                heapq.heappush(marks, entry)
            elif started > marks[0][0]:
                heapq.heapreplace(marks, entry)
    tick(n)
    totals.marked = marked
    return totals.data()
