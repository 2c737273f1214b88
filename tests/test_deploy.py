"""The shipped Prometheus alert rules and Grafana dashboard (deploy/), checked by Prometheus itself:
``promtool`` checks and unit-tests the rules, and a real Prometheus server scrapes a real governed
worker, loads the rules and answers every dashboard query.

Needs Debian's ``prometheus`` package (``make test`` installs it, as it installs chromium).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from oomless.testing import free_port

from .celery.harness import start_worker

sys.path.insert(0, str(Path(__file__).parent / "celery"))
from worker_app import make_app  # noqa: E402

DEPLOY = Path(__file__).parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "oomless-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "oomless-dashboard.json"
MiB = 2**20


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `make test` installs Debian's prometheus package (apt-get install prometheus)")
    return found


def test_the_alert_rules_pass_promtool_and_their_unit_tests():
    promtool = _tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", "oomless-rules.test.yml"], cwd=RULES.parent,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL) of every dashboard target, Grafana's variables filled in as it would."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", "30s").replace("$__range", "10m")
                    .replace('"$instance"', '".*"').replace('"$dag_id"', '".*"'))
            assert "$" not in expr, expr
            found.append((panel["title"], target["refId"], expr))
    return found


def _keda_triggers() -> list[dict]:
    scaled = yaml.safe_load((DEPLOY / "kubernetes" / "keda-scaledobject.yaml").read_text())
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    return scaled["spec"]["triggers"]


def test_the_kubernetes_files_parse_and_carry_the_settings_the_end_to_end_test_runs_with():
    values = yaml.safe_load((DEPLOY / "kubernetes" / "worker-values.yaml").read_text())
    oomless = values["config"]["oomless"]
    assert oomless["budget"] == "auto" and oomless["metrics_address"] == "0.0.0.0"
    assert values["workers"]["podAnnotations"]["prometheus.io/port"] == str(oomless["metrics_port"]) == "9894"
    assert values["config"]["celery"]["celery_config_options"] == "oomless.airflow.celery_config.CELERY_CONFIG"
    assert {e["name"]: e["value"] for e in values["env"]}["AIRFLOW__CORE__EXECUTOR"] == \
        "oomless.airflow.executor.OomlessCeleryExecutor"
    from oomless.airflow.provider import OPTIONS

    assert set(oomless) <= set(OPTIONS), set(oomless) - set(OPTIONS)  # every key is an [oomless] option
    assert {t["name"] for t in _keda_triggers()} == {"memory", "waiting"}


def _names(text: str) -> set[str]:
    return set(re.findall(r"\boomless_[a-z_]+\b", text))


class _Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = tmp / "prometheus.yml"
        shutil.copy(RULES, tmp / RULES.name)
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{RULES.name}]\n"
            f"scrape_configs:\n  - job_name: oomless\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = open(tmp / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} not seen in {timeout} s")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def test_every_dashboard_query_and_alert_rule_runs_on_prometheus_scraping_a_real_worker(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", extra=("--memory-budget", "1GiB"),
                          conf={"oomless_metrics_port": 0})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    prom = None
    try:
        port = re.search(r"Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics", worker.text()).group(1)
        # a wait for memory, a kill at the limit, and attempts that end well
        first = app.tasks["t.hold"].apply_async([2, 100], memory="600MiB")
        worker.wait_for(f"t.hold[{first.id}] received")
        second = app.tasks["t.hold"].apply_async([0.1, 0], memory="600MiB")
        killed = app.tasks["t.hog"].delay(512)
        first.get(timeout=60), second.get(timeout=60)
        with pytest.raises(Exception, match="memory limit"):
            killed.get(timeout=60)
        prom = _Prometheus(tmp_path, f"127.0.0.1:{port}")
        prom.wait("the worker's per-task kills",
                  lambda: prom.api("query", query="oomless_task_kills_total")["result"])
        prom.wait("30 s of scrapes", timeout=90,
                  ready=lambda: len(prom.api("query", query="oomless_slots[40s]")["result"][0]["values"]) >= 30)
        empty = []
        for title, ref, expr in _queries():
            result = prom.api("query", query=expr)["result"]  # raises on a query Prometheus refuses
            if not result:
                empty.append((title, ref, expr))
        # Evictions (per task) only exist after one: every other query finds the worker's series.
        assert [(t, r) for t, r, e in empty if "evictions" not in e] == [], empty
        exported = {m["metric"] if isinstance(m, dict) else m for m in prom.api("label/__name__/values")}
        metadata = set(prom.api("metadata"))  # families the worker declares, series or not
        dashboard = _names(" ".join(e for _, _, e in _queries()) + " ".join(
            t["metadata"]["query"] for t in _keda_triggers()))
        rules = _names(" ".join(r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]))
        known = exported | {f"{name}_total" for name in metadata} | metadata
        assert dashboard | rules <= known, (dashboard | rules) - known
        # the KEDA triggers of deploy/kubernetes: each query answers one number of workers
        for trigger in _keda_triggers():
            query = trigger["metadata"]["query"].replace('job="airflow-worker"', 'job="oomless"')
            [answer] = prom.api("query", query=query)["result"]
            # idle now: memory asks for no worker (KEDA keeps minReplicaCount), waiting for the one there is
            assert float(answer["value"][1]) == {"memory": 0, "waiting": 1}[trigger["name"]], (trigger, answer)
        groups = prom.api("rules")["groups"]
        health = {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}
        assert len(health) == 6 and set(health.values()) == {"ok"}, health
    finally:
        if prom is not None:
            prom.stop()
        worker.stop()
        app.close()
