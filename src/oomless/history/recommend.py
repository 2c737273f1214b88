"""Right sizes from history: a request and a limit per task name (and per input size).

The method, and how it differs from Kubernetes' Vertical Pod Autoscaler
(docs/history.md §2 says the same with numbers):

* **Samples** are the peaks of attempts that ran to their end (``ok`` or
  ``failed``; a task that raised still used that memory).  A memory-killed
  attempt only proves the task needs *more* than its limit; like VPA's OOM
  bump it counts as a sample of ``max(limit × 1.2, limit + 100 MiB)``.
  Evicted, infeasible, invalid and lost attempts say nothing about the task's
  own need and are left out.
* **request = median of the samples × 1.15**: what the task usually needs.
  The request is what admission reserves, so it decides how much runs at
  once; a task whose peak is high only now and then (bimodal) reserves its
  common size, and the limit covers the rare one.  Admission's overcommit on
  those rare peaks is covered by node-pressure eviction (docs/history.md
  says what that cost, measured).  VPA targets p90 + 15 % of a *container's*
  usage, which for a batch task is its rare peak.
* **limit = max of the samples × 1.2**: the limit kills, so it must clear
  every peak seen, with room for one a fifth larger.
* **floor**: neither goes below 16 MiB.  Both are rounded up to 1 MiB.
* **confidence**: fewer than 20 samples is "low".
* **by input size**: where at least 5 ok attempts with 3 distinct input sizes
  were recorded (``oomless.input_size()``), peak is fitted against size as
  ``base + slope × size ** exponent``: least squares on *relative* errors for
  each exponent from 0.5 to 2 (1 is a line, kept unless a curve is clearly
  better), the best one used only when it explains the peaks: R² of log
  peak at least :data:`FIT_R2` (a peak that does not follow the input keeps
  the size-blind pair).  Margins are *ratios*: each sample's
  peak ÷ fit, so noise proportional to the peak gives every size the same
  relative room.  For an input of ``n`` bytes: request = fit(n) × median
  ratio × 1.15, limit = fit(n) × max ratio × 1.2.  A memory-killed attempt of
  known size ``s`` adds the ratio ``limit × 1.2 ÷ fit(s)`` (the answer rises
  at every size), and its full bump × 1.2 is a floor for ``s`` and larger.
  Below the sizes seen, the answer for the smallest (peak grows with size, so
  it covers); above the largest × :data:`RANGE_TOLERANCE`, the larger of the
  size-blind pair and the extrapolation.

Everything here is pure computation over rows; the rows come from
:meth:`~oomless.history.store.Store.samples`.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import outcomes
from ..units import MiB
from .attempt import task_label
from .sizefit import (
    FIT_R2,
    FLOOR,
    LIMIT_MARGIN,
    REQUEST_MARGIN,
    REQUEST_QUANTILE,
    SizeFit,
    bump,
    fit_sizes,
    limit_for,
    mib_up,
    quantile,
)

__all__ = [
    "Recommendation",
    "SizeFit",
    "Sized",
    "Sample",
    "recommend",
    "recommend_all",
    "REQUEST_QUANTILE",
    "REQUEST_MARGIN",
    "LIMIT_MARGIN",
    "FLOOR",
    "AIRFLOW_TRY_FLOOR",
    "FIT_R2",
    "RANGE_TOLERANCE",
    "bump",
    "limit_for",
    "quantile",
]

#: The least an Airflow try runs under in cgroup mode: its task runner (forked by the supervisor,
#: importing the SDK and the DAG file) is charged 57 MiB before the task's code runs (Airflow 3.3,
#: measured; docs/airflow.md §3).  No Airflow task is recommended a request below it, nor a limit
#: below its × LIMIT_MARGIN: the watchdog measures a try's tree lower (the runner shares the
#: supervisor's pages), and a limit learned there would kill every try under a cgroup.
AIRFLOW_TRY_FLOOR = 64 * MiB
LOW_CONFIDENCE = 20  # samples
#: inputs up to this many times the largest size seen count as inside the fitted range
RANGE_TOLERANCE = 1.1

#: outcomes whose peak is a sample of what the task needs
MEASURED = (outcomes.OK, outcomes.FAILED)
KILLED = outcomes.MEMORY_KILLED

#: (task_name, dag_id, af_task_id, outcome, peak_rss, request, limit, input_size, started_at), oldest first.
#: Airflow tries all run as one Celery task (execute_workload): they are grouped by (dag_id, af_task_id).
Sample = tuple[str, "str | None", "str | None", str, "int | None", "int | None", "int | None", "int | None", float]


@dataclass(frozen=True)
class Sized:
    """The answer for one input size, and where it came from."""

    request: int
    limit: int
    #: "size-blind" (no size or no fit), "fitted", "below range" (the smallest size's answer),
    #: "above range" (the larger of the size-blind pair and the extrapolation)
    how: str


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
    median_peak: int = 0
    size_note: str | None = None  # why there is no size fit, when sizes were recorded

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.by_size is None:
            out["by_size"] = None
        return out

    def sized(self, size: int | None) -> Sized:
        """The (request, limit) for an input of ``size`` bytes, and how it was found (module docstring)."""
        fit = self.by_size
        if size is None or fit is None:
            return Sized(self.request, self.limit, "size-blind")
        if size < fit.smallest:
            return Sized(*self._floored(*fit.pair(fit.smallest)), "below range")
        if size > fit.largest * RANGE_TOLERANCE:
            request, limit = fit.pair(size)
            return Sized(max(request, self.request), max(limit, self.limit), "above range")
        return Sized(*self._floored(*fit.pair(size)), "fitted")

    def _floored(self, request: int, limit: int) -> tuple[int, int]:
        """An Airflow task's pair never below what any of its tries costs (:data:`AIRFLOW_TRY_FLOOR`)."""
        return _airflow_floor(request, limit) if self.dag_id else (request, limit)

    def for_size(self, size: int | None) -> tuple[int, int]:
        """(request, limit) for an input of ``size`` bytes (the size-blind pair without a fit or size)."""
        answer = self.sized(size)
        return answer.request, answer.limit


class _Acc:
    """One task name's samples while rows stream by (compact arrays: 1 M rows stay small)."""

    __slots__ = ("peaks", "kills", "sizes", "sized_peaks", "kill_sizes", "kill_needs", "kill_limits", "request",
                 "limit", "waste_sum", "waste_n")

    def __init__(self) -> None:
        self.peaks = array("q")
        self.kills = 0
        self.sizes = array("q")  # ok attempts of known input size, and their peaks
        self.sized_peaks = array("q")
        self.kill_sizes = array("q")  # memory-killed attempts of known input size, and what they needed
        self.kill_needs = array("q")
        self.kill_limits = array("q")
        self.request: int | None = None
        self.limit: int | None = None
        self.waste_sum = 0
        self.waste_n = 0

    def add(self, outcome: str, peak: int | None, request: int | None, limit: int | None, size: int | None) -> None:
        known = size is not None and size >= 0
        if outcome in MEASURED and peak is not None:
            self.peaks.append(peak)
            if outcome == outcomes.OK and known:
                self.sizes.append(size)  # type: ignore[arg-type]
                self.sized_peaks.append(peak)
            if request is not None:
                self.waste_sum += max(0, request - peak)
                self.waste_n += 1
        elif outcome == KILLED and limit is not None:
            need = bump(limit)
            self.peaks.append(need)
            self.kills += 1
            if known:
                self.kill_sizes.append(size)  # type: ignore[arg-type]
                self.kill_needs.append(need)
                self.kill_limits.append(limit)
        else:
            return
        self.request, self.limit = request, limit


def _finish(key: tuple[str, str | None, str | None], acc: _Acc) -> Recommendation | None:
    name, dag_id, af_task_id = key
    if not acc.peaks:
        return None
    peaks = sorted(acc.peaks)
    median = quantile(peaks, REQUEST_QUANTILE)
    request = mib_up(median * REQUEST_MARGIN)
    limit = max(request, limit_for(peaks[-1]))
    if dag_id:
        request, limit = _airflow_floor(request, limit)
    fit = fit_sizes(acc.sizes, acc.sized_peaks, zip(acc.kill_sizes, acc.kill_needs, acc.kill_limits, strict=True))
    return Recommendation(
        task_name=name,
        samples=len(peaks),
        kills=acc.kills,
        request=request,
        limit=limit,
        p95_peak=int(quantile(peaks, 0.95)),
        max_peak=peaks[-1],
        current_request=acc.request,
        current_limit=acc.limit,
        waste=acc.waste_sum // acc.waste_n if acc.waste_n else 0,
        lack=max(0, limit - acc.limit) if acc.limit is not None else 0,
        confidence="low" if len(peaks) < LOW_CONFIDENCE else "ok",
        by_size=fit if isinstance(fit, SizeFit) else None,
        dag_id=dag_id,
        af_task_id=af_task_id,
        median_peak=int(median),
        size_note=fit if isinstance(fit, str) else None,
    )


def _airflow_floor(request: int, limit: int) -> tuple[int, int]:
    return max(request, AIRFLOW_TRY_FLOOR), max(limit, limit_for(AIRFLOW_TRY_FLOOR))


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
