"""`oomless doctor` says what this host supports, the mode a worker would run, and its budget.

Every test runs the real command in a subprocess (`python -m oomless.cli doctor`)
on this machine: cgroup v1 writable by root, /proc readable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from oomless.linux import cgroup


def doctor(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oomless.cli", "doctor", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
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
    assert {k: report["budget"][k] for k in ("bytes", "source", "auto", "reserve")} == {
        "bytes": 6 * 2**30, "source": "--memory-budget=6GiB", "auto": False, "reserve": 0,
    }
    assert report["mode"]["chosen"] in ("cgroup", "watchdog")
    assert report["cgroup"]["path"] == cgroup.detect().path
    assert report["memory"]["machine"] > 0


def test_doctor_json_carries_the_error_and_exits_2():
    result = doctor("--json", "--pool", "solo", "--enforcement", "cgroup")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert "oomless_enforcement=cgroup cannot work" in report["error"]


def test_doctor_json_checks_are_the_lines_and_warnings_of_the_text(tmp_path):
    """Diagnosis and rendering are apart: --json's checks hold every line the text shows, for the same run."""
    (tmp_path / "bothapp.py").write_text(textwrap.dedent("""
        from celery import Celery
        import oomless

        app = Celery("bothapp", broker="memory://", backend="rpc://")
        app.conf.update(oomless_budget="3GiB", oomless_infeasible="queue:big")
        oomless.install(app)

        @app.task(name="bothapp.fits", memory="1GiB")
        def fits(): ...

        @app.task(name="bothapp.too_big", memory="4GiB")
        def too_big(): ...
    """))
    text = doctor("-A", "bothapp:app", cwd=tmp_path)
    as_json = doctor("-A", "bothapp:app", "--json", cwd=tmp_path)
    assert text.returncode == as_json.returncode == 0, text.stderr
    report = json.loads(as_json.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    shown = [f"{check['name']:<9} {check['sentence']}" for check in report["checks"]]
    assert [f"{name:<9} {line(text.stdout, name)}" for name in checks] == shown
    body = [row for row in text.stdout.splitlines() if not row.startswith("warning: ")]
    assert body == [row for check in report["checks"]
                    for row in [f"{check['name']:<9} {check['sentence']}"] + [f"{'':<9} {n}" for n in check["notes"]]]
    assert warnings_of(text.stdout) == report["warnings"]
    # The figures behind the sentences, and the state of each line.
    assert checks["budget"]["figures"]["bytes"] == 3 * 2**30 and checks["budget"]["sentence"].startswith("3.0 GiB")
    assert checks["tasks"]["state"] == "warn" and checks["tasks"]["figures"]["infeasible"] == ["bothapp.too_big"]
    assert "bothapp.too_big: request 4.0 GiB, limit 4.0 GiB  INFEASIBLE" in checks["tasks"]["notes"][1]
    assert checks["results"]["state"] == "warn" and checks["results"]["figures"]["kind"] == "rpc"
    assert checks["admission"]["figures"]["infeasible_queue"] == "big"
    assert checks["host"]["state"] == checks["budget"]["state"] == checks["messages"]["state"] == "ok"


def test_doctor_json_marks_the_line_that_stops_the_worker_as_failed():
    text = doctor("--pool", "solo", "--enforcement", "cgroup")
    report = json.loads(doctor("--json", "--pool", "solo", "--enforcement", "cgroup").stdout)
    [mode] = [check for check in report["checks"] if check["name"] == "mode"]
    assert mode["state"] == "fail" and mode["figures"] == {"requested": "cgroup", "chosen": None}
    assert line(text.stdout, "mode") == mode["sentence"] == "requested cgroup: cannot work here (see the error below)"
    assert report["error"] in " ".join(text.stderr.split())

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
                        oomless_metrics_port=9894)
        oomless.install(app)
    """))
    on = doctor("-A", "observed:app", cwd=tmp_path)
    assert on.returncode == 0, on.stderr
    assert line(on.stdout, "history") == "every attempt is recorded in postgresql+psycopg://me:***@db/oomless"
    # the store cannot be reached: said with its URL, password hidden
    learned = line(on.stdout, "learned")
    assert learned.startswith("oomless_learned is on, but no task has a learned size yet: cannot open the history "
                              "store postgresql+psycopg://me:***@db/oomless"), learned
    assert "s3cret" not in on.stdout
    assert line(on.stdout, "metrics") == "Prometheus metrics on http://127.0.0.1:9894/metrics"
    off = doctor()
    assert line(off.stdout, "history").startswith("off: set oomless_history = 'default'")
    assert line(off.stdout, "metrics").startswith("off: set oomless_metrics_port")


def test_doctor_says_where_learned_sizes_come_from_and_how_many_tasks_they_cover(tmp_path):
    from oomless.history import Attempt
    from oomless.history.store import Store

    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    Store(url).add([Attempt(name, f"{name}{i}", "ok", time.time() - 60, 1.0, peak_rss=100 * 2**20)
                    for name in ("t.a", "t.b") for i in range(6)] +
                   [Attempt("t.few", "f", "ok", time.time() - 60, 1.0, peak_rss=2**20)])
    (tmp_path / "learning.py").write_text(textwrap.dedent(f"""
        from celery import Celery
        import oomless

        app = Celery("learning", broker="memory://")
        app.conf.update(oomless_history={url!r}, oomless_learned=True)
        oomless.install(app)
    """))
    out = doctor("-A", "learning:app", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert line(out.stdout, "learned") == (f"tasks that declare no memory get their learned size: 2 task(s) have one "
                                           f"in {url} (the last 30 days, at least 5 samples each)")
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    (tmp_path / "learning.py").write_text((tmp_path / "learning.py").read_text().replace(url, empty))
    out = doctor("-A", "learning:app", cwd=tmp_path)
    assert line(out.stdout, "learned").startswith(f"oomless_learned is on, but no task has a learned size yet: no "
                                                  f"history store at {tmp_path / 'empty.sqlite'}")
    assert not (tmp_path / "empty.sqlite").exists()  # reading never creates a store


# --- result backend and serializers (issue 7) ------------------------------------------------------------------


def app_module(folder: Path, name: str, body: str) -> str:
    """Write ``name.py`` (a Celery app ``app`` built from ``body``) into ``folder``; returns ``name:app``."""
    (folder / f"{name}.py").write_text("from celery import Celery\n" + textwrap.dedent(body))
    return f"{name}:app"


def warnings_of(output: str) -> list[str]:
    return re.findall(r"^warning: (.*)$", output, re.M)


def test_doctor_warns_that_rpc_results_are_lost_with_the_client_and_says_what_to_use(tmp_path, redis_url):
    spec = app_module(tmp_path, "rpcapp", f"""
        app = Celery("rpcapp", broker={redis_url!r}, backend="rpc://")

        @app.task(name="rpcapp.add")
        def add(a, b):
            return a + b
    """)
    result = doctor("-A", spec, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert line(result.stdout, "results") == "rpc:// (rpc)"
    [warning] = warnings_of(result.stdout)
    assert warning.startswith("result_backend rpc://: results travel back in the reply queue of the client")
    assert "lost when that client restarts" in warning and "neither Airflow nor Flower can see them" in warning
    assert "use Redis (result_backend = 'redis://" in warning and "'db+postgresql+psycopg://" in warning
    assert warning.endswith("with result_expires set")


def test_doctor_warns_about_in_memory_results_only_while_tasks_keep_them(tmp_path, redis_url):
    body = f"""
        app = Celery("{{name}}", broker={redis_url!r}, backend="cache+memory://")
        app.conf.task_ignore_result = {{ignore}}

        @app.task(name="{{name}}.load")
        def load(): ...
    """
    kept = doctor("-A", app_module(tmp_path, "memkept", body.format(name="memkept", ignore=False)), cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    [warning] = warnings_of(kept.stdout)
    assert warning.startswith("result_backend cache+memory:// keeps results in the memory of the process that "
                              "stored them (a worker's pool child) while task memkept.load keeps its results")
    assert "meant for tests; use Redis" in warning
    ignored = doctor("-A", app_module(tmp_path, "memignored", body.format(name="memignored", ignore=True)),
                     cwd=tmp_path)
    assert line(ignored.stdout, "results") == "cache+memory:// (memory)"
    assert warnings_of(ignored.stdout) == []


def test_doctor_warns_when_no_result_backend_is_set_but_tasks_keep_results(tmp_path, redis_url):
    spec = app_module(tmp_path, "nobackend", f"""
        app = Celery("nobackend", broker={redis_url!r})

        @app.task(name="nobackend.report")
        def report(): ...

        @app.task(name="nobackend.fire", ignore_result=True)
        def fire(): ...
    """)
    result = doctor("-A", spec, cwd=tmp_path)
    assert line(result.stdout, "results") == "none: result_backend is unset, results are not stored"
    [warning] = warnings_of(result.stdout)
    assert warning.startswith("no result_backend is set while task nobackend.report keeps its results "
                              "(ignore_result=False): results are dropped and AsyncResult.get() raises")
    assert "set task_ignore_result = True if nobody reads results, or use Redis" in warning


def redis_backend_app(redis_url: str, **conf):
    """A Celery app storing results in the real Redis (database 11 of the local server, or the embedded one)."""
    from celery import Celery

    backend = f"{redis_url}/11" if redis_url.startswith("redis://") else redis_url
    app = Celery("expiring", broker=redis_url, backend=backend, set_as_current=False)
    app.conf.update(conf)
    return app, backend


def test_doctor_warns_when_results_never_expire_as_redis_confirms(tmp_path, redis_url):
    import uuid

    app, backend = redis_backend_app(redis_url, result_expires=None)
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, 42, "SUCCESS")
    try:
        # What the warning is about, seen in Redis itself: the result key has no TTL.
        assert app.backend.client.ttl(app.backend.get_key_for_task(task_id)) == -1
    finally:
        app.backend.forget(task_id)
    spec = app_module(tmp_path, "forever", f"""
        app = Celery("forever", broker={redis_url!r}, backend={backend!r})
        app.conf.result_expires = None
    """)
    result = doctor("-A", spec, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert line(result.stdout, "results").endswith("(redis): results never expire (result_expires = None)")
    [warning] = warnings_of(result.stdout)
    assert warning.startswith("result_expires = None: results never expire, so every result stays in")
    assert "set result_expires (Celery's default is 1 day)" in warning


def test_doctor_says_when_redis_results_expire_and_warns_about_nothing(tmp_path, redis_url):
    import uuid

    app, backend = redis_backend_app(redis_url)
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, 42, "SUCCESS")
    try:
        assert 0 < app.backend.client.ttl(app.backend.get_key_for_task(task_id)) <= 86400
    finally:
        app.backend.forget(task_id)
    spec = app_module(tmp_path, "expiring", f"""
        app = Celery("expiring", broker={redis_url!r}, backend={backend!r})
    """)
    result = doctor("-A", spec, cwd=tmp_path)
    assert line(result.stdout, "results").endswith("(redis): results expire after 1 day (result_expires)")
    assert line(result.stdout, "messages") == "task json, result json; accepted: json (measured costs: docs/data.md)"
    assert warnings_of(result.stdout) == []


def test_doctor_treats_a_zero_result_expires_as_never(tmp_path, redis_url):
    spec = app_module(tmp_path, "zero", f"""
        from datetime import timedelta

        app = Celery("zero", broker={redis_url!r}, backend="redis://127.0.0.1:6379/11")
        app.conf.result_expires = timedelta(0)
    """)
    [warning] = warnings_of(doctor("-A", spec, cwd=tmp_path).stdout)
    assert warning.startswith("result_expires = datetime.timedelta(0): results never expire")


def postgres_database(name: str) -> str:
    """A database of its own on the local PostgreSQL (created when missing); its SQLAlchemy URL."""
    import pytest

    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True,
                             connect_timeout=2) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {exc}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def test_doctor_says_database_results_are_deleted_only_by_celery_beat(tmp_path, redis_url):
    import uuid

    from celery import Celery
    from sqlalchemy import create_engine, text

    url = postgres_database("oomless_doctor_results")
    app = Celery("dbresults", broker=redis_url, backend=f"db+{url}", set_as_current=False)
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, 42, "SUCCESS")
    # The row stays: PostgreSQL has no TTL, only celery.backend_cleanup deletes old rows.
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM celery_taskmeta WHERE task_id = :t"), {"t": task_id})
        assert rows.scalar() == 1
        conn.execute(text("DELETE FROM celery_taskmeta WHERE task_id = :t"), {"t": task_id})  # leave nothing behind
        conn.commit()
    engine.dispose()
    spec = app_module(tmp_path, "dbresults", f"""
        app = Celery("dbresults", broker={redis_url!r}, backend="db+{url}")
    """)
    result = doctor("-A", spec, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert line(result.stdout, "results") == (
        f"db+{url} (database): results older than 1 day (result_expires) are deleted only by the "
        "celery.backend_cleanup task, which celery beat runs daily at 4:00; without beat the table grows: run "
        "celery beat, or (Airflow runs no beat) airflow db clean --tables celery_taskmeta,celery_tasksetmeta")
    assert warnings_of(result.stdout) == []


def test_doctor_judges_the_result_backend_without_connecting_to_it(tmp_path):
    # Nothing listens on port 1: a doctor that connected would fail or hang here.
    spec = app_module(tmp_path, "unreachable", """
        app = Celery("unreachable", broker="redis://127.0.0.1:1/0",
                     backend="db+postgresql+psycopg://nobody:s3cret@127.0.0.1:1/none")
        app.conf.result_expires = None
    """)
    result = doctor("-A", spec, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert results["backend"] == "db+postgresql+psycopg://nobody:***@127.0.0.1:1/none"
    assert results["kind"] == "database" and results["expires"] is None
    assert [p.split(":")[0] for p in results["problems"]] == ["result_expires = None"]


def test_doctor_warns_that_pickle_is_an_explicit_opt_in(tmp_path, redis_url):
    spec = app_module(tmp_path, "pickled", f"""
        app = Celery("pickled", broker={redis_url!r}, backend="redis://127.0.0.1:6379/11")
        app.conf.update(result_serializer="pickle", accept_content=["json", "application/x-python-serialize"])
    """)
    result = doctor("-A", spec, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert line(result.stdout, "messages").startswith("task json, result pickle; accepted: json, pickle")
    [warning] = warnings_of(result.stdout)
    assert warning.startswith("pickle is in result_serializer, accept_content: an explicit opt-in, and a risky one: "
                              "decoding a pickle runs whatever code the message carries")
    assert "anyone who can write to the broker" in warning
    assert "measured in docs/data.md (Serializers and result backends): ~10 µs per message against json" in warning


def test_doctor_names_pickle_in_result_accept_content_set_on_its_own(tmp_path):
    spec = app_module(tmp_path, "resultpickle", """
        app = Celery("resultpickle", broker="memory://", backend="redis://127.0.0.1:6379/11")
        app.conf.result_accept_content = ["pickle"]
    """)
    out = doctor("-A", spec, cwd=tmp_path).stdout
    assert line(out, "messages").endswith("; results accepted: pickle (measured costs: docs/data.md)")
    [warning] = warnings_of(out)
    assert warning.startswith("pickle is in result_accept_content: an explicit opt-in")


def test_doctor_without_an_app_says_nothing_about_results():
    result = doctor("--json")
    assert "results" not in json.loads(result.stdout)
    assert "results" not in doctor().stdout.split("\nwarning")[0]


def test_doctor_judges_airflows_default_celery_result_backend(tmp_path):
    import os

    import pytest

    pytest.importorskip("airflow.providers.celery", reason="Airflow 3.3 needs Python 3.11+")
    spec = app_module(tmp_path, "airflowconf", """
        from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

        app = Celery("airflowconf")
        app.config_from_object(DEFAULT_CELERY_CONFIG)
    """)
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql://airflow:pw@127.0.0.1:5432/airflow",
               # Airflow derives an asyncpg URL otherwise, and asyncpg is not installed
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC="postgresql+psycopg_async://airflow:pw@127.0.0.1:5432/airflow",
               AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:6379/0")
    env.pop("AIRFLOW__CELERY__RESULT_BACKEND", None)
    result = subprocess.run([sys.executable, "-m", "oomless.cli", "doctor", "-A", spec], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    # No [celery] result_backend: the provider stores results on the metadata database, where only
    # celery beat (which Airflow does not run) or airflow db clean removes them.
    assert line(result.stdout, "results").startswith(
        "db+postgresql+psycopg://airflow:***@127.0.0.1:5432/airflow (database): results older than 1 day")
    assert "airflow db clean --tables celery_taskmeta,celery_tasksetmeta" in result.stdout
    assert not [w for w in warnings_of(result.stdout) if "result" in w or "pickle" in w]


def test_doctor_shows_the_size_limit_on_task_messages_when_no_claim_store_is_set(tmp_path):
    spec = app_module(tmp_path, "nooffload", """
        import oomless
        app = Celery("nooffload", broker="amqp://guest:guest@127.0.0.1:5672//", backend="redis://127.0.0.1:6379/11")
        oomless.install(app)
    """)
    result = doctor("-A", spec, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert line(result.stdout, "offload").startswith(
        "off: a task message over 16.0 MiB (what amqp practically carries; oomless_max_message_size) is refused "
        "before it is sent")
    # install() wraps the serializer to check sizes; doctor still names the one underneath.
    assert line(result.stdout, "messages").startswith("task json, result json")


def test_doctor_shows_the_claim_store_and_warns_when_a_local_one_meets_a_remote_broker(tmp_path):
    body = """
        import oomless
        app = Celery("{name}", broker="redis://{host}:6379/0", backend="redis://{host}:6379/1")
        app.conf.update(oomless_offload={store!r}, oomless_offload_threshold="4MiB", result_serializer="pickle",
                        accept_content=["json", "pickle"])
        oomless.install(app)
    """
    store = str(tmp_path / "claims")
    local = doctor("-A", app_module(tmp_path, "offlocal", body.format(name="offlocal", host="127.0.0.1", store=store)),
                   cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert line(local.stdout, "offload") == (
        f"on: arguments and results over 4.0 MiB travel by reference through {store} (arguments kept 7 days; "
        f"results until forgotten or expired)")
    # The wrapped pickle (oomless+pickle) is still pickle, and still warned about.
    assert any(w.startswith("pickle is in result_serializer") for w in warnings_of(local.stdout))
    assert not any("claim store" in w for w in warnings_of(local.stdout))
    remote_app = app_module(tmp_path, "offremote", body.format(name="offremote", host="10.1.2.3", store=store))
    remote = doctor("-A", remote_app, cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr
    [warning] = [w for w in warnings_of(remote.stdout) if "claim store" in w]
    assert warning.startswith(f"the claim store is a local directory ({store}) but the broker is on 10.1.2.3")


def test_doctor_on_an_airflow_worker_host_reads_oomless_from_airflows_config_without_a(tmp_path):
    pytest.importorskip("airflow.providers.celery", reason="Airflow 3.3 needs Python 3.11+")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env = {**base, "AIRFLOW_HOME": str(tmp_path),
           "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "oomless.airflow.celery_config.CELERY_CONFIG",
           "AIRFLOW__OOMLESS__BUDGET": "3GiB", "AIRFLOW__OOMLESS__ENFORCEMENT": "watchdog"}
    from oomless.history import Attempt
    from oomless.history.store import Store

    history = f"sqlite:///{tmp_path / 'history.sqlite'}"
    Store(history).add([Attempt("execute_workload", f"t{i}", "ok", 1.0, 1.0, peak_rss=(58 + i) * 2**20, mode="cgroup",
                                dag_id="d", af_task_id="t", run_id="r", try_number=1) for i in range(3)])
    env["AIRFLOW__OOMLESS__HISTORY"] = history
    found = doctor(env=env)
    assert found.returncode == 0, found.stderr
    assert ("an Airflow try is charged at least 58.0 MiB before its code runs: the smallest peak of 3 tries that "
            "ended well in cgroup mode in the history") in found.stdout
    assert line(found.stdout, "app").startswith("Airflow's Celery worker: settings from [oomless]")
    assert line(found.stdout, "budget") == "3.0 GiB (oomless_budget=3GiB)"  # not the machine's auto budget
    assert line(found.stdout, "mode").startswith("watchdog (requested watchdog)")
    # [oomless] set, but the workers do not load oomless's Celery config: said, not silently ignored
    del env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
    unloaded = doctor(env=env)
    assert "its Celery workers do not load it: [celery] celery_config_options" in line(unloaded.stdout, "app")
    assert "auto" in line(unloaded.stdout, "budget")
    # a host without Airflow configured: no app line, no Airflow import
    bare = doctor(env={**base, "HOME": str(tmp_path / "nohome")})
    assert not re.search(r"^app\s", bare.stdout, re.M)
