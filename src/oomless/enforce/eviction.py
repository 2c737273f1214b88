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
  working set, or the machine's MemAvailable) is below ``margin``;
* cgroup v2, the worker's own group (:func:`group_pressure`): the kernel found
  it out of memory, or it is at its own ``memory.max``/``memory.high`` while
  its tasks stall on memory (PSI).  Stalls behind a slot's own limit (a task
  near its limit) do not count: they raise no event of the worker's group.

No I/O here; the enforcers feed it readings.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from ..units import format_size

__all__ = ["Use", "pressure", "group_pressure", "choose_victim", "PSI_FULL", "PSI_SOME"]

#: PSI thresholds (% of the time over a few seconds): every task of the group stalled on memory / at least one.
PSI_FULL, PSI_SOME = 5.0, 20.0


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
        return (f"its tasks use {format_size(total_used)}, {format_size(total_used - budget)} more than the budget "
                f"of {format_size(budget)}")
    if available is not None and available < margin:
        return (
            f"only {format_size(max(0, available))} is available to the worker, less than the "
            f"eviction margin of {format_size(margin)}"
        )
    return None


def group_pressure(events: dict[str, int], some: float | None, full: float | None) -> str | None:
    """cgroup v2: why the worker's own group is under memory pressure, or ``None``.

    ``events``: how much each ``memory.events.local`` counter grew over the last few seconds;
    ``some``, ``full``: the % of that time some / all of the group's tasks stalled on memory (PSI;
    ``None``: no PSI on this kernel).
    """
    if events.get("oom", 0) > 0:
        return f"the kernel found the worker's cgroup out of memory ({events['oom']} time(s) since the last look)"
    at = [name for name in ("max", "high") if events.get(name, 0) > 0]
    if not at:
        return None
    if full is not None and full >= PSI_FULL:
        return (f"the worker's cgroup is at its memory.{at[0]} and all its tasks stall on memory "
                f"{full:.1f} % of the time (PSI full)")
    if some is not None and some >= PSI_SOME:
        return (f"the worker's cgroup is at its memory.{at[0]} and its tasks stall on memory "
                f"{some:.1f} % of the time (PSI some)")
    return None


def choose_victim(tasks: Iterable[Use]) -> Use | None:
    """The task to evict: the most over its request, the newest on a tie; ``None`` if none runs."""
    best: Use | None = None
    for t in tasks:
        if best is None or (t.over, t.started) > (best.over, best.started):
            best = t
    return best
