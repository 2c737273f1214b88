"""Peak against input size: the margins of a recommendation, and the fit that scales them with the input.

What :mod:`oomless.history.recommend` builds on (its docstring says the method):

* the margins (request = median × 1.15, limit = peak × 1.2, whole MiB, never below 16 MiB) and VPA's
  OOM bump for a memory-killed attempt;
* :func:`fit_sizes`: ``peak ≈ base + slope × size ** exponent``, least squares on relative errors over
  exponents 0.5 … 2, kept only when it explains the peaks (:data:`FIT_R2`).

Pure arithmetic over numbers; no rows, no store.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..units import MiB, format_size

__all__ = ["SizeFit", "fit_sizes", "mib_up", "limit_for", "bump", "quantile", "REQUEST_QUANTILE",
           "REQUEST_MARGIN", "LIMIT_MARGIN", "FLOOR", "FIT_R2", "OOM_BUMP_FACTOR", "OOM_BUMP_MIN"]

#: the request's quantile of the samples: the median, what the task usually needs
REQUEST_QUANTILE = 0.5
REQUEST_MARGIN = 1.15
LIMIT_MARGIN = 1.2
#: VPA's OOM bump: a memory-killed attempt counts as needing at least this much more than its limit.
OOM_BUMP_FACTOR, OOM_BUMP_MIN = 1.2, 100 * MiB
FLOOR = 16 * MiB
SIZE_FIT_MIN, SIZE_FIT_DISTINCT = 5, 3
#: a size fit is used when it explains at least this share of the variance of log peak
FIT_R2 = 0.5


def mib_up(n: float) -> int:
    return max(FLOOR, int(math.ceil(n / MiB)) * MiB)


def limit_for(need: float) -> int:
    """The limit for a peak (or a kill's bumped need) of ``need`` bytes: × the limit margin, whole MiB."""
    return mib_up(need * LIMIT_MARGIN)


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
        request = mib_up(fit * self.ratio_mid * REQUEST_MARGIN)
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


def fit_sizes(sizes: Sequence[int], peaks: Sequence[int],
              kills: Iterable[tuple[int, int, int]] = ()) -> SizeFit | str | None:
    """The size fit of one task, or why there is none (``None``: no sizes were recorded).

    ``sizes`` and ``peaks`` are its ok attempts of known input size; ``kills`` its memory kills of known size,
    each (size, need, limit), ``need`` being :func:`bump` of ``limit``.
    """
    n = len(sizes)
    if n == 0:
        return None
    if n < SIZE_FIT_MIN or len(set(sizes)) < SIZE_FIT_DISTINCT:
        return f"{n} ok attempts of {len(set(sizes))} input sizes: a size fit needs {SIZE_FIT_MIN} of " \
               f"{SIZE_FIT_DISTINCT}"
    pairs = [(float(x), float(max(y, 1))) for x, y in zip(sizes, peaks, strict=True)]
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
    known_kills = sorted(kills)
    ratios = sorted([y / at(x) for x, y in pairs] +
                    [limit * OOM_BUMP_FACTOR / at(max(size, min(xs))) for size, _, limit in known_kills])
    floors: list[tuple[int, int]] = []
    for size, need, _ in known_kills:
        if not floors or need > floors[-1][1]:
            floors.append((size, need))
    return SizeFit(base, slope, exp, quantile(ratios, REQUEST_QUANTILE), ratios[-1], r2, n, len(known_kills),
                   int(min(xs)), int(max(xs)), tuple(floors))
