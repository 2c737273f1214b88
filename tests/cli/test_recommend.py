"""``oomless recommend`` on a history recorded by a real governed worker, and its Celery snippet
applied to a second real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..celery.harness import start_worker

sys.path.insert(0, str(Path(__file__).parent.parent / "celery"))
from worker_app import make_app  # noqa: E402

MiB = 2**20


def oomless(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oomless.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def history(tmp_path_factory, redis_url):
    """A store with t.sized at 5 input sizes (peak ≈ 2 × size) and one memory kill of t.hog."""
    tmp = tmp_path_factory.mktemp("recommend")
    url = f"sqlite:///{tmp / 'history.sqlite'}"
    worker = start_worker(tmp, redis_url, redis_url, mode="watchdog", conf={"oomless_history": url})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    try:
        sized = [app.tasks["t.sized"].delay(mb) for mb in (8, 16, 32, 64, 128) for _ in range(2)]
        killed = app.tasks["t.hog"].delay(512)
        for r in sized:
            r.get(timeout=60)
        with pytest.raises(Exception, match="memory limit"):
            killed.get(timeout=60)
    finally:
        worker.stop()
        app.close()
    return url


def test_json_gives_request_limit_samples_waste_and_the_size_fit(history):
    out = oomless("recommend", "--history", history, "--format", "json")
    assert out.returncode == 0, out.stderr
    recs = {r["task_name"]: r for r in json.loads(out.stdout)}
    sized = recs["t.sized"]
    assert sized["samples"] == 10 and sized["confidence"] == "low"
    assert 240 * MiB <= sized["max_peak"] <= 300 * MiB  # 128 MiB of input held twice
    assert sized["limit"] >= sized["max_peak"] * 1.2 and sized["request"] <= sized["limit"]
    assert (sized["current_request"], sized["current_limit"]) == (1024 * MiB, 1024 * MiB)
    assert sized["waste"] > 700 * MiB  # 1 GiB declared, ~2-256 MiB used
    fit = sized["by_size"]
    assert fit is not None and 1.8 <= fit["slope"] <= 2.3  # 2 bytes held per input byte
    hog = recs["t.hog"]
    assert (hog["kills"], hog["max_peak"]) == (1, 356 * MiB)  # killed at 256 MiB: max(× 1.2, + 100 MiB)
    assert hog["lack"] > 0


def test_the_table_names_each_task_and_its_numbers(history):
    out = oomless("recommend", "--history", history)
    assert out.returncode == 0, out.stderr
    assert "t.sized" in out.stdout and "by input size" in out.stdout and "t.hog" in out.stdout
    assert "inputs seen 8.0 MiB–128.0 MiB; above 140.8 MiB: ≥ this row" in out.stdout  # the fit's range
    assert "samples from" in out.stdout


def test_the_celery_snippet_sizes_a_task_that_declares_nothing_on_a_real_worker(history, tmp_path, redis_url):
    out = oomless("recommend", "--history", history, "--format", "celery", "--task", "t.sized")
    assert out.returncode == 0, out.stderr
    scope: dict = {}
    exec(out.stdout, scope)  # it is meant to be pasted into a config module
    annotations = scope["task_annotations"]
    wanted = json.loads(oomless("recommend", "--history", history, "--format", "json", "--task", "t.sized").stdout)[0]
    # Give the recommendation to t.hold, which declares no memory, and watch a worker enforce it.
    annotations["t.hold"] = annotations.pop("t.sized")
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", conf={"task_annotations": annotations})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    try:
        app.tasks["t.hold"].delay(0.1, 8).get(timeout=30)
    finally:
        worker.stop()
        app.close()
    from oomless.units import format_size

    assert f"limit {format_size(wanted['limit'])}, request {format_size(wanted['request'])}" in worker.text()


def test_an_unknown_store_and_a_bad_since_are_usage_errors_without_traceback(tmp_path):
    missing = oomless("recommend", "--history", f"sqlite:///{tmp_path / 'nope.sqlite'}")
    assert missing.returncode == 2 and "no history store at" in missing.stderr and "Traceback" not in missing.stderr
    bad = oomless("recommend", "--history", f"sqlite:///{tmp_path / 'nope.sqlite'}", "--since", "yesterday")
    assert bad.returncode == 2 and "'yesterday' is neither a duration" in bad.stderr


def test_an_empty_database_has_nothing_to_recommend_and_is_left_untouched(tmp_path):
    import sqlite3

    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()
    out = oomless("recommend", "--history", f"sqlite:///{path}")
    assert out.returncode == 1 and "no recorded peaks in 0 attempts" in out.stderr
    with sqlite3.connect(path) as db:
        assert db.execute("select name from sqlite_master").fetchall() == []


def test_a_store_that_cannot_be_reached_is_named_without_its_password():
    out = oomless("recommend", "--history", "postgresql+psycopg://me:s3cret@127.0.0.1:1/none?connect_timeout=1")
    assert out.returncode == 2 and "cannot open the history store" in out.stderr
    assert "s3cret" not in out.stderr and "me:***@127.0.0.1:1/none" in out.stderr


def test_airflow_tries_are_recommended_per_dag_task_as_executor_config_lines(tmp_path):
    import time

    from oomless.history import Attempt
    from oomless.history.store import Store

    url = f"sqlite:///{tmp_path / 'airflow.sqlite'}"
    now = time.time()
    Store(url).add([
        Attempt("execute_workload", f"id{i}", "ok", now, 1.0, peak_rss=(100 + i) * MiB, dag_id="etl",
                af_task_id="transform", run_id="r", map_index=-1, try_number=1)
        for i in range(5)
    ])
    out = oomless("recommend", "--history", url, "--format", "airflow")
    assert out.returncode == 0, out.stderr
    assert "# DAG 'etl', task 'transform' (5 samples):" in out.stdout
    assert "from oomless.airflow import memory" in out.stdout
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("executor_config=memory("))
    scope: dict = {}
    exec("from oomless.airflow import memory\n" + line.replace("executor_config=", "config = "), scope)
    spec = scope["config"]["oomless"]
    assert spec["limit"] == -(-int(104 * MiB * 1.2) // MiB) * MiB and spec["request"] <= spec["limit"]
