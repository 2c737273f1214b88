"""docs/airflow.md §1, followed as a newcomer would: its ``bash setup`` block, run as written by bash on a
fresh venv (a new ``python -m venv``, ``pip install '.[airflow]'`` from this checkout), with only what differs
between machines substituted: the api-server's port, the Redis database, the folders, serve-logs' port.
The example DAG then runs to its documented end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("airflow.providers.celery", reason="Airflow 3.3 needs Python 3.11+ (the 'airflow' extra)")

sys.path.insert(0, str(Path(__file__).parent))
from stack import free_port  # noqa: E402

from ..celery.harness import SLACK  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
DAG = "oomless_memory_demo"


def setup_block() -> str:
    """The ``bash setup`` block of docs/airflow.md §1."""
    text = (ROOT / "docs" / "airflow.md").read_text()
    section = text[text.index("## 1. "):text.index("## 2. ")]
    [block] = re.findall(r"```bash setup\n(.*?)```", section, re.S)
    return block


def test_the_setup_block_runs_the_example_dag_on_a_fresh_venv(tmp_path, redis_url):
    # a database of its own on the Redis server; the embedded one (a unix socket) as it is
    broker = f"{redis_url.rstrip('/')}/7" if redis_url.startswith("redis://") else redis_url
    port, logs = free_port(), free_port()
    block = setup_block()
    for documented, here in (
        ("python3 -m venv airflow-venv", f"{sys.executable} -m venv {tmp_path / 'venv'}"),
        (". airflow-venv/bin/activate", f". {tmp_path / 'venv'}/bin/activate"),
        ("$PWD/airflow-home", str(tmp_path / "home")),
        ("127.0.0.1:8080", f"127.0.0.1:{port}"),
        ("--port 8080", f"--port {port}"),
        ("redis://127.0.0.1:6379/0", broker),
    ):
        assert documented in block, f"docs/airflow.md §1 no longer says {documented!r}: update this test"
        block = block.replace(documented, here)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(logs)
    if broker.startswith("redis://"):
        import redis

        redis.Redis.from_url(broker).flushdb()
    log = open(tmp_path / "setup.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["bash", "-ec", block], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    airflow = [str(tmp_path / "venv" / "bin" / "airflow")]
    home = {**env, "AIRFLOW_HOME": str(tmp_path / "home")}
    try:
        assert proc.wait(timeout=600) == 0, (tmp_path / "setup.log").read_text()[-5000:]
        def cli(*args: str) -> list[dict]:
            """A JSON-printing airflow command's answer (log lines may come before it on stdout)."""
            out = subprocess.run([*airflow, *args, "-o", "json"], env=home, capture_output=True, text=True,
                                 timeout=120).stdout
            found = [line for line in out.splitlines() if line.startswith("[")]
            return json.loads(found[-1]) if found else []

        deadline = time.monotonic() + 300 * SLACK
        while True:
            runs = cli("dags", "list-runs", DAG)
            if runs and runs[0]["state"] in ("success", "failed") or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert runs and runs[0]["state"] == "failed", runs  # too_big fails on purpose, at once
        states = cli("tasks", "states-for-dag-run", DAG, runs[0]["run_id"])
        got: dict[str, set[str]] = {}
        for state in states:
            got.setdefault(state["task_id"], set()).add(state["state"])
        assert got["transform"] == got["sort_words"] == got["small"] == got["part"] == {"success"}, states
        assert got["too_big"] == {"failed"}, states
        # installed from the checkout, not the test's own venv: the plugin and the policy came with it
        venv_site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
        assert (venv_site / "oomless" / "airflow" / "ui.py").exists()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(tmp_path / "venv", ignore_errors=True)
