"""Prometheus metrics of one governed worker (``oomless_metrics_port``; off unless set).

Served by ``prometheus_client``'s own HTTP server on a thread of the worker
main process, bound to 127.0.0.1 unless ``oomless_metrics_address`` says
otherwise.  Two kinds of series:

* **read at scrape time** from the worker's :func:`~oomless.celery.status.snapshot`
  (a scrape costs the task path nothing): ``oomless_budget_bytes``,
  ``oomless_reserved_bytes``, ``oomless_used_bytes``, ``oomless_footprint_bytes``, ``oomless_slots``,
  ``oomless_running_tasks``, ``oomless_waiting_tasks``, ``oomless_waiting_bytes``,
  ``oomless_waiting_oldest_seconds``, and the counters
  ``oomless_tasks_total{outcome}``, ``oomless_kills_total``,
  ``oomless_evictions_total``, ``oomless_escalations_total``;
* **observed as tasks end or start**, per task: ``oomless_task_peak_bytes``
  (histogram of each attempt's peak), ``oomless_task_request_bytes`` and
  ``oomless_task_limit_bytes`` (gauges: the latest attempt's spec),
  ``oomless_task_kills_total`` and ``oomless_task_evictions_total``; and
  ``oomless_wait_seconds`` (histogram of how long admitted tasks waited for
  memory or a slot).

The per-task series are labelled ``task`` (the Celery task name), and
``dag_id`` and ``task_id`` (an Airflow try's, from the worker's plugins; empty
for plain Celery tasks): bounded by the number of tasks a deployment has, never
by runs, tries or map indexes.  The worker totals (``oomless_kills_total``, …)
stay unlabelled and start at 0, so an alert on their increase sees the first
kill; the per-task counters appear with their task's first kill.

Not here: the history (a database, see :mod:`oomless.history.store`) and
anything per task id (unbounded label values).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import outcomes
from ..units import MiB

if TYPE_CHECKING:
    from .governor import Governor

logger = logging.getLogger(__name__)

__all__ = ["WorkerMetrics"]

#: Peak buckets: 1 MiB to 64 GiB, doubling.
PEAK_BUCKETS = tuple(float(MiB << i) for i in range(17)) + (float("inf"),)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class _Snapshot(Collector):
    """Gauges and counters read from the governor when Prometheus scrapes."""

    def __init__(self, gov: Governor, hostname: str | None) -> None:
        self.gov, self.hostname = gov, hostname

    def collect(self) -> Iterator[Any]:
        from .status import snapshot

        s = snapshot(self.gov, self.hostname)
        for name, value, doc in (
            ("oomless_budget_bytes", s["budget"], "Memory this worker may hand to tasks."),
            ("oomless_reserved_bytes", s["reserved"], "Memory reserved by the requests of running tasks."),
            ("oomless_used_bytes", s["used"], "Memory running tasks use now, above their slots' baselines."),
            ("oomless_footprint_bytes", (s["footprint"] or {}).get("total", 0),
             "Memory the worker holds itself (main process, pool children, the rest of its cgroup), "
             "left out of an auto budget."),
            ("oomless_slots", s["slots"], "Pool slots."),
            ("oomless_running_tasks", s["admitted"], "Tasks running (admitted: holding a slot and memory)."),
            ("oomless_waiting_tasks", len(s["waiting"]), "Tasks waiting for memory or a slot."),
            ("oomless_waiting_bytes", sum(w["request"] or 0 for w in s["waiting"]),
             "Memory the waiting tasks request (what more workers would need to start them)."),
            ("oomless_waiting_oldest_seconds", max((w["waited"] for w in s["waiting"]), default=0.0),
             "How long the longest-waiting task has waited."),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        counts = s["counts"]
        ended = CounterMetricFamily("oomless_tasks", "Task attempts ended, by outcome.", labels=["outcome"])
        for outcome, n in sorted(counts.items()):
            if outcome not in (outcomes.ESCALATED, outcomes.KERNEL_OOM_KILLED):
                ended.add_metric([outcome], n)
        yield ended
        for name, key, doc in (
            ("oomless_kills", outcomes.MEMORY_KILLED, "Tasks killed for breaking their memory limit."),
            ("oomless_evictions", outcomes.EVICTED, "Tasks stopped for node memory pressure (requeued)."),
            ("oomless_escalations", outcomes.ESCALATED, "Memory-killed tasks republished with a larger limit."),
            ("oomless_kernel_oom_kills", outcomes.KERNEL_OOM_KILLED,
             "Pool children the kernel's OOM killer took before the governor acted (requeued as evictions)."),
        ):
            yield CounterMetricFamily(name, doc, value=counts.get(key, 0))


#: The labels of the per-task series: the Celery task name, and an Airflow try's DAG and task.
TASK_LABELS = ("task", "dag_id", "task_id")


class WorkerMetrics:
    """The registry, the per-task series and the HTTP server of one worker."""

    def __init__(self, gov: Governor, hostname: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Snapshot(gov, hostname))
        self.peaks = Histogram(
            "oomless_task_peak_bytes", "Peak memory of each task attempt.", TASK_LABELS,
            buckets=PEAK_BUCKETS, registry=self.registry,
        )
        self.requests = Gauge(
            "oomless_task_request_bytes", "Memory request of the task's latest attempt (0: none).", TASK_LABELS,
            registry=self.registry,
        )
        self.limits = Gauge(
            "oomless_task_limit_bytes", "Memory limit of the task's latest attempt (0: none).", TASK_LABELS,
            registry=self.registry,
        )
        self.kills = Counter(
            "oomless_task_kills", "Attempts of the task killed for breaking their memory limit.", TASK_LABELS,
            registry=self.registry,
        )
        self.evictions = Counter(
            "oomless_task_evictions", "Attempts of the task stopped for node memory pressure (requeued).",
            TASK_LABELS, registry=self.registry,
        )
        self.waits = Histogram(
            "oomless_wait_seconds", "How long admitted tasks waited for memory or a slot.",
            buckets=WAIT_BUCKETS, registry=self.registry,
        )
        self._server: Any = None

    def ended(self, task_name: str, labels: dict[str, str], outcome: str, peak: int | None,
              request: int | None, limit: int | None) -> None:
        """One attempt of ``task_name`` ended (``labels``: its ``dag_id`` and ``task_id``, if any)."""
        values = (task_name, labels.get("dag_id", ""), labels.get("task_id", ""))
        if peak is not None:
            self.peaks.labels(*values).observe(peak)
        self.requests.labels(*values).set(request or 0)
        self.limits.labels(*values).set(limit or 0)
        if outcome == outcomes.MEMORY_KILLED:
            self.kills.labels(*values).inc()
        elif outcome == outcomes.EVICTED:
            self.evictions.labels(*values).inc()

    def observe_wait(self, seconds: float) -> None:
        self.waits.observe(seconds)

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Start the HTTP server; returns the port it listens on (``port=0``: any free one)."""
        self._server, _ = start_http_server(port, addr=address, registry=self.registry)
        bound = int(self._server.server_port)
        logger.info("oomless: Prometheus metrics on http://%s:%d/metrics", address, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
