"""Show oomless's memory fields in Celery's event state, and so in Flower.

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

from . import compat

__all__ = ["show_in_flower"]


def show_in_flower() -> None:
    """Add ``memory`` to the fields Celery's event state (and Flower) list for each task."""
    compat.show_task_field("memory")
