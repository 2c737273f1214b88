"""Admission by memory request: who may start now, who waits, who is given back.

A worker has a *budget* (bytes) and a number of *slots* (pool processes, the
``--concurrency`` ceiling).  A task starts only when a slot is free and its
request fits the budget left (budget − requests of the tasks running).  The
others wait here.

Order: by priority, then arrival.  (Starting the largest request that fits
first instead, best fit, was measured and not kept: in a simulation of this
logic on ``bench/packing.py``'s workloads, six seeds each, it gained 1.9 % of
makespan where every request is different and durations cannot be learned,
and lost 4.4 % on the default workload, whose small tasks it left for the
end, where the slots, not the memory, then limit them.)

Backfill: while the task at the front cannot fit, the ones behind it that do
fit may start.  That could starve a task for ever behind a stream of others,
so backfill is bounded: a task that has waited ``backfill_window`` seconds is
*due*; due tasks go first, longest wait first (waits on other workers
count), and one that cannot fit is a *barrier* — nothing behind it starts
until it has.  The memory of the tasks already running then drains towards
it, so (with equal priorities) a feasible task that arrived with ``k`` tasks
ahead of it starts within ``backfill_window + (k + 1) × D`` seconds, D being
the longest task duration.  ``tests/admission/test_queue.py`` checks that bound by simulation.

Give-back: a waiting task that cannot fit and has waited ``give_back_after``
seconds here is handed back (to the broker, by the caller) so that a worker
with room may run it.  Its earlier wait travels with it (``waited``), so its
age, and therefore the backfill bound, survives the hop.

This module does no I/O and reads no clock: every call takes ``now``.  Not
covered here: how a task's memory is *used* (enforcement, eviction), or how
messages are fetched (the Celery glue, ``oomless.celery.gate`` and ``oomless.celery.fetch``).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Hashable
from dataclasses import dataclass, field

from ..units import format_size

__all__ = ["Admission", "Waiting", "Infeasible"]

_since = operator.attrgetter("since")


class Infeasible(ValueError):
    """A request larger than the whole budget: it could never start here."""


@dataclass(order=True)
class Waiting:
    """A task that waits for a slot or for memory."""

    order: tuple[int, int]  # (priority key, arrival sequence): the arrival order, lower first
    key: Hashable = field(compare=False)
    request: int = field(compare=False)
    since: float = field(compare=False)  # when it started waiting, counting waits on other workers
    here: float = field(compare=False)  # when it arrived at this worker
    kind: Hashable = field(default=None, compare=False)  # tasks of a kind take about as long


class Admission:
    """The memory ledger and wait queue of one worker (see the module docstring)."""

    def __init__(
        self,
        budget: int,
        slots: int,
        backfill_window: float = 60.0,
        give_back_after: float | None = None,
    ) -> None:
        if budget <= 0 or slots < 0:
            raise ValueError(f"budget {budget} and slots {slots} must be positive")
        self.budget = budget
        #: the largest budget this worker has had: a request above it is infeasible
        self.capacity = budget
        self.slots = slots
        self.backfill_window = backfill_window
        self.give_back_after = give_back_after
        self.reserved = 0
        self.running: dict[Hashable, int] = {}
        self.waiting: list[Waiting] = []
        self._largest = 0  # at least the largest request waiting (exact after a scan found none blocked)
        self._seq = 0
        self._runs: dict[Hashable, tuple[float, Hashable]] = {}  # key -> (start, kind)
        #: kind -> how long its tasks take here (moving average of what was seen)
        self.estimates: dict[Hashable, float] = {}

    # -- what the worker asks --------------------------------------------------
    @property
    def free_slots(self) -> int:
        """Slots not taken by a running task (negative after the pool shrank under them)."""
        return self.slots - len(self.running)

    @property
    def free(self) -> int:
        """Bytes of the budget not reserved by running tasks (negative after the budget shrank under them)."""
        return self.budget - self.reserved

    def cannot_fit(self) -> list[Waiting]:
        """The waiting tasks that cannot fit in the memory free now, in order."""
        free = self.free
        if not self.waiting or self._largest <= free:
            return []  # the common case, asked several times per task: no scan
        found = [w for w in self.waiting if w.request > free]
        if not found:
            self._largest = max(w.request for w in self.waiting)  # the bound was stale: make it exact
        return found

    def blocked(self) -> int:
        """How many waiting tasks cannot fit in the memory free now."""
        return len(self.cannot_fit())

    def describe(self, request: int | None = None) -> str:
        """``request 1.0 GiB, free 2.0 GiB of 6.0 GiB, 1 of 4 slots free, 3 waiting`` (for log lines)."""
        return (
            ("" if request is None else f"request {format_size(request)}, ")
            + f"free {format_size(self.free)} of {format_size(self.budget)}, "
            f"{self.free_slots} of {self.slots} slots free, {len(self.waiting)} waiting"
        )

    # -- events ---------------------------------------------------------------
    def submit(
        self, key: Hashable, request: int, now: float, priority: int = 0, waited: float = 0.0, kind: Hashable = None
    ) -> list[Hashable]:
        """A task arrives; returns the keys that start now (this one, or none).

        ``priority`` is a sort key, lower first.  ``waited`` is how long it
        already waited on other workers (it keeps its age).  ``kind`` groups
        tasks that take about as long (e.g. task name and request).  Raises
        :class:`Infeasible` when ``request`` is larger than the budget ever was;
        one that only exceeds a budget that shrank waits for it to grow back.
        """
        if request > self.capacity:
            raise Infeasible(f"request {request} is larger than the budget {self.capacity}")
        self._seq += 1
        # Fast path: nothing waits, a slot is free and it fits.
        if not self.waiting and self.free_slots > 0 and request <= self.free:
            self._start(key, request, now, kind)
            return [key]
        bisect.insort(self.waiting, Waiting((priority, self._seq), key, request, now - max(0.0, waited), now, kind))
        self._largest = max(self._largest, request)
        return self.drain(now)

    def finish(self, key: Hashable, now: float) -> list[Hashable]:
        """A running task ended (its slot and memory are free); returns the keys that start now."""
        request = self.running.pop(key, None)
        if request is not None:
            self.reserved -= request
            start, kind = self._runs.pop(key)
            if kind is not None:
                took = max(0.0, now - start)
                seen = self.estimates.get(kind)
                self.estimates[kind] = took if seen is None else (seen + took) / 2
        return self.drain(now)

    def set_budget(self, budget: int, now: float) -> list[Hashable]:
        """The budget moved (the worker's footprint changed); returns the keys that start now.

        Running tasks are never stopped here: a budget that shrank below what
        they reserve only keeps new ones waiting until enough of them end.
        """
        self.budget = max(0, budget)
        self.capacity = max(self.capacity, self.budget)
        return self.drain(now)

    def resize(self, slots: int, now: float) -> list[Hashable]:
        """The pool grew or shrank (autoscale)."""
        self.slots = max(0, slots)
        return self.drain(now)

    def forget(self, key: Hashable) -> bool:
        """Drop a waiting task (revoked, or handed back); ``True`` if it was waiting."""
        for i, w in enumerate(self.waiting):
            if w.key == key:
                del self.waiting[i]
                return True
        return False

    def drain(self, now: float) -> list[Hashable]:
        """Start what may start, in order; backfill (EASY-style) until a barrier.

        The first task that cannot fit gets a reservation: the moment the
        running tasks will have freed enough for it, by the durations seen for
        their kinds.  A task behind it may start now only if it is expected to
        end before then, or fits beside it at that moment.  Without estimates
        for every running task there is no reservation and any task that fits
        may pass; the backfill window bounds both cases.
        """
        started: list[Hashable] = []
        if not self.waiting or self.free_slots <= 0:
            return started  # the common case of a busy worker: every slot taken
        shadow: tuple[float, int] | None = None  # (when the first blocked task can start, memory spare then)
        blocked = False
        for w in self._turns(now):
            if self.free_slots <= 0:
                break
            if w.request <= self.free and (shadow is None or self._keeps_reservation(w, now, shadow)):
                if shadow is not None and not self._ends_before(w, now, shadow[0]):
                    shadow = (shadow[0], shadow[1] - w.request)
                self.waiting.remove(w)
                self._start(w.key, w.request, now, w.kind)
                started.append(w.key)
                continue
            if w.request > self.free:
                if now - w.since >= self.backfill_window:
                    break  # a barrier: nothing behind it may start before it
                if not blocked:
                    blocked = True
                    shadow = self._shadow(w.request, now)
        return started

    def _turns(self, now: float) -> list[Waiting]:
        """The waiting tasks in the order they may start: by priority; within it, the due ones
        (waited ``backfill_window``) longest wait first (waits on other workers count), then the
        others in arrival order."""
        if len(self.waiting) < 2:
            return list(self.waiting)
        window = self.backfill_window
        if now - min(self.waiting, key=_since).since < window:
            return list(self.waiting)  # none is due: the arrival order, which the list keeps

        def turn(w: Waiting) -> tuple[int, int, float, int]:
            priority, seq = w.order
            return (priority, 0, w.since, seq) if now - w.since >= window else (priority, 1, 0.0, seq)

        return sorted(self.waiting, key=turn)

    def _ends_before(self, w: Waiting, now: float, when: float) -> bool:
        took = self.estimates.get(w.kind) if w.kind is not None else None
        return took is not None and now + took <= when

    def _keeps_reservation(self, w: Waiting, now: float, shadow: tuple[float, int]) -> bool:
        return self._ends_before(w, now, shadow[0]) or w.request <= shadow[1]

    def _shadow(self, need: int, now: float) -> tuple[float, int] | None:
        """When ``need`` bytes will be free, and how much more is spare then (``None``: unknown)."""
        ends = []
        for key, request in self.running.items():
            start, kind = self._runs[key]
            took = self.estimates.get(kind) if kind is not None else None
            if took is None:
                return None
            ends.append((max(now, start + took), request))
        free = self.free
        for end, request in sorted(ends, key=lambda e: e[0]):
            free += request
            if free >= need:
                return end, free - need
        return None

    def overdue(self, now: float) -> list[Waiting]:
        """The waiting tasks that cannot fit and waited ``give_back_after`` here: the caller may hand
        them back (and :meth:`forget` them) or keep them waiting."""
        if self.give_back_after is None or not self.waiting:
            return []
        return [w for w in self.cannot_fit() if now - w.here >= self.give_back_after]

    def _start(self, key: Hashable, request: int, now: float, kind: Hashable) -> None:
        self.reserved += request
        self.running[key] = request
        self._runs[key] = (now, kind)
