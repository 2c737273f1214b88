"""The one door to Celery's, billiard's and kombu's internals.

oomless integrates through Celery's public extension points where they exist
(a bootstep, signals, a task's ``Request`` class, kombu's serializer
registry).  What those cannot reach goes through the small functions below,
and only through them: each says what it touches and why no public way
exists.  ``tests/celery/test_compat.py`` checks every one against the
installed versions, so an upgrade that moves one of these breaks one test
file, not the worker.

Each function names the versions it was checked against (:func:`checked`): the lock file's
Celery 5.6.3, billiard 4.3.2, kombu 5.7.0, where ``make test`` runs the test; and Celery 5.5.3
with kombu 5.5.4 and billiard 4.2.1 and 4.3.2, where the same test passed (2026-12-06).

What is not here: what oomless does with these hooks (``gate``, ``request``,
``governor``, ``offload``); the Airflow executor's override of Airflow's own
``_send_workloads_to_celery`` (``oomless.airflow.executor``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "checked",
    "uses_slot_semaphore", "replace_slot_semaphore",
    "request_context", "pool_job", "job_accepted", "fail_job", "wrap_generated_request_methods",
    "bound_tasks", "forget_exec_options", "check_task_options", "wrap_run",
    "serializer_functions", "has_serializer", "show_task_field", "trace_logger",
]


_F = TypeVar("_F", bound=Callable[..., Any])


def checked(**versions: str) -> Callable[[_F], _F]:
    """Mark a door with the library versions it was checked against (``__checked__``)."""

    def mark(func: _F) -> _F:
        func.__checked__ = versions  # type: ignore[attr-defined]
        return func

    return mark


# -- the worker's slot semaphore --------------------------------------------------------------
# The Pool bootstep's ``create`` makes a ``LaxBoundedSemaphore(concurrency)``, stores it in
# ``w.semaphore`` and binds ``w._quick_acquire`` / ``w._quick_release`` to it; with a pool that
# uses it (prefork), ``w.process_task`` is ``w._process_task_sem``, which waits on it before the
# task goes to the pool, and the pool's ``options["semaphore"]`` releases it when a job ends.


@checked(celery="5.5, 5.6")
def uses_slot_semaphore(w: Any) -> bool:
    """Whether the worker ``w`` starts tasks through Celery's slot semaphore (prefork)."""
    return getattr(w, "semaphore", None) is not None and w.process_task == w._process_task_sem


@checked(celery="5.5, 5.6", billiard="4.2, 4.3")
def replace_slot_semaphore(w: Any, semaphore: Any) -> None:
    """Put ``semaphore`` where the Pool bootstep put Celery's (after its ``create``, before the
    pool starts): the worker acquires it before each task, billiard releases it after each job."""
    w.semaphore = semaphore
    w._quick_acquire = semaphore.acquire
    w._quick_release = semaphore.release
    w.pool.options["semaphore"] = semaphore


# -- a received request ------------------------------------------------------------------------


@checked(celery="5.5, 5.6")
def request_context(req: Any) -> Any:
    """The task ``Context`` Celery's own failure and retry paths hand the result backend
    (``Request._context``, a cached property)."""
    return req._context


@checked(celery="5.5, 5.6")
def pool_job(req: Any) -> Any:
    """The billiard ``ApplyResult`` of ``req`` once it was sent to the pool, else ``None``
    (``Request._apply_result`` is a weak reference to it)."""
    ref = req._apply_result
    return ref() if ref is not None else None


@checked(billiard="4.2, 4.3")
def job_accepted(job: Any) -> bool:
    """Whether a pool child took ``job`` (billiard sets ``ApplyResult._accepted`` on its ACK)."""
    return bool(getattr(job, "_accepted", False))


@checked(billiard="4.2, 4.3")
def fail_job(job: Any, einfo: Any) -> None:
    """Complete ``job`` as failed with ``einfo`` now: what billiard's own
    ``mark_as_worker_lost`` does (``ApplyResult._set(i, (False, einfo))``), which runs the
    request's ``on_failure`` through the pool's error callback."""
    job._set(None, (False, einfo))


@checked(celery="5.5, 5.6")
def wrap_generated_request_methods(cls: type, wrappers: dict[str, Callable[[Any], Any]]) -> None:
    """Wrap again what ``celery.worker.request.create_request_cls`` overrides in ``cls``.

    For speed, Celery subclasses every task's ``Request`` class per worker and defines
    ``execute_using_pool`` and ``on_success`` again in the subclass, so an override in a base
    class never runs; called from a base class's ``__init_subclass__``, this wraps those
    subclass methods with ``wrappers[name](method)``.
    """
    for name, wrap in wrappers.items():
        if name in cls.__dict__:
            setattr(cls, name, wrap(cls.__dict__[name]))


# -- tasks -------------------------------------------------------------------------------------


@checked(celery="5.5, 5.6")
def bound_tasks(app: Any) -> list[Any]:
    """The tasks ``app`` has bound so far (none before it is finalized), without finalizing it
    (``app.tasks`` would)."""
    return list(getattr(app, "_tasks", {}).values())


@checked(celery="5.5, 5.6")
def forget_exec_options(task: Any) -> None:
    """Make a bound task read its serializer again: Celery caches its send options in
    ``Task._exec_options`` the first time it is sent."""
    task._exec_options = None


@checked(celery="5.5, 5.6")
def check_task_options(app: Any, check: Callable[[dict[str, Any]], None]) -> None:
    """Have ``app.task(...)`` call ``check(options)`` before it creates a task.

    Celery has no hook at task decoration, and a bad option should fail on the line where it is
    written, not when a worker first receives the task.
    """
    decorate = app.task

    @functools.wraps(decorate)
    def task(*args: Any, **opts: Any) -> Any:
        check(opts)
        return decorate(*args, **opts)

    app.task = task


@checked(celery="5.5, 5.6")
def wrap_run(task: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``task.run`` (the function Celery's tracer calls in the pool child) by ``wrap(run)``."""
    task.run = wrap(task.run)


# -- kombu's serializer registry -----------------------------------------------------------------


@checked(kombu="5.5, 5.7")
def serializer_functions(name: str) -> tuple[str, str, Callable[[Any], Any], Callable[[Any], Any]]:
    """``(content_type, content_encoding, encode, decode)`` of kombu's serializer ``name``: the
    raw functions, without ``dumps``/``loads``'s content-type checks (the registry's
    ``_encoders``/``_decoders``; kombu has no public getter)."""
    from kombu.serialization import registry

    content_type, encoding, encode = registry._encoders[name]
    return content_type, encoding, encode, registry._decoders[content_type]


@checked(kombu="5.5, 5.7")
def has_serializer(name: str) -> bool:
    """Whether kombu has an encoder registered as ``name``."""
    from kombu.serialization import registry

    return name in registry._encoders


# -- Celery's event state (Flower) ---------------------------------------------------------------


@checked(celery="5.5, 5.6")
def show_task_field(name: str) -> None:
    """Add ``name`` to the fields ``celery.events.state.Task`` lists (``Task._fields``), which is
    what Flower's task page shows."""
    from celery.events.state import Task

    if name not in Task._fields:
        Task._fields = (*Task._fields, name)


# -- Celery's tracer's log lines -----------------------------------------------------------------


@checked(celery="5.5, 5.6")
def trace_logger() -> Any:
    """The logger through which Celery's tracer writes its line about each task it runs in a pool
    child (``Task …[id] succeeded in …``: ``celery.app.trace.logger``, its records' args the dict
    of ``id``, ``name``, … the formats ``LOG_SUCCESS``, ``LOG_FAILURE`` … use).  No setting or
    signal adds to that line."""
    from celery.app import trace

    return trace.logger
