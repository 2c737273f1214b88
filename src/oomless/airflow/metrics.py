"""Each try's memory through Airflow's own metrics: StatsD, Datadog or OpenTelemetry.

Deployments that send Airflow's metrics somewhere (``[metrics] statsd_on``,
``statsd_datadog_enabled`` or ``otel_on``) get oomless's per-try numbers there
too, from the Celery worker's main process, as each try ends:

* ``oomless.ti.finished`` (counter; tags ``dag_id``, ``task_id``, ``outcome``:
  ``ok``, ``memory_killed``, ``evicted``, ``failed``, …);
* ``oomless.ti.peak_bytes``, ``oomless.ti.request_bytes``,
  ``oomless.ti.limit_bytes`` (gauges; tags ``dag_id``, ``task_id``).

Names follow Airflow 3.2+'s convention: the ids are tags, and with
``[metrics] legacy_names_on`` (Airflow's default) each is also sent under a
legacy name that carries them, as Airflow's own ``ti.finish.<dag_id>.<task_id>.<state>``
does, for plain StatsD, which drops tags:
``oomless.ti.finished.<dag_id>.<task_id>.<outcome>``,
``oomless.ti.peak_bytes.<dag_id>.<task_id>``, … (a ``.`` in an id becomes
``__``, as in Airflow).  Airflow's ``[metrics] statsd_prefix`` goes in front
(``airflow.oomless.ti…``), and its allow and block lists apply.

The run id, try number and map index are never in a name or a tag: one series
per task, however often it runs.  The Prometheus endpoint
(``[oomless] metrics_port``, :mod:`oomless.celery.metrics`) carries the same
numbers plus the worker's own (budget, reserved, waiting).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TryMetrics"]

#: Airflow's ``[metrics]`` switches that send its metrics somewhere.
SWITCHES = ("statsd_on", "statsd_datadog_enabled", "otel_on")


def _legacy(value: str) -> str:
    return value.replace(".", "__")


class TryMetrics:
    """Sends each try's outcome and memory through Airflow's metrics backend."""

    def __init__(self, stats: Any, legacy: bool) -> None:
        self.stats = stats
        self.legacy = legacy

    @classmethod
    def from_airflow(cls) -> TryMetrics | None:
        """The sender Airflow's ``[metrics]`` asks for, or ``None`` where it sends metrics nowhere."""
        try:
            from airflow.configuration import conf

            on = [key for key in SWITCHES if conf.getboolean("metrics", key, fallback=False)]
            if not on:
                return None
            from airflow.sdk.observability import stats
            from airflow.sdk.observability.metrics import stats_utils

            legacy = conf.getboolean("metrics", "legacy_names_on", fallback=True)
            # The worker's main process does not set Airflow's metrics up itself (its tries'
            # runners do, each for its own process): as Airflow's executors and jobs do.
            stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=legacy)
        except Exception as exc:  # an Airflow without the SDK's metrics (before 3.2), a bad [metrics]
            logger.warning("oomless: [metrics] asks for Airflow's metrics, but oomless cannot send them: %s", exc)
            return None
        logger.info("oomless: each try's memory goes to Airflow's metrics too ([metrics] %s)", ", ".join(on))
        return cls(stats, legacy)

    def ended(self, dag_id: str, task_id: str, outcome: str, peak: int | None,
              request: int | None, limit: int | None) -> None:
        """One try ended (worker event loop): a counter and up to three gauges, never raising."""
        tags = {"dag_id": dag_id, "task_id": task_id}
        word = outcome.replace("-", "_")
        ids = f"{_legacy(dag_id)}.{_legacy(task_id)}"
        try:
            self.stats.incr("oomless.ti.finished", tags={**tags, "outcome": word})
            if self.legacy:
                self.stats.incr(f"oomless.ti.finished.{ids}.{word}")
            for name, value in (("peak_bytes", peak), ("request_bytes", request), ("limit_bytes", limit)):
                if value is None:
                    continue
                self.stats.gauge(f"oomless.ti.{name}", value, tags=tags)
                if self.legacy:
                    self.stats.gauge(f"oomless.ti.{name}.{ids}", value)
        except Exception as exc:  # a metrics backend that is down costs a line, never a try
            logger.warning("oomless: could not send the metrics of %s.%s: %s", dag_id, task_id, exc)
