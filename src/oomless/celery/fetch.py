"""No hoarding: how much the broker may still send a worker whose tasks wait for memory.

While nothing waits for memory (tasks may wait for a slot), Celery's own
prefetch applies untouched.  While tasks wait for memory, the prefetch of
Celery's QoS is held at what the worker holds unacknowledged plus the room
left for waiting tasks that cannot fit (``max_waiting``; none just after a
give-back), so a burst cannot arrive when the room opens.  What was taken back
is given back as soon as nothing waits for memory.  Works the same with early
and late acks.

Used by :class:`oomless.celery.gate.MemoryGate`, which tells it when the ledger
moved; this module only turns the ledger into a prefetch.  It logs through the
gate's logger (``oomless.celery.gate``): stopping and resuming fetches is
admission's chatter, quieted with it.
"""

from __future__ import annotations

import logging
from typing import Any

from ..admission import Admission

__all__ = ["FetchControl"]


class FetchControl:
    """Celery's prefetch, held back while tasks wait for memory."""

    def __init__(self, admission: Admission, max_waiting: int, log: logging.Logger) -> None:
        self.adm = admission
        self.max_waiting = max_waiting
        #: the gate's logger: its lines are admission's, quieted with it (``oomless.celery.gate``)
        self.log = log
        self.consumer: Any = None  # Celery's consumer: its ``qos`` is the prefetch
        self.held_back = 0  # prefetch taken back from Celery's QoS while not fetching
        self.stopped = False  # not fetching
        self.quiet_until = 0.0  # after a give-back: fetch nothing before this (or a task ends)
        self._said = -1e9  # when "stopped fetching" was last logged at INFO

    def reset(self) -> None:
        """A (re)connection or a lost one: Celery builds a new QoS object, with its own prefetch."""
        self.held_back, self.stopped = 0, False

    def update(self, now: float) -> None:
        """The ledger moved: take prefetch back, or give it back."""
        adm = self.adm
        quiet = now < self.quiet_until
        blocked = adm.blocked()
        if not blocked and not quiet and not self.held_back and not self.stopped:
            return  # the common case: nothing waits for memory, and nothing is held back
        qos = getattr(self.consumer, "qos", None)
        if qos is None:
            return
        if not blocked and not quiet:
            # Nothing waits for memory (tasks waiting for a slot are Celery's own prefetch).
            want = 0
            stop = False
        else:
            room = 0 if quiet else max(0, self.max_waiting - blocked)
            stop = room == 0
            running: Any = adm.running  # the ledger's keys are Celery requests
            held = len(adm.waiting) + sum(1 for r in running if not r.acknowledged)
            base = qos.value + self.held_back  # what Celery's own prefetch is now
            want = max(0, base - max(1, held + room))
        if want > self.held_back:
            before = qos.value
            qos.decrement_eventually(want - self.held_back)  # never below 1 (0 would mean "no limit")
            self.held_back += before - qos.value
        elif want < self.held_back:
            before = qos.value
            qos.increment_eventually(self.held_back - want)
            self.held_back -= qos.value - before
        if stop != self.stopped:
            self.stopped = stop
            # Under steady pressure this flips once per task: say so at most every 10 s.
            level = logging.INFO if now - self._said >= 10 else logging.DEBUG
            if stop and self.log.isEnabledFor(level):
                why = "just gave a task back" if quiet else f"{blocked} waiting cannot fit"
                self.log.log(level, "oomless: stopped fetching: %s (%s)", why, adm.describe())
                self._said = now if level == logging.INFO else self._said
            elif not stop and self.log.isEnabledFor(level):
                self.log.log(level, "oomless: fetching again: %s", adm.describe())
