"""A Request mixin: the worker-side life of one governed task message (main process).

* On receipt: resolve the task's spec (:mod:`oomless.celery.message_spec`),
  refuse a malformed or infeasible one before it takes a slot, and hand the
  resolved spec to the pool child in the request dict.
* On a lost pool child: if the governor killed it for memory, turn Celery's
  ``WorkerLostError`` (which with ``task_reject_on_worker_lost`` would requeue
  the message forever) into a terminal :class:`MemoryLimitExceeded` failure,
  acknowledged, never redelivered.
* On every end: one log line and one ``task-memory`` event with the peak.

Celery's own subclass of each task's ``Request`` defines ``execute_using_pool``
and ``on_success`` again: :meth:`GovernedRequest.__init_subclass__` wraps them
(:func:`oomless.celery.compat.wrap_generated_request_methods`).  A request
refused before start raises ``TaskRevokedError`` from ``execute_using_pool``,
the path Celery's worker already handles by releasing the slot quietly.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import Retry, TaskRevokedError
from celery.utils.serialization import get_pickled_exception
from celery.worker.request import Request
from celery.worker.state import task_ready
from kombu.utils.encoding import safe_repr

from .. import outcomes
from ..enforce.reports import KillReport
from ..errors import (
    ClaimMissing,
    EvictedForMemoryPressure,
    InfeasibleMemoryRequest,
    InvalidMemorySpec,
    MemoryLimitExceeded,
)
from ..escalate import Escalate
from ..spec import HEADER, INVALID_HEADER, NO_SPEC, Memory, invalid_from_header
from ..units import format_size
from . import compat, governor
from .failures import einfo_of, memory_exceeded_einfo, tried_limits
from .message_spec import message_spec
from .republish import ATTEMPT, EVICTIONS, REROUTED, TRIED, header_int, republish

logger = logging.getLogger(__name__)

__all__ = ["GovernedRequest", "governed_request_cls", "SPEC_KEY"]

#: Key of the resolved ``[request, limit]`` in the request dict the pool child receives.
SPEC_KEY = "oomless_spec"


class _RefusedBeforeStart(TaskRevokedError):
    """Raised from ``execute_using_pool`` after the request was already failed and acked."""


def _wrap_execute(method: Any) -> Any:
    @functools.wraps(method)
    def execute_using_pool(self: GovernedRequest, pool: Any, **kwargs: Any) -> Any:
        if self.oomless_error is not None:
            self.oomless_refuse()
            raise _RefusedBeforeStart(self.id)
        gov = governor.current
        if gov is not None:
            gov.enforcer.dispatched()
        try:
            return method(self, pool, **kwargs)
        except BaseException:  # revoked or expired at the last moment, or the pool said no
            _finished(self)
            raise

    return execute_using_pool


def _finished(req: GovernedRequest) -> None:
    """Free the request's slot and memory in the admission gate (if there is one)."""
    if governor.current is not None:
        governor.current.release(req)


def _wrap_success(method: Any) -> Any:
    @functools.wraps(method)
    def on_success(self: GovernedRequest, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        result = method(self, failed__retval__runtime, **kwargs)
        gov = governor.current
        # A failed one went through on_failure, which freed its slot; finished() frees this one's.
        if gov is not None and not failed__retval__runtime[0]:
            # memory_scope="subprocesses": the task outlived the kill of its subprocesses.
            spared = gov.enforcer.take_spared(self.id)
            gov.finished(self, _spared_outcome(spared) if spared else outcomes.OK, spared)
        return result

    return on_success


def _spared_outcome(report: KillReport) -> str:
    return outcomes.EVICTED if report.reason == "evicted" else outcomes.MEMORY_KILLED


class GovernedRequest(Request):
    """Mixed in front of a task's own ``Request`` class by :func:`governed_request_cls`."""

    oomless_error: BaseException | None = None
    oomless_spec: Memory = NO_SPEC
    oomless_kill: KillReport | None = None  # set when the governor failed this task itself

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        compat.wrap_generated_request_methods(
            cls, {"execute_using_pool": _wrap_execute, "on_success": _wrap_success}
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        gov = governor.current
        invalid = invalid_from_header(self.request_dict.get(INVALID_HEADER))
        if invalid is not None:  # whatever the task declares: its publisher found the declaration malformed
            self.oomless_error = invalid
            return
        try:
            spec = message_spec(self, gov)
        except (InvalidMemorySpec, InfeasibleMemoryRequest) as exc:
            self.oomless_error = exc
            return
        self.oomless_spec = spec
        self.request_dict[SPEC_KEY] = [spec.request, spec.limit]
        if gov is not None:
            for plugin in gov.plugins:
                plugin.received(self)

    execute_using_pool = _wrap_execute(Request.execute_using_pool)
    on_success = _wrap_success(Request.on_success)

    def acknowledge(self) -> None:
        if not self.acknowledged:
            super().acknowledge()
            _acknowledged()

    def reject(self, requeue: bool = False) -> None:
        if not self.acknowledged:
            super().reject(requeue)
            _acknowledged()

    def oomless_evicted(self, report: KillReport, send_failed_event: bool) -> Any:
        """Requeue a task evicted for node memory pressure (it broke no limit), a bounded number of times."""
        gov = governor.current
        assert gov is not None
        gov.finished(self, outcomes.EVICTED, report)
        done = header_int(self, EVICTIONS)
        if done < gov.settings.max_evictions:
            # Next time, reserve what it was seen to use, so admission packs it honestly; a task
            # evicted again was still growing when seen: it reserves its whole limit.
            spec = self.oomless_spec
            request = max(report.request, report.peak)
            if spec.limit is not None:
                request = spec.limit if done >= 1 else min(request, spec.limit)
            bumped = Memory(request=request, limit=spec.limit)
            try:
                republish(self, {EVICTIONS: done + 1, HEADER: bumped.to_header()})
            except Exception as pub:
                logger.error("oomless: could not requeue evicted %s[%s]: %s", self.name, self.id, pub)
            else:
                logger.warning(
                    "oomless: %s[%s] evicted for node memory pressure (%s); it used %s against a request "
                    "of %s; requeued with a request of %s (eviction %d of at most %d; not counted as a failure)",
                    self.name, self.id, report.detail, format_size(report.peak), format_size(report.request),
                    format_size(request), done + 1, gov.settings.max_evictions,
                )
                self.oomless_retried(EvictedForMemoryPressure(
                    self.name, self.id, report.peak, report.request, done + 1, report.detail
                ))
                return None
        return self.oomless_fail(report, send_failed_event)

    def oomless_kernel_kill(self) -> KillReport:
        """The kernel's OOM killer took this task's pool child: an eviction the governor did not get
        to make (requeued a bounded number of times, never redelivered for ever)."""
        gov = governor.current
        assert gov is not None
        gov.counts[outcomes.KERNEL_OOM_KILLED] += 1
        spec = self.oomless_spec
        detail = ("the kernel's OOM killer killed its pool child (the machine's oom_kill count rose while it "
                  "ran) before the governor evicted anything")
        logger.error("oomless: %s[%s]: %s; see the worker's memory (oomless doctor) and the kernel log",
                     self.name, self.id, detail)
        return KillReport(self.id, self.worker_pid or 0, spec.limit or 0, spec.request or 0, gov.mode,
                          reason="evicted", request=spec.request or 0, detail=detail)

    def oomless_escalate(self, report: KillReport) -> bool:
        """Republish a memory-killed task with more memory if its ``memory_retry`` policy says so."""
        policy = getattr(self.task, "memory_retry", None)
        if not isinstance(policy, Escalate):
            return False
        attempt = header_int(self, ATTEMPT, 1, high=1000) or 1
        nxt = policy.after(self.oomless_spec, attempt)
        if nxt is None:
            return False
        exc = MemoryLimitExceeded(self.name, self.id, report.limit, report.peak, report.mode)
        try:
            republish(self, {HEADER: nxt.to_header(), ATTEMPT: attempt + 1, TRIED: tried_limits(self, report)})
        except Exception as pub:
            logger.error("oomless: could not republish %s[%s] with more memory: %s", self.name, self.id, pub)
            return False
        logger.warning(
            "oomless: %s[%s] was killed at its memory limit of %s (peak %s); retrying with %s "
            "(attempt %d of at most %d, %s)",
            self.name, self.id, format_size(report.limit), format_size(report.peak), nxt,
            attempt + 1, policy.attempts, policy,
        )
        self.oomless_retried(exc)
        gov = governor.current
        if gov is not None:
            gov.counts[outcomes.ESCALATED] += 1
        return True

    def oomless_retried(self, exc: BaseException) -> None:
        """The message was republished: the result backend and the events say RETRY, with why."""
        self.task.backend.mark_as_retry(self.id, exc, request=compat.request_context(self))
        self.send_event("task-retried", exception=safe_repr(exc), traceback=None)

    def oomless_fail(self, report: KillReport, send_failed_event: bool) -> Any:
        """The final failure of a governor kill.  Not a WorkerLostError: Celery stores the
        failure and acks (or drops) the message instead of requeueing it."""
        exc_info = memory_exceeded_einfo(self, report)
        logger.error("oomless: %s", exc_info.exception)
        return super().on_failure(exc_info, send_failed_event, return_ok=False)

    def oomless_refuse(self) -> None:
        """Refuse the task before it starts: re-route it when it is infeasible and a queue is
        configured for that, else fail it (result stored, event sent, message acked)."""
        exc = self.oomless_error
        assert exc is not None
        gov = governor.current
        queue = gov.settings.infeasible_queue if gov is not None else None
        came_from = (self.delivery_info or {}).get("routing_key")
        if isinstance(exc, InfeasibleMemoryRequest) and queue and queue != came_from and not header_int(self, REROUTED):
            try:
                republish(self, {REROUTED: 1}, queue=queue)
            except Exception as pub:
                logger.error("oomless: could not re-route %s[%s] to queue %s: %s", self.name, self.id, queue, pub)
            else:
                logger.warning(
                    "oomless: %s[%s] needs %s, more than this worker's budget of %s; re-routed to queue %r",
                    self.name, self.id, format_size(exc.limit), format_size(exc.budget), queue,
                )
                return
        logger.error("oomless: refused %s[%s]: %s", self.name, self.id, exc)
        if gov is not None:
            gov.refused(self, exc)
        task_ready(self)
        self.task.backend.mark_as_failure(
            self.id, exc, request=compat.request_context(self), store_result=self.store_errors
        )
        einfo = einfo_of(exc)
        signals.task_failure.send(
            sender=self.task, task_id=self.id, exception=exc, args=self.args, kwargs=self.kwargs,
            traceback=einfo.traceback, einfo=einfo,
        )
        self.send_event("task-failed", exception=safe_repr(get_pickled_exception(exc)), traceback=einfo.traceback)
        self.acknowledge()

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        _unwrap_claim_missing(exc_info)
        gov = governor.current
        if gov is None:
            return super().on_failure(exc_info, send_failed_event, return_ok)
        try:
            return self.oomless_failed(gov, exc_info, send_failed_event, return_ok)
        finally:
            gov.release(self)

    def oomless_failed(self, gov: Any, exc_info: Any, send_failed_event: bool, return_ok: bool) -> Any:
        """The failure path of a governed task: a memory kill, an eviction, or Celery's own."""
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # ExceptionWithTraceback
        report = self.oomless_kill if isinstance(exc, (MemoryLimitExceeded, EvictedForMemoryPressure)) else None
        if report is None and isinstance(exc, MemoryLimitExceeded):
            # Raised in the pool child: the limit refused an allocation before any kill (see child.guard).
            report = KillReport(self.id, self.worker_pid or 0, exc.limit, exc.peak, exc.mode, spared=True)
        if isinstance(exc, WorkerLostError):
            report = gov.enforcer.claim_kill(self.id, self.worker_pid)
            if report is None and self.worker_pid:
                # Killed from outside or crashed: its task's processes must be gone before
                # Celery requeues the message (task_reject_on_worker_lost), or two copies run.
                gov.enforcer.sweep(self.worker_pid)
            if report is None and "SIGKILL" in str(exc) and gov.kernel_killed(self.time_start):
                report = self.oomless_kernel_kill()
        if report is not None and report.reason == "evicted":
            return self.oomless_evicted(report, send_failed_event)
        if report is not None:
            gov.finished(self, outcomes.MEMORY_KILLED, report)
            if self.oomless_escalate(report):
                return None
            return self.oomless_fail(report, send_failed_event)
        result = super().on_failure(exc_info, send_failed_event, return_ok)
        spared = None
        if isinstance(exc, WorkerLostError):
            outcome = outcomes.LOST
        elif isinstance(exc, Retry):
            outcome = outcomes.RETRY
        else:
            spared = gov.enforcer.take_spared(self.id)
            outcome = _spared_outcome(spared) if spared else outcomes.FAILED
        gov.finished(self, outcome, spared)
        return result


def _acknowledged() -> None:
    gov = governor.current
    if gov is not None and gov.gate is not None and (gov.gate.adm.waiting or gov.gate.stopped):
        gov.gate.acknowledged()


@functools.cache
def governed_request_cls(base: type) -> type:
    """``base`` (a task's Request class) with :class:`GovernedRequest` in front of it."""
    if issubclass(base, GovernedRequest):
        return base
    return type(f"Governed{base.__name__}", (GovernedRequest, base), {"__module__": __name__})


def _unwrap_claim_missing(exc_info: Any) -> None:
    """A claim that cannot be fetched fails the task as :class:`ClaimMissing`, not as kombu's DecodeError.

    The pool child fetches references while kombu decodes the body, and kombu
    wraps whatever the decoder raises in ``DecodeError``; the cause is the one
    worth reporting.
    """
    exc = getattr(exc_info, "exception", None)
    inner = exc.args[0] if exc is not None and exc.args else None
    if isinstance(inner, ClaimMissing):
        exc_info.exception, exc_info.type = inner, type(inner)
