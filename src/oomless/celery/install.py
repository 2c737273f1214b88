"""``oomless.install(app)``: make every worker of a Celery app governed."""

from __future__ import annotations

from typing import Any

import click
from celery import Celery, signals

from ..errors import InvalidMemorySpec
from ..escalate import Escalate
from ..spec import Memory
from . import compat, offload
from .bootstep import GovernorStep
from .child import on_process_init, on_task_postrun, on_task_prerun
from .publish import on_before_task_publish

__all__ = ["install", "add_governor"]

_signals_connected = False


def _connect_signals() -> None:
    global _signals_connected
    if _signals_connected:
        return
    signals.before_task_publish.connect(on_before_task_publish, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    signals.worker_init.connect(offload.on_worker_init, weak=False)
    signals.worker_process_init.connect(offload.on_process_init, weak=False)
    signals.worker_ready.connect(offload.on_worker_ready, weak=False)
    signals.worker_shutdown.connect(offload.on_worker_shutdown, weak=False)
    _signals_connected = True


def add_governor(app: Celery) -> None:
    """The governor bootstep and its signal receivers, nothing else (for apps built by others,
    e.g. Airflow's, from ``worker_init``: the blueprint is built right after it)."""
    _connect_signals()
    app.steps["worker"].add(GovernorStep)


def _check_options(opts: dict[str, Any]) -> None:
    """``@app.task(memory=..., memory_retry=...)``: refuse what is not a size or a policy."""
    if "memory" in opts:
        Memory.coerce(opts["memory"], what="memory= of @app.task")
    retry = opts.get("memory_retry")
    if retry is not None and not isinstance(retry, Escalate):
        raise InvalidMemorySpec(
            f"memory_retry={retry!r} is not a policy; use oomless.Escalate(factor=2, max='8GiB', attempts=3)"
        )


def install(app: Celery) -> Celery:
    """Add the oomless governor to every worker of ``app`` and accept ``memory=`` options.

    * ``@app.task(memory="2GiB")`` / ``memory=oomless.Memory(request=…, limit=…)``:
      validated right here, at decoration time;
    * ``task.apply_async(..., memory=…)`` / ``sig.set(memory=…)``: per-call override;
    * ``@app.task(memory="1GiB", memory_retry=oomless.Escalate(factor=2, max="8GiB", attempts=3))``:
      a memory-killed attempt is retried with more memory;
    * ``celery -A proj worker --memory-budget 6GiB``: the worker's budget;
    * ``oomless_offload = True`` (or an fsspec URL): arguments and results over
      ``oomless_offload_threshold`` travel by reference (:mod:`oomless.celery.offload`);
      without it, a task message over the broker's practical size is refused before it is sent.

    Returns ``app``.  Call it once, right after creating the app.
    """
    if getattr(app, "oomless_installed", False):
        return app
    add_governor(app)
    app.user_options["worker"].add(
        click.Option(
            ["--memory-budget"],
            default=None,
            help="oomless: bytes this worker may give to tasks, e.g. 6GiB (default: oomless_budget, 'auto')",
        )
    )
    # A bad size fails on the line where it is written.
    compat.check_task_options(app, _check_options)
    # The serializers wrap whatever task_serializer/result_serializer the configuration names.
    if app.configured:
        offload.configure(app)
    else:
        app.on_after_configure.connect(lambda sender, **_: offload.configure(sender), weak=False)
    app.oomless_installed = True  # type: ignore[attr-defined]
    return app
