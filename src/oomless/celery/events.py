"""What a governed task's end says: one log line, one ``task-memory`` event; and Flower shows it.

The log line: in a pool child, Celery's own line about the task (``Task …[id]
succeeded in 0.2s: … (oomless: peak …)``, see :mod:`.child`); elsewhere, and for
a task that ended without finishing in its pool child (killed, evicted, lost),
``oomless: <name>[<id>] <outcome>: peak …`` from the main process.

Every governed task ends with one ``task-memory`` event: ``outcome``,
``peak``, ``limit``, ``request`` (bytes), ``mode``, and ``memory``, the same
figures in words (``ok: peak 64.0 MiB, limit 256.0 MiB, request 256.0 MiB
[cgroup]``).  Celery's :class:`celery.events.state.State` merges these fields
into its task record without changing the task's state (an unknown event
ranks below SUCCESS and FAILURE).  What a viewer displays is the
task record's list of fields: :func:`show_in_flower` adds ``memory`` to it.  Call it from
Flower's config file (``flowerconfig.py``, a Python module Flower runs at
start)::

    import oomless.celery.events
    oomless.celery.events.show_in_flower()

Flower's task page then shows a "Memory" row.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ..spec import Memory
from ..units import format_size
from . import compat

logger = logging.getLogger(__name__)

__all__ = ["EVENT", "summary", "figures", "log_finished", "events_on", "show_in_flower"]

#: Celery event sent when a task ends, with its memory figures.
EVENT = "task-memory"


def summary(outcome: str, peak: int | None, spec: Memory, mode: str) -> str:
    """``<outcome>: peak …, limit …, request … [<mode>]`` (the log line's tail, and the event's ``memory``)."""
    return f"{outcome}: {figures(peak, spec, mode)}"


def figures(peak: int | None, spec: Memory, mode: str) -> str:
    """``peak …, limit …, request … [<mode>]``."""
    return f"peak {'unknown' if peak is None else format_size(peak)}, {_spec_figures(spec, mode)}"


@functools.lru_cache(maxsize=256)
def _spec_figures(spec: Memory, mode: str) -> str:
    """What :func:`figures` says after the peak (a worker runs few distinct specs: made once each)."""
    return "limit {}, request {} [{}]".format(
        format_size(spec.limit), format_size(spec.request) if spec.request is not None else "none", mode,
    )


def log_finished(name: str, task_id: str, outcome: str, peak: int | None, spec: Memory, mode: str) -> None:
    """The one line per task: ``oomless: <name>[<id>] <outcome>: peak …, limit …, request … [<mode>]``."""
    if logger.isEnabledFor(logging.INFO):
        logger.info("oomless: %s[%s] %s", name, task_id, summary(outcome, peak, spec, mode))


def events_on(req: Any) -> bool:
    """Whether ``req.send_event`` would send (Celery's own test, without building the event)."""
    eventer = req.eventer
    return bool(eventer is not None and eventer.enabled and req.task.send_events)



def show_in_flower() -> None:
    """Add ``memory`` to the fields Celery's event state (and Flower) list for each task."""
    compat.show_task_field("memory")
