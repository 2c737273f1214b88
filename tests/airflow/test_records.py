"""Memory-kill records in a real result backend, and the provider info against Airflow's own schema."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from celery import Celery

from oomless.airflow.provider import get_provider_info
from oomless.airflow.tries import count_memory_killed, record_id, record_kill


@pytest.fixture
def backend(redis_url):
    url = f"{redis_url.rstrip('/')}/5" if redis_url.startswith("redis://") else redis_url
    app = Celery("records", backend=url)
    yield app.backend
    app.close()


def test_record_ids_differ_per_task_instance_and_try():
    ids = {record_id("etl", "r1", "load", 3, 1), record_id("etl", "r1", "load", 3, 2)}
    ids.add(record_id("etl", "r1", "load", 4, 1))
    assert len(ids) == 3


def test_only_memory_killed_earlier_tries_are_counted(backend):
    ids = ("etl", f"manual__{uuid.uuid4()}", "load", 3)  # a task instance of its own
    record_kill(backend, ids, 1, 256 * 2**20, 256 * 2**20)
    record_kill(backend, ids, 3, 512 * 2**20, 512 * 2**20)
    assert count_memory_killed(backend, ids, 1) == 0
    assert count_memory_killed(backend, ids, 2) == 1
    assert count_memory_killed(backend, ids, 4) == 2  # try 2 failed for another reason: not counted


def test_provider_info_is_valid_for_airflow():
    airflow = pytest.importorskip("airflow", reason="Airflow 3.3 needs Python 3.11+")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert set(info["config"]["oomless"]["options"]) >= {"budget", "enforcement", "infeasible"}


def test_airflow_discovers_the_provider_and_its_oomless_section(tmp_path):
    pytest.importorskip("airflow.providers.celery", reason="Airflow 3.3 needs Python 3.11+")
    import os
    import subprocess
    import sys

    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    env.pop("AIRFLOW__OOMLESS__BUDGET", None)
    got = subprocess.run([sys.executable, "-m", "airflow", "config", "get-value", "oomless", "infeasible"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert got.stdout.strip().splitlines()[-1] == "fail", got.stderr[-2000:]
    listed = subprocess.run([sys.executable, "-m", "airflow", "providers", "list"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert "oomless" in listed.stdout
