"""The admission gate: Celery's slot semaphore, made memory-aware.

Celery's prefork worker waits on a ``LaxBoundedSemaphore(concurrency)``
before it sends a task to the pool; billiard releases that semaphore whenever
a job ends or a pool process exits.  :class:`MemoryGate` takes that
semaphore's place (same interface, put there by
:func:`oomless.celery.compat.replace_slot_semaphore`), so a task
starts only when a slot is free *and* its request fits the budget left.  The
decisions are :class:`oomless.admission.Admission`'s; this module adds the
clock, the logging, and the three things the broker needs:

* **no hoarding**: when ``max_waiting`` tasks wait that cannot fit, the gate
  takes prefetch back from Celery's QoS so the broker sends nothing more
  until they start (with early acks and late acks alike);
* **give back**: a task that cannot fit beyond ``max_waiting`` (RabbitMQ
  pushes messages before the stop takes effect), or that has waited
  ``give_back_after`` seconds while its queue on the broker is empty, is
  republished (with its age) and acknowledged, so a worker with room may run
  it; the gate then fetches nothing until a task here ends or another
  ``give_back_after`` passes, so the message is not simply taken back (behind
  a backlog it would only lose its turn: it is kept);
* **reconcile**: once a second, a task the gate still counts as running that
  Celery no longer holds is released (a safety net; every normal end calls
  :meth:`MemoryGate.finish`).

Only pools that use that semaphore (prefork) get a gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kombu.asynchronous.semaphore import LaxBoundedSemaphore

from ..admission import Admission
from ..units import format_size
from . import compat
from .fetch import FetchControl
from .republish import WAITED, header_float, ready_messages, republish

if TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger(__name__)

__all__ = ["MemoryGate"]


def _request(req: Any) -> int:
    return req.oomless_spec.request or 0


class MemoryGate(LaxBoundedSemaphore):
    """Admits a task to the pool when a slot is free and its memory request fits."""

    def __init__(
        self,
        admission: Admission,
        max_waiting: int,
        higher_priority_first: bool,
        refuse: Callable[[Any], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Not LaxBoundedSemaphore.__init__: value and initial_value are views of the ledger here.
        self.adm = admission
        self._sign = -1 if higher_priority_first else 1
        self._refuse = refuse
        #: the gate's clock (monotonic seconds)
        self.clock = clock
        self._callbacks: dict[Any, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = {}
        self._hub: Any = None
        self._drain_scheduled = False
        #: no hoarding: Celery's prefetch, held back while tasks wait for memory
        self.fetch = FetchControl(admission, max_waiting, logger)
        self._queued_at: dict[Any, float] = {}  # waiting request -> when it started waiting (any worker)
        self._kept: set[Any] = set()  # overdue requests kept here because their queue has a backlog (logged once)
        self._for_memory: set[Any] = set()  # waiting requests that arrived when their request did not fit
        #: called with the seconds a task waited when it is admitted after waiting (metrics)
        self.on_admitted: Callable[[float], None] | None = None

    @classmethod
    def for_worker(cls, w: Any, settings: Settings, refuse: Callable[[Any], None]) -> MemoryGate | None:
        """The gate of the Celery worker ``w``, put in place of its slot semaphore (``None`` where
        admission is off or the pool uses no semaphore)."""
        if not settings.admission or not compat.uses_slot_semaphore(w):
            logger.info(
                "oomless: admission by memory is off (%s)",
                "oomless_admission=False" if not settings.admission else "this pool does not use Celery's semaphore",
            )
            return None
        slots = int(w.min_concurrency or w.concurrency or 1)
        adm = Admission(settings.budget.bytes, slots, settings.backfill_window, settings.give_back_after)
        # AMQP delivers higher priority numbers first; Redis lower ones (kombu's emulation)
        driver = w.app.connection_for_read().transport.driver_type
        gate = cls(adm, settings.max_waiting or slots, higher_priority_first=driver == "amqp", refuse=refuse)
        compat.replace_slot_semaphore(w, gate)
        logger.info(
            "oomless: admission by memory: %d slots, budget %s; at most %d waiting that cannot fit; "
            "backfill window %g s; give back after %s",
            slots, format_size(adm.budget), gate.max_waiting, adm.backfill_window,
            f"{adm.give_back_after:g} s" if adm.give_back_after else "never",
        )
        return gate

    @property
    def max_waiting(self) -> int:
        """How many tasks that cannot fit may wait here (fetching stops at that many)."""
        return self.fetch.max_waiting

    @property
    def stopped(self) -> bool:
        """Whether the gate has stopped fetching (prefetch held back while tasks wait for memory)."""
        return self.fetch.stopped

    # -- LaxBoundedSemaphore's interface, as Celery and billiard use it -------
    @property
    def value(self) -> int:  # type: ignore[override]
        return self.adm.free_slots

    @property
    def initial_value(self) -> int:  # type: ignore[override]
        return self.adm.slots

    def acquire(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        req = args[0]
        if getattr(req, "oomless_error", None) is not None:
            self._refuse(req)  # never takes a slot; failed or re-routed
            return False
        now = self.clock()
        request = _request(req)
        priority = req.delivery_info.get("priority") or 0
        if not isinstance(priority, int):
            priority = 0
        waited = header_float(req, WAITED)
        started = self.adm.submit(req, request, now, self._sign * priority, waited, kind=(req.name, request))
        if started == [req]:
            if request and logger.isEnabledFor(logging.DEBUG):
                logger.debug("oomless: admitted %s[%s]: %s", req.name, req.id, self.adm.describe(request))
            callback(*args, **kwargs)
            return True
        self._callbacks[req] = (callback, args, kwargs)
        self._queued_at[req] = now - waited
        if req not in started:
            if request > self.adm.free:
                # Held for memory: worth a line.  Waiting for a slot is Celery's prefetch, said at DEBUG.
                self._for_memory.add(req)
                logger.info("oomless: %s[%s] waits (its request does not fit): %s",
                            req.name, req.id, self.adm.describe(request))
            elif logger.isEnabledFor(logging.DEBUG):
                logger.debug("oomless: %s[%s] waits (no free slot): %s", req.name, req.id, self.adm.describe(request))
        self._start(started, now)
        self._trim(now)
        self.fetch.update(now)
        return req in started

    def _trim(self, now: float) -> None:
        """Give back at once what cannot fit beyond ``max_waiting`` (RabbitMQ pushes ahead of the stop)."""
        if len(self.adm.waiting) <= self.max_waiting:
            return
        for w in self.adm.cannot_fit()[self.max_waiting:]:
            self._give_back(w.key, now - w.since)

    def release(self) -> None:
        """billiard: a job ended or a pool process exited.  Slots follow :meth:`finish`; just look again
        (not when every slot is taken: billiard releases before the job's end reaches :meth:`finish`,
        which then looks itself)."""
        if self.adm.waiting and self.adm.free_slots > 0:
            self._schedule_drain()

    def grow(self, n: int = 1) -> None:
        self._start(self.adm.resize(self.adm.slots + n, self.clock()), self.clock())

    def shrink(self, n: int = 1) -> None:
        self.adm.resize(self.adm.slots - n, self.clock())

    def set_budget(self, budget: int) -> None:
        """The worker's budget moved: admit what now fits (or hold what no longer does)."""
        now = self.clock()
        self._start(self.adm.set_budget(budget, now), now)
        self.fetch.update(now)

    def clear(self) -> None:
        """Celery, on losing the broker connection: waiting messages return to the broker by themselves."""
        self.adm.waiting.clear()
        self._callbacks.clear()
        self._queued_at.clear()
        self._kept.clear()
        self._for_memory.clear()
        self.fetch.reset()

    def __repr__(self) -> str:
        return (
            f"<MemoryGate slots {self.adm.free_slots}/{self.adm.slots} free, memory "
            f"{format_size(self.adm.free)}/{format_size(self.adm.budget)} free, {len(self.adm.waiting)} waiting>"
        )

    # -- oomless ----------------------------------------------------------------
    def finish(self, req: Any) -> None:
        """``req`` ended (or never ran): free its slot and memory, start what now fits."""
        now = self.clock()
        if req in self.adm.running:
            self.fetch.quiet_until = 0.0  # memory freed here: worth fetching again
            self._start(self.adm.finish(req, now), now)
            self.fetch.update(now)
        elif self.adm.forget(req):
            self._drop(req)
            self.fetch.update(now)

    def register(self, hub: Any, consumer: Any) -> None:
        """Called on every (re)connection of the worker's event loop."""
        self._hub = hub
        self.fetch.consumer = consumer
        self.fetch.reset()
        hub.call_repeatedly(1.0, self.tick)

    def tick(self) -> None:
        """Once a second: reconcile with Celery, give back what waited too long, fetch or not."""
        from celery.worker.state import reserved_requests

        now = self.clock()
        req: Any  # the ledger's keys are Celery requests
        gone = [req for req in self._running() if req not in reserved_requests]
        for req in gone:
            logger.warning("oomless: %s[%s] ended without telling the gate; its slot and memory are freed",
                           req.name, req.id)
            self.finish(req)
        backlog: dict[Any, int | None] = {}  # routing key -> messages ready in its queue
        for waiting in self.adm.overdue(now):
            req = waiting.key
            queue = (req.delivery_info or {}).get("routing_key")
            if queue not in backlog:
                backlog[queue] = ready_messages(req)
            if backlog[queue]:
                # Republished, it would wait behind that backlog, which no worker has room
                # for either (or it would be running it): keep its turn here.
                if req not in self._kept:
                    self._kept.add(req)
                    logger.info(
                        "oomless: keeps %s[%s] waiting here after %.1f s: %d messages wait in its queue on the "
                        "broker, and it would go back behind them", req.name, req.id, now - waiting.since,
                        backlog[queue],
                    )
                continue
            self._give_back(req, now - waiting.since)
        self.fetch.update(now)

    def _give_back(self, req: Any, waited: float) -> None:
        """Republish a waiting ``req`` and stop holding it; if the broker says no, it keeps its place here."""
        try:
            republish(req, {WAITED: round(waited, 3)}, event="task-rejected")
        except Exception as exc:
            logger.warning("oomless: could not give %s[%s] back to the broker, it waits here: %s",
                           req.name, req.id, exc)
            return
        self.adm.forget(req)
        self._drop(req)
        self.fetch.quiet_until = self.clock() + (self.adm.give_back_after or 0)
        logger.info(
            "oomless: gave %s[%s] back to the broker after %.1f s: %s",
            req.name, req.id, waited, self.adm.describe(_request(req)),
        )

    def _drop(self, req: Any) -> None:
        """Forget a waiting ``req`` that will not start here (ended, or given back)."""
        self._callbacks.pop(req, None)
        self._queued_at.pop(req, None)
        self._kept.discard(req)
        self._for_memory.discard(req)

    def _running(self) -> list[Any]:
        """The requests running (the ledger's keys are Celery requests)."""
        return list(self.adm.running)

    def _schedule_drain(self) -> None:
        if self._hub is None:
            self._drain()
        elif not self._drain_scheduled:
            self._drain_scheduled = True
            # After the job's own end (billiard releases the slot before the
            # result reaches Request.on_success), so its memory is free too.
            self._hub.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        now = self.clock()
        self._start(self.adm.drain(now), now)

    def _start(self, started: list[Any], now: float) -> None:
        for req in started:
            entry = self._callbacks.pop(req, None)
            queued = self._queued_at.pop(req, None)
            self._kept.discard(req)
            if queued is not None and self.on_admitted is not None:
                self.on_admitted(now - queued)
            if entry is None:
                continue  # admitted at submit; its caller runs it
            callback, args, kwargs = entry
            if req in self._for_memory:
                self._for_memory.discard(req)
                logger.info("oomless: admitted %s[%s] after waiting %.1f s: %s", req.name, req.id,
                            now - queued if queued is not None else 0.0, self.adm.describe(_request(req)))
            elif logger.isEnabledFor(logging.DEBUG):
                logger.debug("oomless: admitted %s[%s] after waiting for a slot: %s", req.name, req.id,
                             self.adm.describe(_request(req)))
            callback(*args, **kwargs)

    def acknowledged(self) -> None:
        """One of our messages was acked or rejected while tasks wait: the room changed."""
        self.fetch.update(self.clock())

