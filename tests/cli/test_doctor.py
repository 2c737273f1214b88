"""`oomless doctor` says what this host supports, the mode a worker would run, and its budget.

Every test runs the real command in a subprocess (`python -m oomless.cli doctor`)
on this machine: cgroup v1 writable by root, /proc readable.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from oomless.linux import cgroup


def doctor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oomless.cli", "doctor", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


def line(output: str, key: str) -> str:
    found = re.search(rf"^{key}\s+(.*)$", output, re.M)
    assert found, f"no {key!r} line in:\n{output}"
    return found.group(1)


def test_doctor_names_the_mode_a_worker_would_run_and_why():
    result = doctor()
    assert result.returncode == 0, result.stderr
    expected = "cgroup" if cgroup.detect().usable else "watchdog"
    assert re.match(rf"{expected} \(requested auto\): \S", line(result.stdout, "mode"))


def test_doctor_reports_cgroup_and_watchdog_with_their_limits():
    out = doctor().stdout
    host = cgroup.detect()
    assert line(out, "cgroup").startswith(f"v{host.version} at {host.path}: ")
    assert "writable memory cgroup: root on cgroup v1, or a cgroup v2 subtree delegated" in out
    assert line(out, "watchdog") == "works (/proc is readable)"
    assert "allocation rate × poll interval" in out


def test_doctor_computes_an_auto_budget_from_machine_memory():
    budget = line(doctor().stdout, "budget")
    assert "auto: machine memory" in budget and "reserve" in budget


def test_doctor_takes_the_budget_from_memory_budget():
    assert line(doctor("--memory-budget", "6GiB").stdout, "budget") == "6.0 GiB (--memory-budget=6GiB)"


def test_doctor_reports_versions_and_kernel():
    host = line(doctor().stdout, "host")
    assert host.startswith("Linux ") and "Celery 5." in host and "billiard" in host and "kombu" in host


def test_doctor_reads_oomless_settings_and_task_limits_from_the_app(tmp_path):
    (tmp_path / "doctorapp.py").write_text(textwrap.dedent("""
        from celery import Celery
        import oomless

        app = Celery("doctorapp", broker="memory://")
        app.conf.update(oomless_budget="3GiB", oomless_enforcement="watchdog")
        oomless.install(app)

        @app.task(name="doctorapp.fits", memory="1GiB")
        def fits(): ...

        @app.task(name="doctorapp.too_big", memory="4GiB")
        def too_big(): ...
    """))
    result = doctor("-A", "doctorapp:app", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert line(result.stdout, "mode").startswith("watchdog (requested watchdog)")
    assert line(result.stdout, "budget") == "3.0 GiB (oomless_budget=3GiB)"
    assert "doctorapp.fits: request 1.0 GiB, limit 1.0 GiB\n" in result.stdout
    assert "doctorapp.too_big: request 4.0 GiB, limit 4.0 GiB  INFEASIBLE" in result.stdout


def test_doctor_exits_2_when_the_requested_mode_cannot_work():
    result = doctor("--pool", "solo", "--enforcement", "watchdog")
    assert result.returncode == 2
    assert "oomless_enforcement=watchdog cannot work" in result.stderr
    assert "prefork" in result.stderr


def test_doctor_warns_that_auto_enforces_nothing_on_the_solo_pool():
    result = doctor("--pool", "solo")
    assert result.returncode == 0
    assert line(result.stdout, "mode").startswith("off (requested auto)")
    assert "memory limits are NOT enforced" in result.stdout


def test_doctor_exits_2_on_an_invalid_budget():
    result = doctor("--memory-budget", "2x")
    assert result.returncode == 2
    assert "--memory-budget '2x' is not a size" in result.stderr


def test_doctor_exits_2_when_the_app_cannot_be_loaded(tmp_path):
    result = doctor("-A", "no_such_module:app", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot load the Celery app 'no_such_module:app'" in result.stderr


def test_doctor_json_is_one_object_with_mode_and_budget():
    result = doctor("--json", "--memory-budget", "6GiB")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["error"] is None
    assert report["budget"] == {"bytes": 6 * 2**30, "source": "--memory-budget=6GiB"}
    assert report["mode"]["chosen"] in ("cgroup", "watchdog")
    assert report["cgroup"]["path"] == cgroup.detect().path
    assert report["memory"]["machine"] > 0


def test_doctor_json_carries_the_error_and_exits_2():
    result = doctor("--json", "--pool", "solo", "--enforcement", "cgroup")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert "oomless_enforcement=cgroup cannot work" in report["error"]


def test_doctor_warns_when_the_budget_is_more_than_the_machine_has():
    result = doctor("--memory-budget", "64TiB")
    assert result.returncode == 0
    assert line(result.stdout, "budget") == "64.0 TiB (--memory-budget=64TiB)"
    assert "warning: --memory-budget=64TiB is more than the machine memory" in result.stdout


def test_doctor_says_tasks_are_packed_by_request_and_evicted_under_pressure(tmp_path):
    (tmp_path / "admapp.py").write_text(textwrap.dedent("""
        from celery import Celery
        import oomless

        app = Celery("admapp", broker="memory://")
        app.conf.update(oomless_backfill_window=20, oomless_give_back_after=0, oomless_infeasible="queue:big")
        oomless.install(app)
    """))
    result = doctor("-A", "admapp:app", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert line(result.stdout, "admission").startswith("on: a task starts when a slot is free and its request fits")
    assert "backfill window 20 s; give back after never" in result.stdout
    assert "infeasible requests go to queue 'big' (once)" in result.stdout
    assert line(result.stdout, "eviction").startswith("on: the task most over its request is requeued (at most 3")


def test_doctor_says_admission_is_off_on_the_solo_pool():
    result = doctor("--pool", "solo", "--json")
    report = json.loads(result.stdout)
    assert report["admission"]["on"] is False and "prefork only" in report["admission"]["reason"]
    assert report["admission"]["eviction"] is False


def test_doctor_says_how_airflow_tries_are_enforced_in_each_mode():
    import pytest

    pytest.importorskip("airflow.providers.celery", reason="Airflow 3.3 needs Python 3.11+")
    for mode, words in (("watchdog", "loses its task runner and everything below it (watchdog)"),
                        ("off", "tries are accounted, never killed")):
        out = doctor("--enforcement", mode).stdout
        assert line(out, "airflow").startswith("apache-airflow 3.3")
        assert words in out


def test_doctor_says_where_history_and_metrics_go_or_how_to_turn_them_on(tmp_path):
    (tmp_path / "observed.py").write_text(textwrap.dedent("""
        from celery import Celery
        import oomless

        app = Celery("observed", broker="memory://")
        app.conf.update(oomless_history="postgresql+psycopg://me:s3cret@db/oomless", oomless_learned=True,
                        oomless_metrics_port=9808)
        oomless.install(app)
    """))
    on = doctor("-A", "observed:app", cwd=tmp_path)
    assert on.returncode == 0, on.stderr
    assert line(on.stdout, "history") == ("every attempt is recorded in postgresql+psycopg://me:***@db/oomless; "
                                          "tasks that declare no memory get their learned size")
    assert line(on.stdout, "metrics") == "Prometheus metrics on http://127.0.0.1:9808/metrics"
    off = doctor()
    assert line(off.stdout, "history").startswith("off: set oomless_history = 'default'")
    assert line(off.stdout, "metrics").startswith("off: set oomless_metrics_port")
