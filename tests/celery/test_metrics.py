"""Prometheus metrics of a real governed worker, scraped over HTTP while it runs."""

from __future__ import annotations

import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import start_worker

sys.path.insert(0, str(Path(__file__).parent))
from worker_app import make_app  # noqa: E402

MiB = 2**20


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def _task(name: str) -> tuple:
    """The labels of a plain Celery task's per-task series (no Airflow ids)."""
    return (("dag_id", ""), ("task", name), ("task_id", ""))


def test_budget_reservations_waiting_kills_escalations_and_peaks_are_exported(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", extra=("--memory-budget", "1GiB"),
                          conf={"oomless_metrics_port": 0})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    try:
        port = re.search(r"Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics", worker.text()).group(1)
        url = f"http://127.0.0.1:{port}/metrics"
        first = app.tasks["t.hold"].apply_async([3, 100], memory="600MiB")
        worker.wait_for(f"t.hold[{first.id}] received")
        second = app.tasks["t.hold"].apply_async([0.1, 0], memory="600MiB")
        worker.wait_for(f"t.hold[{second.id}] waits")
        now = scrape(url)
        assert now[("oomless_budget_bytes", ())] == 1024 * MiB
        assert now[("oomless_reserved_bytes", ())] == 600 * MiB
        assert (now[("oomless_running_tasks", ())], now[("oomless_waiting_tasks", ())]) == (1, 1)
        assert now[("oomless_waiting_bytes", ())] == 600 * MiB
        assert now[("oomless_waiting_oldest_seconds", ())] > 0
        first.get(timeout=30), second.get(timeout=30)
        killed = app.tasks["t.hog"].delay(512)
        escalated = app.tasks["t.escalating"].delay(300)  # killed at 128 and 256 MiB, succeeds at 512
        with pytest.raises(Exception, match="memory limit"):
            killed.get(timeout=60)
        escalated.get(timeout=60)
        deadline = time.monotonic() + 10
        while True:
            after = scrape(url)
            if after.get(("oomless_tasks_total", (("outcome", "ok"),))) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        worker.stop()
        app.close()
    assert after[("oomless_kills_total", ())] == 3  # the hog, and the escalating task twice
    assert after[("oomless_escalations_total", ())] == 2
    assert after[("oomless_evictions_total", ())] == 0
    assert after[("oomless_tasks_total", (("outcome", "memory-killed"),))] == 3
    assert after[("oomless_task_peak_bytes_count", _task("t.hold"))] == 2
    buckets = {float(dict(labels)["le"]): v for (name, labels), v in after.items()
               if name == "oomless_task_peak_bytes_bucket" and dict(labels)["task"] == "t.hold"}
    # per task: its kills, and its latest attempt's spec (the escalating one's third, at 512 MiB)
    assert (after[("oomless_task_kills_total", _task("t.hog"))],
            after[("oomless_task_kills_total", _task("t.escalating"))]) == (1, 2)
    assert (after[("oomless_task_request_bytes", _task("t.escalating"))],
            after[("oomless_task_limit_bytes", _task("t.escalating"))]) == (512 * MiB, 512 * MiB)
    assert not [k for k in after if k[0] == "oomless_task_evictions_total"]
    assert (buckets[64 * MiB], buckets[128 * MiB]) == (1, 2)  # one held nothing, one 100 MiB
    assert after[("oomless_wait_seconds_count", ())] == 1  # the second t.hold waited for memory
    assert (after[("oomless_running_tasks", ())], after[("oomless_reserved_bytes", ())]) == (0, 0)


def test_metrics_are_off_unless_configured(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog")
    worker.stop()
    assert "Prometheus metrics on" not in worker.text()
