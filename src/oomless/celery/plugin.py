"""The hooks through which an integration (Airflow) follows a governed worker's decisions.

A plugin is named in ``oomless_plugins`` (import paths of :class:`Plugin`
subclasses) and built once per worker, before the pool forks.  Each hook's name
says when it runs; every hook is optional and must not raise.

What is not here: the governor that calls them (:mod:`oomless.celery.governor`);
the Airflow plugin (:mod:`oomless.airflow.worker`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..enforce.reports import KillReport

if TYPE_CHECKING:
    from .governor import Governor

__all__ = ["Plugin"]


class Plugin:
    """Hooks through which an integration (Airflow) follows the governed worker's decisions.

    ``setup`` runs in the main process before the pool forks; ``before_kill`` in
    the monitor thread; every other hook on the worker's event loop.
    """

    def setup(self, app: Any, governor: Governor) -> None:
        """The worker is being built (its tasks exist; the pool has not forked)."""

    def received(self, req: Any) -> None:
        """A governed request was created (main thread), its spec resolved."""

    def before_kill(self, report: KillReport) -> None:
        """The monitor thread is about to kill ``report.task_id`` (quick, no network I/O)."""

    def killed(self, req: Any, report: KillReport) -> None:
        """A kill that spared the task's own process happened (event loop)."""

    def refused(self, req: Any, exc: BaseException) -> None:
        """``req`` was refused before it started (malformed or infeasible spec)."""

    def ended(self, req: Any, outcome: str, report: KillReport | None) -> None:
        """``req`` ended (ok, failed, memory-killed, evicted, lost, retry)."""

    def measured(self, req: Any, outcome: str, peak: int | None) -> None:
        """``req``'s attempt ended with this outcome and peak (``None``: not measured); right before
        :meth:`ended`, for metrics of an integration's own."""

    def metric_labels(self, req: Any) -> dict[str, str]:
        """``dag_id`` and ``task_id`` of ``req``'s per-task metrics, where it has them (Airflow)."""
        return {}

    def attempt_fields(self, req: Any) -> dict[str, Any]:
        """Extra :class:`~oomless.history.Attempt` fields for ``req`` (e.g. Airflow's ids)."""
        return {}
