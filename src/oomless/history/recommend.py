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

import bisect
import math
from array import array
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import outcomes
from ..units import MiB, format_size
from .attempt import task_label

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
]

#: the request's quantile of the samples: the median, what the task usually needs
REQUEST_QUANTILE = 0.5
REQUEST_MARGIN = 1.15
LIMIT_MARGIN = 1.2
#: VPA's OOM bump: a memory-killed attempt counts as needing at least this much more than its limit.
OOM_BUMP_FACTOR, OOM_BUMP_MIN = 1.2, 100 * MiB
FLOOR = 16 * MiB
#: The least an Airflow try runs under in cgroup mode: its task runner (forked by the supervisor,
#: importing the SDK and the DAG file) is charged 57 MiB before the task's code runs (Airflow 3.3,
#: measured; docs/airflow.md §3).  No Airflow task is recommended a request below it, nor a limit
#: below its × LIMIT_MARGIN: the watchdog measures a try's tree lower (the runner shares the
#: supervisor's pages), and a limit learned there would kill every try under a cgroup.
AIRFLOW_TRY_FLOOR = 64 * MiB
LOW_CONFIDENCE = 20  # samples
SIZE_FIT_MIN, SIZE_FIT_DISTINCT = 5, 3
#: a size fit is used when it explains at least this share of the variance of log peak
FIT_R2 = 0.5
#: inputs up to this many times the largest size seen count as inside the fitted range
RANGE_TOLERANCE = 1.1

#: outcomes whose peak is a sample of what the task needs
MEASURED = (outcomes.OK, outcomes.FAILED)
KILLED = outcomes.MEMORY_KILLED

#: (task_name, dag_id, af_task_id, outcome, peak_rss, request, limit, input_size, started_at), oldest first.
#: Airflow tries all run as one Celery task (execute_workload): they are grouped by (dag_id, af_task_id).
Sample = tuple[str, "str | None", "str | None", str, "int | None", "int | None", "int | None", "int | None", float]


def _mib_up(n: float) -> int:
    return max(FLOOR, int(math.ceil(n / MiB)) * MiB)


def limit_for(need: float) -> int:
    """The limit for a peak (or a kill's bumped need) of ``need`` bytes: × the limit margin, whole MiB."""
    return _mib_up(need * LIMIT_MARGIN)


def bump(limit: int) -> int:
    """What a task killed at ``limit`` is taken to need (VPA's OOM bump)."""
    return int(max(limit * OOM_BUMP_FACTOR, limit + OOM_BUMP_MIN))


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
class Sized:
    """The answer for one input size, and where it came from."""

    request: int
    limit: int
    #: "size-blind" (no size or no fit), "fitted", "below range" (the smallest size's answer),
    #: "above range" (the larger of the size-blind pair and the extrapolation)
    how: str


@dataclass(frozen=True)
class SizeFit:
    """Peak against input size: ``peak ≈ base + slope × size ** exponent`` (exponent 1: a line), with the
    margins as ratios of peak to fit."""

    base: float
    slope: float
    exponent: float
    ratio_mid: float  # median of peak ÷ fit (memory kills included as bumped samples)
    ratio_max: float  # largest
    r2: float  # share of the variance of log peak the fit explains
    samples: int  # ok attempts of known size
    kills: int  # memory-killed attempts of known size among the ratios
    smallest: int
    largest: int
    #: (size, need) of the memory kills, by size, each needing more than those before it: an input of that
    #: size or larger gets at least need × the limit margin
    floors: tuple[tuple[int, int], ...] = ()

    def peak(self, size: float) -> float:
        return self.base + self.slope * size ** self.exponent

    def pair(self, size: int) -> tuple[int, int]:
        """(request, limit) for ``size`` by the fit and the kills' floors (no range check)."""
        fit = self.peak(size)
        request = _mib_up(fit * self.ratio_mid * REQUEST_MARGIN)
        limit = limit_for(fit * self.ratio_max)
        at = bisect.bisect_right(self.floors, (size, math.inf)) - 1
        if at >= 0:
            limit = max(limit, limit_for(self.floors[at][1]))
        return request, max(request, limit)

    def request(self, size: int) -> int:
        return self.pair(size)[0]

    def limit(self, size: int) -> int:
        return self.pair(size)[1]

    def describe(self) -> str:
        """``30.0 MiB + 2.00 × size``, or ``20.0 MiB + 51.2 KiB × (size / 1 MiB) ** 1.5``."""
        if self.exponent == 1.0:
            return f"{format_size(int(self.base))} + {self.slope:.2f} × size"
        return f"{format_size(int(self.base))} + {format_size(int(self.slope * MiB ** self.exponent))} × " \
               f"(size / 1 MiB) ** {self.exponent:.1f}"


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


#: exponents tried for ``peak = base + slope × size ** exponent``: sub- to superlinear
EXPONENTS = tuple(round(0.5 + 0.1 * i, 1) for i in range(16))  # 0.5 … 2.0
FIT_SAMPLE = 4096


def _curve(xs: list[float], ys: list[float], exponent: float, smallest: float) -> tuple[float, float, float] | None:
    """(base, slope, exponent) with the least squared *relative* error (weights 1 / peak²), or ``None``
    when peak does not grow with size or the curve is not positive from ``smallest`` up."""
    zs = [(x / MiB) ** exponent for x in xs]  # in MiB: sizes ** 2 stay well inside a float's precision
    w = [1.0 / (y * y) for y in ys]
    sw = sum(w)
    sz = sum(wi * z for wi, z in zip(w, zs, strict=True))
    sy = sum(wi * y for wi, y in zip(w, ys, strict=True))
    szz = sum(wi * z * z for wi, z in zip(w, zs, strict=True))
    szy = sum(wi * z * y for wi, z, y in zip(w, zs, ys, strict=True))
    det = sw * szz - sz * sz
    if det <= 0:
        return None
    slope = (sw * szy - sz * sy) / det
    base = (sy - slope * sz) / sw
    if slope <= 0 or base + slope * (smallest / MiB) ** exponent <= 0:
        return None
    return base, slope / MiB ** exponent, exponent


def _fit(acc: _Acc) -> SizeFit | str | None:
    """The size fit of one task, or why there is none (``None``: no sizes were recorded)."""
    n = len(acc.sizes)
    if n == 0:
        return None
    if n < SIZE_FIT_MIN or len(set(acc.sizes)) < SIZE_FIT_DISTINCT:
        return f"{n} ok attempts of {len(set(acc.sizes))} input sizes: a size fit needs {SIZE_FIT_MIN} of " \
               f"{SIZE_FIT_DISTINCT}"
    pairs = [(float(x), float(max(y, 1))) for x, y in zip(acc.sizes, acc.sized_peaks, strict=True)]
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    logs = [math.log(y) for y in ys]
    mean = sum(logs) / n
    spread = sum((v - mean) ** 2 for v in logs)
    step = max(1, n // FIT_SAMPLE)  # the exponent is chosen on a few thousand samples, evenly spread
    some = pairs[::step]
    sx, sy = xs[::step], ys[::step]
    fits: dict[float, tuple[float, tuple[float, float, float]]] = {}
    for exponent in EXPONENTS:
        model = _curve(sx, sy, exponent, min(xs))
        if model is not None:
            base, slope, exp = model
            fits[exponent] = (sum(math.log(y / (base + slope * x ** exp)) ** 2 for x, y in some), model)
    if not fits:
        return "peak does not grow with input size"
    chosen = min(fits.values())
    if 1.0 in fits and fits[1.0][0] <= chosen[0] * 1.02:
        chosen = fits[1.0]  # a line, unless a curve explains the peaks clearly better
    base, slope, exp = chosen[1]
    err = sum(math.log(y / (base + slope * x ** exp)) ** 2 for x, y in pairs) if step > 1 else chosen[0]
    r2 = 1.0 - err / spread if spread > 0 else 0.0
    if r2 < FIT_R2:
        return f"input size explains {max(r2, 0.0):.0%} of the peaks' variance (a fit needs {FIT_R2:.0%})"

    def at(x: float) -> float:
        return base + slope * x ** exp

    # A kill at size s proves the task needed more than its limit there: its limit × 1.2 enters the ratios
    # (VPA's multiplicative bump), and the full bump, max(× 1.2, + 100 MiB), is a floor for s and larger
    # sizes (the additive part as a ratio would inflate every size after one kill of a small input).
    kills = sorted(zip(acc.kill_sizes, acc.kill_needs, acc.kill_limits, strict=True))
    ratios = sorted([y / at(x) for x, y in pairs] +
                    [limit * OOM_BUMP_FACTOR / at(max(size, min(xs))) for size, _, limit in kills])
    floors: list[tuple[int, int]] = []
    for size, need, _ in kills:
        if not floors or need > floors[-1][1]:
            floors.append((size, need))
    return SizeFit(base, slope, exp, quantile(ratios, REQUEST_QUANTILE), ratios[-1], r2, n, len(kills),
                   int(min(xs)), int(max(xs)), tuple(floors))


def _finish(key: tuple[str, str | None, str | None], acc: _Acc) -> Recommendation | None:
    name, dag_id, af_task_id = key
    if not acc.peaks:
        return None
    peaks = sorted(acc.peaks)
    median = quantile(peaks, REQUEST_QUANTILE)
    request = _mib_up(median * REQUEST_MARGIN)
    limit = max(request, limit_for(peaks[-1]))
    if dag_id:
        request, limit = _airflow_floor(request, limit)
    fit = _fit(acc)
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
