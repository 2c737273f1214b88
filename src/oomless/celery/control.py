"""The ``oomless_status`` remote-control command: a worker's :func:`~oomless.celery.status.snapshot`.

Registered in Celery's control-command registry when the bootstep module is
imported (every governed worker), so ``oomless top`` and any client can ask
every worker of an app at once, through the broker, the way ``celery
inspect`` does::

    app.control.broadcast("oomless_status", reply=True, timeout=1.0)

A worker without a governor answers ``{"governed": false}``.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

from . import governor
from .status import snapshot

__all__ = ["COMMAND", "oomless_status"]

#: The command's name on the wire.
COMMAND = "oomless_status"


@inspect_command(name=COMMAND)  # type: ignore[misc]
def oomless_status(state: Any, **_: Any) -> dict[str, Any]:
    """Budget, reserved and used memory, running tasks with live memory, waiting tasks."""
    gov = governor.current
    if gov is None:
        return {"governed": False, "hostname": state.consumer.hostname}
    return {"governed": True, **snapshot(gov, state.consumer.hostname)}
