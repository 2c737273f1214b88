"""Admission by memory request: who may start now, who waits, who is given back.

A worker has a *budget* (bytes) and a number of *slots* (pool processes, the
``--concurrency`` ceiling).  A task starts only when a slot is free and its
request fits the budget left (budget − requests of the tasks running).  The
others wait here in priority, then arrival, order.

Backfill: while the task at the front cannot fit, smaller ones behind it that
do fit may start.  That could starve a large task for ever behind a stream of
small ones, so backfill is bounded: a task that has waited ``backfill_window``
seconds becomes a *barrier* — nothing behind it starts until it has.  The
memory of the tasks already running then drains towards it, so (with equal
priorities) a feasible task that arrived with ``k`` tasks ahead of it starts
within ``backfill_window + (k + 1) × D`` seconds, D being the longest task
duration.  ``tests/unit/test_admission.py`` checks that bound by simulation.

Give-back: a waiting task that cannot fit and has waited ``give_back_after``
seconds here is handed back (to the broker, by the caller) so that a worker
with room may run it.  Its earlier wait travels with it (``waited``), so its
age, and therefore the backfill bound, survives the hop.

This module does no I/O and reads no clock: every call takes ``now``.  Not
covered here: how a task's memory is *used* (enforcement, eviction), or how
messages are fetched (the Celery glue, ``oomless.celery.gate``).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["Admission", "Waiting", "Infeasible"]


class Infeasible(ValueError):
    """A request larger than the whole budget: it could never start here."""


@dataclass(order=True)
class Waiting:
    """A task that waits for a slot or for memory."""

    order: tuple[int, int]  # (priority key, arrival sequence): lower starts first
    key: Hashable = field(compare=False)
    request: int = field(compare=False)
    since: float = field(compare=False)  # when it started waiting, counting waits on other workers
    here: float = field(compare=False)  # when it arrived at this worker


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
        self.slots = slots
        self.backfill_window = backfill_window
        self.give_back_after = give_back_after
        self.reserved = 0
        self.running: dict[Hashable, int] = {}
        self.waiting: list[Waiting] = []
        self._seq = 0

    # -- what the worker asks --------------------------------------------------
    @property
    def free_slots(self) -> int:
        """Slots not taken by a running task (negative after the pool shrank under them)."""
        return self.slots - len(self.running)

    @property
    def free(self) -> int:
        """Bytes of the budget not reserved by running tasks."""
        return self.budget - self.reserved

    def blocked(self) -> int:
        """How many waiting tasks cannot fit in the memory free now."""
        free = self.free
        return sum(1 for w in self.waiting if w.request > free)

    def oldest_wait(self, now: float) -> float:
        """Seconds the longest-waiting task has waited (0 when none waits)."""
        return max((now - w.since for w in self.waiting), default=0.0)

    # -- events ---------------------------------------------------------------
    def submit(self, key: Hashable, request: int, now: float, priority: int = 0, waited: float = 0.0) -> list[Hashable]:
        """A task arrives; returns the keys that start now (this one, or none).

        ``priority`` is a sort key, lower first.  ``waited`` is how long it
        already waited on other workers (it keeps its age).  Raises
        :class:`Infeasible` when ``request`` is larger than the budget.
        """
        if request > self.budget:
            raise Infeasible(f"request {request} is larger than the budget {self.budget}")
        self._seq += 1
        # Fast path: nothing waits, a slot is free and it fits.
        if not self.waiting and self.free_slots > 0 and request <= self.free:
            self._start(key, request)
            return [key]
        bisect.insort(self.waiting, Waiting((priority, self._seq), key, request, now - max(0.0, waited), now))
        return self.drain(now)

    def finish(self, key: Hashable, now: float) -> list[Hashable]:
        """A running task ended (its slot and memory are free); returns the keys that start now."""
        request = self.running.pop(key, None)
        if request is not None:
            self.reserved -= request
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
        """Start what may start, in order; backfill until a barrier."""
        started: list[Hashable] = []
        i = 0
        while i < len(self.waiting) and self.free_slots > 0:
            w = self.waiting[i]
            if w.request <= self.free:
                del self.waiting[i]
                self._start(w.key, w.request)
                started.append(w.key)
                continue
            if now - w.since >= self.backfill_window:
                break  # a barrier: nothing behind it may start before it
            i += 1
        return started

    def give_back(self, now: float) -> list[Waiting]:
        """Remove and return the waiting tasks that cannot fit and waited ``give_back_after`` here."""
        if self.give_back_after is None or not self.waiting:
            return []
        free = self.free
        out = [w for w in self.waiting if w.request > free and now - w.here >= self.give_back_after]
        if out:
            self.waiting = [w for w in self.waiting if w not in out]
        return out

    def _start(self, key: Hashable, request: int) -> None:
        self.reserved += request
        self.running[key] = request
