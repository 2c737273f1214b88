"""Right sizes from history: a request and a limit per task name (and per input size).

The method, and how it differs from Kubernetes' Vertical Pod Autoscaler
(docs/history.md §3 says the same with numbers):

* **Samples** are the peaks of attempts that ran to their end (``ok`` or
  ``failed``; a task that raised still used that memory).  A memory-killed
  attempt only proves the task needs *more* than its limit; like VPA's OOM
  bump it counts as a sample of ``max(limit × 1.2, limit + 100 MiB)``.
  Evicted, infeasible, invalid and lost attempts say nothing about the task's
  own need and are left out.
* **request = p95 of the samples × 1.15.**  VPA targets p90 of a decaying
  histogram of a *container's* usage, plus 15 %.  A Celery task is a batch
  job, not a long-running container: a request too low here makes admission
  overcommit, and the node-pressure eviction then stops the task, so oomless
  takes the 95th percentile.  No decay: choose the window with ``since``.
* **limit = max of the samples × 1.2**: the limit kills, so it must clear
  every peak seen, with room for one a fifth larger.
* **floor**: neither goes below 16 MiB (VPA's floor is 250 MiB per
  container; a task shares its interpreter with the pool child, which is not
  charged to it, so less is needed here).  Both are rounded up to 1 MiB.
* **confidence**: fewer than 20 samples is "low" (VPA widens its bounds on
  short histories; oomless says so instead and still answers).
* **by input size**: where at least 5 ok attempts with 3 distinct input sizes
  were recorded (``oomless.input_size()``), peak is fitted as ``base + slope
  × size`` by least squares; the request for a size is ``(fit + p95 of the
  residuals) × 1.15``, the limit ``(fit + max residual) × 1.2``.

Everything here is pure computation over rows; :func:`from_store` streams the
rows out of a :class:`~oomless.history.store.Store`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import outcomes
from ..units import MiB
from .attempt import task_label

__all__ = [
    "Recommendation",
    "SizeFit",
    "Sample",
    "recommend",
    "recommend_all",
    "REQUEST_QUANTILE",
    "REQUEST_MARGIN",
    "LIMIT_MARGIN",
    "FLOOR",
]

REQUEST_QUANTILE = 0.95
REQUEST_MARGIN = 1.15
LIMIT_MARGIN = 1.2
#: VPA's OOM bump: a memory-killed attempt counts as needing at least this much more than its limit.
OOM_BUMP_FACTOR, OOM_BUMP_MIN = 1.2, 100 * MiB
FLOOR = 16 * MiB
LOW_CONFIDENCE = 20  # samples
SIZE_FIT_MIN, SIZE_FIT_DISTINCT = 5, 3

#: outcomes whose peak is a sample of what the task needs
MEASURED = (outcomes.OK, outcomes.FAILED)
KILLED = outcomes.MEMORY_KILLED

#: (task_name, dag_id, af_task_id, outcome, peak_rss, request, limit, input_size, started_at), oldest first.
#: Airflow tries all run as one Celery task (execute_workload): they are grouped by (dag_id, af_task_id).
Sample = tuple[str, "str | None", "str | None", str, "int | None", "int | None", "int | None", "int | None", float]


def _mib_up(n: float) -> int:
    return max(FLOOR, int(math.ceil(n / MiB)) * MiB)


def quantile(sorted_values: Any, q: float) -> float:
    """Linear-interpolated quantile of an ascending sequence (numpy's default method)."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no values")
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class SizeFit:
    """Peak against input size: ``peak ≈ base + slope × size`` (bytes per input byte)."""

    base: float
    slope: float
    residual_p95: float
    residual_max: float
    samples: int
    smallest: int
    largest: int

    def request(self, size: int) -> int:
        return _mib_up((self.base + self.slope * size + self.residual_p95) * REQUEST_MARGIN)

    def limit(self, size: int) -> int:
        return max(self.request(size), _mib_up((self.base + self.slope * size + self.residual_max) * LIMIT_MARGIN))


@dataclass(frozen=True)
class Recommendation:
    """What history says one task name should declare."""

    task_name: str  # the Celery task name, or "<dag_id>.<task_id>" for an Airflow task
    samples: int  # peaks it rests on (measured attempts + memory kills)
    kills: int  # memory-killed attempts among them
    request: int
    limit: int
    p95_peak: int
    max_peak: int
    current_request: int | None  # of the newest attempt
    current_limit: int | None
    waste: int  # mean bytes reserved beyond the peak per measured attempt (under the current spec)
    lack: int  # bytes the current limit is below the recommended one (0: enough)
    confidence: str  # "ok" or "low"
    by_size: SizeFit | None = field(default=None)
    dag_id: str | None = None  # an Airflow task: its DAG and task ids
    af_task_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.by_size is None:
            out["by_size"] = None
        return out

    def for_size(self, size: int | None) -> tuple[int, int]:
        """(request, limit) for an input of ``size`` bytes (the size-blind pair without a fit or size)."""
        if size is None or self.by_size is None:
            return self.request, self.limit
        return self.by_size.request(size), self.by_size.limit(size)


class _Acc:
    """One task name's samples while rows stream by (compact arrays: 1 M rows stay small)."""

    __slots__ = ("peaks", "kills", "sizes", "sized_peaks", "request", "limit", "waste_sum", "waste_n")

    def __init__(self) -> None:
        self.peaks = array("q")
        self.kills = 0
        self.sizes = array("q")
        self.sized_peaks = array("q")
        self.request: int | None = None
        self.limit: int | None = None
        self.waste_sum = 0
        self.waste_n = 0

    def add(self, outcome: str, peak: int | None, request: int | None, limit: int | None, size: int | None) -> None:
        if outcome in MEASURED and peak is not None:
            self.peaks.append(peak)
            if outcome == outcomes.OK and size is not None and size >= 0:
                self.sizes.append(size)
                self.sized_peaks.append(peak)
            if request is not None:
                self.waste_sum += max(0, request - peak)
                self.waste_n += 1
        elif outcome == KILLED and limit is not None:
            self.peaks.append(int(max(limit * OOM_BUMP_FACTOR, limit + OOM_BUMP_MIN)))
            self.kills += 1
        else:
            return
        self.request, self.limit = request, limit


def _fit(sizes: array, peaks: array) -> SizeFit | None:
    n = len(sizes)
    if n < SIZE_FIT_MIN or len(set(sizes)) < SIZE_FIT_DISTINCT:
        return None
    mx = sum(sizes) / n
    my = sum(peaks) / n
    sxx = sum((x - mx) ** 2 for x in sizes)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes, peaks, strict=True)) / sxx
    if slope <= 0:
        return None  # peak does not grow with input size: the size-blind pair is the answer
    base = my - slope * mx
    residuals = sorted(y - (base + slope * x) for x, y in zip(sizes, peaks, strict=True))
    return SizeFit(base, slope, max(0.0, quantile(residuals, REQUEST_QUANTILE)), max(0.0, residuals[-1]), n,
                   min(sizes), max(sizes))


def _finish(key: tuple[str, str | None, str | None], acc: _Acc) -> Recommendation | None:
    name, dag_id, af_task_id = key
    if not acc.peaks:
        return None
    peaks = sorted(acc.peaks)
    p95 = quantile(peaks, REQUEST_QUANTILE)
    request = _mib_up(p95 * REQUEST_MARGIN)
    limit = max(request, _mib_up(peaks[-1] * LIMIT_MARGIN))
    return Recommendation(
        task_name=name,
        samples=len(peaks),
        kills=acc.kills,
        request=request,
        limit=limit,
        p95_peak=int(p95),
        max_peak=peaks[-1],
        current_request=acc.request,
        current_limit=acc.limit,
        waste=acc.waste_sum // acc.waste_n if acc.waste_n else 0,
        lack=max(0, limit - acc.limit) if acc.limit is not None else 0,
        confidence="low" if len(peaks) < LOW_CONFIDENCE else "ok",
        by_size=_fit(acc.sizes, acc.sized_peaks),
        dag_id=dag_id,
        af_task_id=af_task_id,
    )


def recommend_all(rows: Iterable[Sample], progress: Callable[[int], None] | None = None) -> list[Recommendation]:
    """One recommendation per task name with at least one sample, by name.

    ``rows`` must come oldest first (the newest attempt's spec is "current").
    ``progress`` is called with the number of rows read, every 10,000 rows.
    """
    accs: dict[tuple[str, str | None, str | None], _Acc] = {}
    seen = 0
    for name, dag_id, af_task_id, outcome, peak, request, limit, size, _ in rows:
        airflow = dag_id and af_task_id
        key = (task_label(name, dag_id, af_task_id), dag_id, af_task_id) if airflow else (name, None, None)
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = _Acc()
        acc.add(outcome, peak, request, limit, size)
        seen += 1
        if progress is not None and seen % 10_000 == 0:
            progress(seen)
    if progress is not None:
        progress(seen)
    found = (_finish(key, acc) for key, acc in sorted(accs.items(), key=lambda kv: kv[0][0]))
    return [r for r in found if r is not None]


def recommend(rows: Iterable[Sample], task_name: str) -> Recommendation | None:
    """The recommendation for one task name (``None`` without samples)."""
    return next((r for r in recommend_all(rows) if r.task_name == task_name), None)
