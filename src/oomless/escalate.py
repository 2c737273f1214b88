"""Escalation: the next attempt of a memory-killed task gets more memory (Nextflow-style).

``memory_retry=Escalate(factor=2, max="8GiB", attempts=3)`` on a task declared
``memory="1GiB"`` runs attempt 1 with 1 GiB, attempt 2 with 2 GiB, attempt 3
with 4 GiB; a third memory kill is final.  ``attempts`` counts every attempt,
the first included.  Request and limit are both multiplied (a task that needed
more than its limit needs more than its request too) and both capped at
``max``.  When the cap leaves the next limit no larger than the one that just
failed, there is no point in trying again: that failure is final too.

The message carries the attempt number and the limits tried so far, so each
retry is computed from the spec that failed.  No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidMemorySpec
from .spec import Memory
from .units import format_size, parse_size

__all__ = ["Escalate"]


@dataclass(frozen=True)
class Escalate:
    """Retry a memory-killed task with its memory multiplied by ``factor`` each attempt, up to ``max``."""

    factor: float
    max: int
    attempts: int

    def __init__(self, factor: float = 2.0, max: int | str = "16GiB", attempts: int = 3) -> None:  # noqa: A002
        try:
            factor = float(factor)
        except (TypeError, ValueError):
            raise InvalidMemorySpec(f"Escalate(factor={factor!r}) is not a number; use e.g. factor=2") from None
        if not factor > 1:
            raise InvalidMemorySpec(
                f"Escalate(factor={factor}) must be larger than 1, or the next attempt gets no more memory"
            )
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidMemorySpec(
                f"Escalate(attempts={attempts!r}) must be a whole number >= 1 (the first attempt counts)"
            )
        try:
            cap = parse_size(max, "Escalate(max=...)")
        except ValueError as exc:
            raise InvalidMemorySpec(str(exc)) from None
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "max", cap)
        object.__setattr__(self, "attempts", attempts)

    def after(self, failed: Memory, attempt: int) -> Memory | None:
        """The spec to retry with after attempt number ``attempt`` ran with ``failed`` and was
        memory-killed, or ``None`` when that failure is final."""
        if attempt >= self.attempts or failed.limit is None:
            return None
        limit = min(self.max, int(failed.limit * self.factor))
        if limit <= failed.limit:
            return None  # capped at max: the same limit would fail the same way
        request = None if failed.request is None else min(limit, int(failed.request * self.factor))
        return Memory(request=request, limit=limit)

    def __str__(self) -> str:
        return f"Escalate(factor={self.factor:g}, max={format_size(self.max)}, attempts={self.attempts})"
