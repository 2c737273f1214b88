"""The worker bootstep that makes a Celery worker governed: a thin adapter to :class:`Governor`.

``create`` runs while the worker is built, before the pool forks: it gives
every task the governed Request class (validating its ``memory=``) and builds
the governor (:meth:`Governor.build`).  ``start`` starts it; every
(re)connection of the event loop registers it.  Teardown happens on
``worker_shutdown`` (after the pool has drained, so tasks finishing during a
warm shutdown are still enforced) and, as a fallback, at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from celery import bootsteps, signals
from celery.utils.imports import symbol_by_name

from ..errors import InvalidMemorySpec
from ..spec import Memory
from . import child, control, governor  # noqa: F401  (control: registers the oomless_status command)
from .governor import Governor, isolating_pool
from .request import governed_request_cls

logger = logging.getLogger(__name__)

__all__ = ["GovernorStep", "isolating_pool", "task_spec"]


def task_spec(task: Any) -> Memory | None:
    """The spec a task declares with ``memory=`` (validated), or ``None``."""
    try:
        return Memory.coerce(getattr(task, "memory", None), what=f"memory= of task {task.name}")
    except InvalidMemorySpec as exc:
        raise InvalidMemorySpec(f"{exc} (in the declaration of task {task.name})") from None


def govern_task(task: Any) -> None:
    """Validate ``task``'s ``memory=`` and give it the governed Request class and the child's guard."""
    task.oomless_spec = task_spec(task)
    task.Request = governed_request_cls(symbol_by_name(task.Request))
    child.guard(task)


class GovernorStep(bootsteps.StartStopStep):
    """Governs the worker's memory (see :mod:`oomless`)."""

    label = "oomless"
    # After the Pool step's create (its semaphore becomes the admission gate),
    # before its start (the pool forks after the slots exist).
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, memory_budget: str | None = None, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.memory_budget = memory_budget

    def create(self, w: Any) -> Any:
        gov = Governor.build(w, self.memory_budget, govern_task)  # sets governor.current
        atexit.register(gov.shutdown)
        if gov.settings.gc_freeze:
            child.share_with_children()
        return gov

    def start(self, w: Any) -> None:
        if governor.current is not None:
            governor.current.start(w.hostname)

    def register_with_event_loop(self, w: Any, hub: Any) -> None:
        """On every (re)connection: the kill notices and the gate's timer join the event loop."""
        if governor.current is not None:
            governor.current.register(hub, w.consumer)

    def stop(self, w: Any) -> None:
        """Nothing: enforcement must outlive the pool's drain (see module docstring)."""

    def terminate(self, w: Any) -> None:
        """Nothing, as for :meth:`stop`."""


@signals.worker_shutdown.connect(weak=False)
def _on_worker_shutdown(**_: Any) -> None:
    if governor.current is not None:
        governor.current.shutdown()
