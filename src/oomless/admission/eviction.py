"""When the worker is under memory pressure, and which task to evict (kubelet-style).

A task's *request* is what admission reserved for it; its *limit* may be
higher (overcommit), and a task with no limit may grow without bound.  So the
tasks together can use more than the budget although every one is within its
limit.  Before the kernel has to act, the governor evicts one task: the one
most over its request (kubelet ranks pods the same way: usage above request
first), the newest on a tie (it has the least work to lose).  An evicted task
is requeued, not failed: it broke no promise of its own.

Pressure, either of:

* the tasks together use more than the budget (what the operator promised the
  host they would use at most);
* the memory still available to the worker (its cgroup's limit minus its
  working set, or the machine's MemAvailable) is below ``margin``.

No I/O here; the enforcers feed it readings.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from ..units import format_size

__all__ = ["Use", "pressure", "choose_victim"]


@dataclass(frozen=True)
class Use:
    """One running task as the monitor sees it."""

    key: Hashable
    request: int  # 0 when the task declared none
    used: int  # bytes its process tree holds above the slot's baseline
    started: float = 0.0  # a monotonic time, for the tie-break

    @property
    def over(self) -> int:
        return self.used - self.request


def pressure(total_used: int, budget: int, available: int | None = None, margin: int = 0) -> str | None:
    """Why the worker is under memory pressure (a sentence with the numbers), or ``None``."""
    if total_used > budget:
        return f"its tasks use {format_size(total_used)}, more than the budget of {format_size(budget)}"
    if available is not None and available < margin:
        return (
            f"only {format_size(max(0, available))} is available to the worker, less than the "
            f"eviction margin of {format_size(margin)}"
        )
    return None


def choose_victim(tasks: Iterable[Use]) -> Use | None:
    """The task to evict: the most over its request, the newest on a tie; ``None`` if none runs."""
    best: Use | None = None
    for t in tasks:
        if best is None or (t.over, t.started) > (best.over, best.started):
            best = t
    return best
