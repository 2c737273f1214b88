"""A real Airflow 3.3 deployment (api-server, scheduler, dag-processor, Celery worker) runs the
example DAG ``oomless_memory_demo`` with the oomless executor and worker config, in both
enforcement modes; everything is checked through the REST API, as a user would see it.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("airflow.providers.celery", reason="Airflow 3.3 needs Python 3.11+ (the 'airflow' extra)")

sys.path.insert(0, str(Path(__file__).parent))
from stack import Stack, _kill_marked, free_port  # noqa: E402

from ..celery.harness import SLACK, V2, MemoryCgroup  # noqa: E402

DAG = "oomless_memory_demo"
NEED = 320  # MiB the hungry tasks use (OOMLESS_DEMO_MIB); first limit 240 MiB, then 480 MiB
KILLED = "oomless: this try was killed because its task process tree exceeded its memory limit of 240.0 MiB"


@pytest.fixture(scope="module", params=["cgroup", "watchdog"])
def run(request, tmp_path_factory, redis_url):
    mode = request.param
    home = tmp_path_factory.mktemp(f"airflow-{mode}")
    # cgroup v2 (the guest of tests/v2vm/run): the worker alone in a delegated group, as systemd's
    # Delegate=yes gives a service.
    group = MemoryCgroup(None) if V2 else None
    metrics_port = free_port()
    statsd = _Datagrams()  # Airflow's [metrics] statsd_on: every component sends here, the worker too
    stack = Stack(
        home,
        redis_url,
        slack=SLACK,
        worker_preexec=None if group is None else group.join,
        env={
            "AIRFLOW__OOMLESS__METRICS_PORT": str(metrics_port),
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
            "AIRFLOW__OOMLESS__BUDGET": "3GiB",
            "AIRFLOW__OOMLESS__ENFORCEMENT": mode,
            "AIRFLOW__OOMLESS__HISTORY": f"sqlite:///{home / 'oomless-history.sqlite'}",
            "OOMLESS_DEMO_MIB": str(NEED),
        },
    )
    stack.history = f"sqlite:///{home / 'oomless-history.sqlite'}"
    stack.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    stack.statsd = statsd
    try:
        stack.start()
        stack.wait_for("worker", "ready.", 120)
        stack.wait_dag(DAG)
        run_id = stack.trigger(DAG)
        stack.wait_run(DAG, run_id, 300)
        stack.run_id, stack.mode = run_id, mode
        stack.ti = stack.tis(DAG, run_id)
        stack.worker_alive = stack.procs["worker"].poll() is None
        stack.groups_while_running = _slot_groups(stack.procs["worker"].pid)
        yield stack
    finally:
        left = stack.stop()
        stack.left_after_stop = left
        statsd.close()
        if group is not None:
            group.remove()
        assert _kill_marked(stack.marker) == [], "processes of the deployment survived its stop"


class _Datagrams:
    """A StatsD server's socket: every line it receives, kept (a thread reads them)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.extend(data.decode(errors="replace").splitlines())

    def close(self) -> None:
        self.sock.close()


def _log(run, task_id, try_number, map_index=-1):
    return "\n".join(run.log(DAG, run.run_id, task_id, try_number, map_index))


def test_the_worker_is_governed_in_the_configured_mode(run):
    assert f"enforcement {run.mode} (" in run.text("worker")


def test_a_well_behaved_task_succeeds_on_its_first_try_beside_the_kills(run):
    small = run.ti["small"]
    assert (small["state"], small["try_number"]) == ("success", 1)
    assert "oomless: this try" not in _log(run, "small", 1)


def test_a_task_that_declares_nothing_runs_as_before(run):
    plain = run.ti["plain"]
    assert (plain["state"], plain["try_number"]) == ("success", 1)
    celery_id = _celery_id(run, "plain")
    line = next(ln for ln in run.text("worker").splitlines() if f"[{celery_id}] succeeded" in ln)
    assert "(oomless: peak " in line
    assert "limit no limit, request none" in line


def _celery_id(run, task_id):
    """The Celery task id of a try, from the provider's "Executing workload" line in the worker log."""
    for line in run.text("worker").splitlines():
        if "Executing workload in Celery" in line and f"task_id='{task_id}'" in line:
            return re.search(r"\[([0-9a-f-]{36})\] Executing workload", line).group(1)
    raise AssertionError(f"no workload line for {task_id}")


@pytest.mark.parametrize("task_id", ["transform", "sort_words"])
def test_a_task_over_its_first_limit_is_killed_and_succeeds_on_the_escalated_retry(run, task_id):
    ti = run.ti[task_id]
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    first = _log(run, task_id, 1)
    assert KILLED in first
    assert "The next try (try 2) gets a limit of 480.0 MiB (× 2 per memory-killed try)." in first
    assert "oomless: this try" not in _log(run, task_id, 2)
    # The try history records a retried try as failed (Airflow's own bookkeeping).
    assert [t["state"] for t in run.tries(DAG, run.run_id, task_id)] == ["failed", "success"]


def test_only_the_map_index_over_its_limit_is_retried_with_more(run):
    got = run.api("GET", f"/dags/{DAG}/dagRuns/{run.run_id}/taskInstances/part/listMapped")
    by_index = {ti["map_index"]: ti for ti in got["task_instances"]}
    assert (by_index[0]["state"], by_index[0]["try_number"]) == ("success", 1)
    assert (by_index[1]["state"], by_index[1]["try_number"]) == ("success", 2)
    assert KILLED in _log(run, "part", 1, map_index=1)


def test_a_try_that_can_never_fit_fails_at_once_without_retries_and_its_log_says_why(run):
    ti = run.ti["too_big"]
    assert (ti["state"], ti["try_number"], ti["max_tries"]) == ("failed", 1, 2)  # 2 retries, none used
    [only] = run.tries(DAG, run.run_id, "too_big")
    assert (only["try_number"], only["state"]) == (1, "failed")
    text = _log(run, "too_big", 1)  # served by the REST API
    assert "oomless: this try did not run" in text
    assert "64.0 TiB, more than this worker's whole budget of 3.0 GiB" in text
    # it ran and failed through the API server, as a try does: the scheduler saw no mismatch
    events = run.api("GET", f"/eventLogs?dag_id={DAG}&task_id=too_big&limit=100")["event_logs"]
    assert "state mismatch" not in [e["event"] for e in events], events
    scheduler = run.text("scheduler").splitlines()
    assert [line for line in scheduler if "too_big" in line and "state attribute" in line] == []


def test_the_worker_writes_one_outcome_per_try(run):
    """Never an "ok" line and then a "memory-killed" one for the same try (seen once on a stranger's run)."""
    from collections import Counter

    found = re.findall(r"oomless: execute_workload\[([0-9a-f-]+)\] (ok|failed|memory-killed|evicted|lost|retry): "
                       r"peak", run.text("worker"))
    per_try = Counter(task_id for task_id, _ in found)
    assert [f for f in found if per_try[f[0]] > 1] == [], found
    # transform, sort_words and part[1] were killed once each, and said so once each
    assert sorted(outcome for _, outcome in found if outcome != "ok") == ["memory-killed"] * 3, found


def test_the_worker_survives_and_no_try_waits_for_a_heartbeat_timeout(run):
    assert run.worker_alive
    worker = run.text("worker")
    assert "WorkerLostError" not in worker
    assert "Detected a task instance without a heartbeat" not in run.text("scheduler")


#: every try of the run: the tests read them all from the history (the UI's pages too)
RECORDED = {("small", -1, 1), ("plain", -1, 1), ("transform", -1, 1), ("transform", -1, 2), ("sort_words", -1, 1),
            ("sort_words", -1, 2), ("part", 0, 1), ("part", 1, 1), ("part", 1, 2), ("too_big", -1, 1)}


def _recorded(run) -> tuple[list, dict]:
    """The run's rows in the history once every try the tests read is there: the run's end says the tries
    ended, not that the recorder (about once a second) wrote them."""
    from oomless.history.store import Store

    deadline = time.monotonic() + 15 * SLACK
    while True:
        rows = [a for a in Store(run.history).attempts() if a.dag_id == DAG and a.run_id == run.run_id]
        tries = {(a.af_task_id, a.map_index, a.try_number): a for a in rows}
        if RECORDED <= tries.keys() or time.monotonic() > deadline:
            return rows, tries
        time.sleep(0.5)


def test_the_history_records_each_try_with_its_airflow_ids(run):
    rows, tries = _recorded(run)
    assert {a.task_name for a in rows} == {"execute_workload"}
    killed, ok = tries[("transform", -1, 1)], tries[("transform", -1, 2)]
    assert (killed.outcome, killed.limit) == ("memory-killed", 240 * 2**20)
    assert killed.peak_rss >= 240 * 2**20
    assert (ok.outcome, ok.limit) == ("ok", 480 * 2**20) and ok.peak_rss >= NEED * 2**20
    assert tries[("part", 1, 1)].outcome == "memory-killed" and tries[("part", 0, 1)].outcome == "ok"
    assert tries[("too_big", -1, 1)].outcome == "infeasible"


def _slot_groups(worker_pid: int) -> list[Path]:
    root = Path("/sys/fs/cgroup/memory") if not V2 else Path("/sys/fs/cgroup")
    return list(root.rglob(f"oomless-{worker_pid}-*")) if root.is_dir() else []


def test_the_workers_metrics_carry_each_tries_dag_and_task_never_its_run_or_map_index(run):
    from ..celery.test_metrics import scrape

    def by_task(samples: dict) -> dict:
        return {name: {(dict(labels)["dag_id"], dict(labels)["task_id"]): v for (n, labels), v in samples.items()
                       if n == name and dict(labels).get("task") == "execute_workload"}
                for name in ("oomless_task_kills_total", "oomless_task_peak_bytes_count", "oomless_task_limit_bytes")}

    # a try's last Celery bookkeeping may follow the run's end: wait for the 9 tries that ran (part: 3)
    deadline = time.monotonic() + 30 * SLACK
    while True:
        samples = scrape(run.metrics_url)
        found = by_task(samples)
        if sum(found["oomless_task_peak_bytes_count"].values()) >= 9 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    per_task = found
    kills = per_task["oomless_task_kills_total"]
    # transform and sort_words: their first tries; part: only map index 1, in the one series of the task
    assert kills == {(DAG, "transform"): 1, (DAG, "sort_words"): 1, (DAG, "part"): 1}
    peaks = per_task["oomless_task_peak_bytes_count"]
    assert (peaks[(DAG, "transform")], peaks[(DAG, "part")]) == (2, 3), peaks  # part: index 0, index 1 twice
    assert {task for _, task in peaks} >= {"small", "plain", "transform", "sort_words", "part"}
    assert per_task["oomless_task_limit_bytes"][(DAG, "transform")] == 2 * 240 * 2**20  # its latest try's
    labels = {key for (_, ls) in samples for key, _ in ls}
    assert not labels & {"run_id", "map_index", "try_number"}
    assert samples[("oomless_kills_total", ())] == 3


def test_each_tries_memory_goes_to_statsd_when_airflow_sends_its_metrics_there(run):
    deadline = time.monotonic() + 15 * SLACK  # a try's end reaches the worker's metrics after the run's
    while True:
        lines = [line for line in list(run.statsd.lines) if line.startswith("airflow.oomless.ti.finished.")]
        if len(lines) >= 9 or time.monotonic() > deadline:  # every try that ran (a refused one never starts)
            break
        time.sleep(0.5)
    lines = [line for line in list(run.statsd.lines) if line.startswith("airflow.oomless.")]
    counts = {}
    for line in lines:
        name, _, rest = line.partition(":")
        value, _, kind = rest.partition("|")
        if kind == "c":
            counts[name] = counts.get(name, 0) + int(value)
    ids = f"{DAG}.transform"
    # plain StatsD drops tags: the legacy names carry the ids, as Airflow's ti.finish.<dag>.<task>.<state>
    assert counts[f"airflow.oomless.ti.finished.{ids}.memory_killed"] == 1, lines
    assert counts[f"airflow.oomless.ti.finished.{ids}.ok"] == 1
    assert counts[f"airflow.oomless.ti.finished.{DAG}.part.memory_killed"] == 1  # one series for every map index
    assert counts["airflow.oomless.ti.finished"] >= 8  # the tagged name: every try that ran
    assert f"airflow.oomless.ti.limit_bytes.{ids}:{2 * 240 * 2**20}|g" in lines  # its retry's limit
    assert any(line.startswith(f"airflow.oomless.ti.peak_bytes.{ids}:") for line in lines)
    assert not [line for line in lines if run.run_id in line]


def _page(run, path: str, token: str | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{run.port}/oomless/{path}",
                                 headers={"Authorization": f"Bearer {token or run.token()}"})
    try:
        with urllib.request.urlopen(req, timeout=30 * SLACK) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_ui_plugin_shows_each_trys_memory_and_the_escalation_ladder_behind_airflows_auth(run):
    from urllib.parse import quote

    _recorded(run)
    plugins = run.api("GET", "/plugins")["plugins"]
    [ours] = [p for p in plugins if p["name"] == "oomless"]
    assert {(v["destination"], v["name"]) for v in ours["external_views"]} == {
        ("task_instance", "Memory"), ("task", "Memory"), ("dag", "Memory"), ("nav", "Memory (oomless)")}
    def ti(task: str, index: str = "-1") -> str:
        return f"ti?dag_id={DAG}&run_id={quote(run.run_id)}&task_id={task}&map_index={quote(index)}"

    status, page = _page(run, ti("transform"))
    assert status == 200, page
    assert "try 1: 240.0 MiB → memory-killed" in page and "try 2: 480.0 MiB → ok" in page, page[-3000:]
    assert "memory-killed: its task process tree exceeded its memory limit of 240.0 MiB (peak" in page
    assert "Recommended: <b>request" in page
    # a mapped index, and the {MAP_INDEX} the UI leaves in place for an unmapped task
    assert "try 1: 240.0 MiB → memory-killed" in _page(run, ti("part", "1"))[1]
    assert "try 2: 240.0 MiB" not in _page(run, ti("part", "0"))[1]
    assert "try 2: 480.0 MiB → ok" in _page(run, ti("transform", "{MAP_INDEX}"))[1]
    status, refused = _page(run, ti("too_big"))
    assert "refused before it ran: a limit of 64.0 TiB is more than the worker&#x27;s whole budget" in refused
    status, dag = _page(run, f"dag?dag_id={DAG}")
    assert status == 200 and all(f">{task}</a>" in dag for task in ("transform", "part", "small", "too_big"))
    status, chart = _page(run, f"task?dag_id={DAG}&task_id=transform")
    assert chart.count("<circle class='peak") == 2 and chart.count("class='rec'") == 2
    assert f">{DAG}</a>" in _page(run, "")[1]
    # Airflow's auth, not ours: a token the auth manager does not accept gets nothing
    assert _page(run, f"dag?dag_id={DAG}", token="not-a-jwt")[0] in (401, 403)


def _screenshot(browser, run, tmp_path, name: str) -> None:
    """A PNG of the page; with OOMLESS_UPDATE_SCREENSHOTS set (cgroup mode), it replaces docs/img/<name>."""
    browser.screenshot(tmp_path / name)
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if run.mode == "cgroup" and os.environ.get("OOMLESS_UPDATE_SCREENSHOTS"):
        shot = Path(__file__).parent.parent.parent / "docs" / "img" / name
        shot.parent.mkdir(exist_ok=True)
        shot.write_bytes((tmp_path / name).read_bytes())


def test_the_ui_plugin_draws_in_a_real_browser_inside_airflows_own_ui(run, tmp_path):
    from urllib.parse import quote

    from browser import Browser

    _recorded(run)
    browser = Browser(tmp_path, slack=SLACK)
    try:
        # the task instance's "Memory" tab of Airflow's UI: our page in its frame
        browser.open(f"http://127.0.0.1:{run.port}/dags/{DAG}/runs/{quote(run.run_id, safe='')}/tasks/transform/"
                     f"plugin/oomless-memory")
        frame = "document.querySelector('iframe') && document.querySelector('iframe').contentDocument"
        # the frame's document parsed to its end: its text grows while the parser streams it in (a loaded
        # one-CPU guest showed the heading "Escalation" before the lines under it)
        loaded = f"{frame} && {frame}.readyState === 'complete' && {frame}.body"
        text = browser.wait_for(f"{loaded} && {frame}.body.innerText.includes('Escalation') "
                                f"&& {frame}.body.innerText", timeout=90 * SLACK)
        assert "Memory of oomless_memory_demo.transform" in text
        assert "try 1: 240.0 MiB → memory-killed" in text and "try 2: 480.0 MiB → ok" in text
        _screenshot(browser, run, tmp_path, "airflow-ti-memory.png")
        # the DAG's and the task's tabs, in Airflow's UI too
        for url, needle, name in (
            (f"/dags/{DAG}/plugin/oomless-dag-memory", "Memory of DAG", "airflow-dag-memory.png"),
            (f"/dags/{DAG}/tasks/transform/plugin/oomless-task-memory", "recommended request",
             "airflow-task-memory.png"),
        ):
            browser.open(f"http://127.0.0.1:{run.port}{url}")
            browser.wait_for(f"{loaded} && {frame}.body.innerText.includes({needle!r})",
                             timeout=90 * SLACK)
            _screenshot(browser, run, tmp_path, name)
        # the task's chart drawn by the browser: one dot per try, the two recommendation lines
        browser.open(f"http://127.0.0.1:{run.port}/oomless/task?dag_id={DAG}&task_id=transform")
        assert browser.wait_for("document.querySelectorAll('svg circle.peak').length === 2", timeout=30 * SLACK)
        assert browser.evaluate("document.querySelectorAll('svg line.rec').length") == 2
    finally:
        browser.close()


def test_the_worker_leaves_no_slot_cgroup_behind(run):
    if run.mode != "cgroup":
        pytest.skip("only cgroup mode makes slot groups")
    assert run.groups_while_running, "the worker's slot groups were not where the test looks"
    run.stop()
    assert _slot_groups(run.procs["worker"].pid) == []
