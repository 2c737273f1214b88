"""The history store on a real SQLite file and on the local PostgreSQL server, and the recorder
that writes to it off the hot path (a store that goes away and comes back)."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest
from sqlalchemy import create_engine, text

from oomless.history import Attempt, Recorder
from oomless.history.store import SCHEMA_VERSION, Store


def _postgres_url() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    except OSError:
        return None


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.sqlite'}"
        return
    base = _postgres_url()
    if base is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (this machine runs one every session)")
    name = f"oomless_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def _attempt(i: int = 0, **kw) -> Attempt:
    base = dict(task_name="etl.load", task_id=f"id-{i}", outcome="ok", started_at=1_700_000_000.0 + i,
                duration=1.5, request=2**30, limit=2**31, peak_rss=300 * 2**20, mode="cgroup",
                worker_host="w1", worker_pid=42)
    base.update(kw)
    return Attempt(**base)


def test_a_new_store_is_created_at_the_current_schema_version(url):
    store = Store(url)
    assert store.version() == 0
    assert store.migrate() == 0
    assert store.version() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    store.close()


def test_a_version_1_store_is_read_as_it_is_and_a_writer_adds_the_airflow_index(url):
    from dataclasses import fields

    from sqlalchemy import insert, inspect

    from oomless.history.store import MIGRATIONS, attempts, open_reader, schema

    old = Store(url)
    with old.engine.begin() as conn:  # what oomless wrote before version 2: the table, no index by DAG
        schema.create(conn)
        MIGRATIONS[0](conn)
        conn.execute(insert(schema).values(version=1))
        if "oomless_attempts_by_dag" in {i["name"] for i in inspect(conn).get_indexes("oomless_attempts")}:
            conn.exec_driver_sql("DROP INDEX oomless_attempts_by_dag")
        row = _attempt(0, dag_id="d", af_task_id="t", run_id="r", try_number=1)
        conn.execute(insert(attempts), [{f.name: getattr(row, f.name) for f in fields(row)}])
    old.close()
    reader = open_reader(url)
    assert [a.af_task_id for a in reader.airflow_attempts("d")] == ["t"]  # a reader changes nothing
    assert reader.version() == 1
    reader.close()
    writer = Store(url)
    assert writer.migrate() == 1 and writer.version() == SCHEMA_VERSION == 2
    with writer.engine.connect() as conn:
        assert "oomless_attempts_by_dag" in {i["name"] for i in inspect(conn).get_indexes("oomless_attempts")}
    writer.close()


def test_attempts_round_trip_with_airflow_ids_and_big_sizes(url):
    store = Store(url)
    rows = [_attempt(0), _attempt(1, outcome="memory-killed", peak_rss=2**31, limit=2**31, dag_id="d",
                                  af_task_id="t", run_id="r", map_index=3, try_number=2, input_size=5 * 2**40)]
    assert store.add(rows) == 2
    assert store.attempts("etl.load") == rows
    assert store.attempts("other") == []
    store.close()


def test_a_store_newer_than_this_oomless_is_refused(url):
    store = Store(url)
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE oomless_schema SET version = 999"))
    with pytest.raises(RuntimeError, match="schema version 999, newer than this oomless"):
        Store(url).migrate()
    store.close()


def test_the_default_store_is_an_sqlite_file_under_xdg_state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    store = Store()
    store.add([_attempt()])
    assert (tmp_path / "oomless" / "history.sqlite").exists()
    store.close()


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_the_recorder_writes_in_batches_off_the_calling_thread(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'h.sqlite'}")
    recorder = Recorder(store, interval=0.05, batch=100)
    t0 = time.perf_counter()
    for i in range(1000):
        recorder.record(_attempt(i))
    assert time.perf_counter() - t0 < 1.0  # a generous bound on 1000 appends; the point is: no I/O here
    assert _wait(lambda: recorder.written == 1000)
    recorder.close()
    assert len(Store(f"sqlite:///{tmp_path / 'h.sqlite'}").attempts()) == 1000


def test_a_store_that_is_down_loses_nothing_and_warns_once(tmp_path, caplog):
    path = tmp_path / "blocked"
    path.write_text("a file where the store's folder should be")
    url = f"sqlite:///{path / 'h.sqlite'}"  # cannot be created while 'blocked' is a file
    with caplog.at_level(logging.WARNING, logger="oomless"):
        recorder = Recorder(lambda: Store(url), interval=0.05, batch=10, max_pause=0.1)
        for i in range(50):
            recorder.record(_attempt(i))
        time.sleep(0.5)
        assert recorder.written == 0 and recorder.pending() == 50
        os.remove(path)  # the store comes back
        assert _wait(lambda: recorder.written == 50)
        recorder.close()
    warnings = [r.getMessage() for r in caplog.records if "history store is unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert any("takes writes again" in r.getMessage() for r in caplog.records)
    assert len(Store(url).attempts()) == 50


def test_a_full_buffer_drops_the_oldest_and_counts_them(tmp_path):
    path = tmp_path / "blocked"
    path.write_text("x")
    recorder = Recorder(lambda: Store(f"sqlite:///{path / 'h.sqlite'}"), interval=0.05, max_buffer=10, max_pause=0.1)
    for i in range(25):
        recorder.record(_attempt(i))
    assert recorder.pending() == 10 and recorder.dropped == 15
    recorder.close(timeout=0.5)
