"""Learned sizes on a real worker (``oomless_learned``) and at submit time (``memory=oomless.learned()``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import oomless
from oomless.history import Attempt
from oomless.history.store import Store
from oomless.testing import MemoryEvents
from oomless.units import format_size

from ..celery.harness import SLACK, start_worker

sys.path.insert(0, str(Path(__file__).parent.parent / "celery"))
from worker_app import make_app  # noqa: E402

MiB = 2**20


def _history(url: str) -> None:
    """t.hold peaked at 100 MiB six times; t.sized held twice its input at five sizes; t.hog once at 50 MiB."""
    now = time.time()
    rows = [Attempt("t.hold", f"h{i}", "ok", now - 60, 1.0, peak_rss=100 * MiB) for i in range(6)]
    rows += [Attempt("t.sized", f"s{mb}", "ok", now - 60, 1.0, request=2**30, limit=2**30, peak_rss=2 * mb * MiB,
                     input_size=mb * MiB) for mb in (8, 16, 32, 64, 128)]
    rows += [Attempt("t.hog", f"g{i}", "ok", now - 60, 1.0, peak_rss=50 * MiB) for i in range(6)]
    Store(url).add(rows)


@pytest.fixture
def learning(tmp_path, redis_url):
    """A watchdog worker with ``oomless_learned`` on the history of :func:`_history`, loaded; and its app."""
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    _history(url)
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog",
                          conf={"oomless_history": url, "oomless_learned": True})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    try:
        worker.wait_for("learned memory sizes for 3 task names")
        yield worker, app
    finally:
        worker.stop()
        app.close()


def test_a_task_that_declares_nothing_gets_its_learned_spec_and_declared_ones_keep_theirs(learning):
    _, app = learning
    with MemoryEvents(app) as events:
        hold = app.tasks["t.hold"].delay(0.1, 8)
        hog = app.tasks["t.hog"].delay(8)  # declares memory="256MiB": that wins over what was learned
        hold.get(timeout=30), hog.get(timeout=30)
        got = events.wait([hold.id, hog.id], timeout=10 * SLACK)
    # 6 × 100 MiB: request = 100 × 1.15 = 115 MiB, limit = 100 × 1.2 = 120 MiB
    assert (got[hold.id].outcome, got[hold.id].limit, got[hold.id].request) == ("ok", 120 * MiB, 115 * MiB)
    assert (got[hog.id].outcome, got[hog.id].limit, got[hog.id].request) == ("ok", 256 * MiB, 256 * MiB)


def test_learned_needs_the_history(tmp_path, redis_url):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", conf={"oomless_learned": True},
                          wait_ready=False)
    try:
        worker.proc.wait(60)
    finally:
        worker.stop()
    assert worker.proc.returncode != 0
    assert "oomless_learned=True needs the history it learns from" in worker.text()


def test_submit_time_learned_spec_is_fitted_to_the_input_size(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    _history(url)
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", conf={"oomless_history": url})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    app.conf.oomless_history = url
    try:
        with MemoryEvents(app) as events:
            big = app.tasks["t.sized"].apply_async([4], memory=oomless.learned(input_size=512 * MiB))
            unknown = app.tasks["t.whoami"].apply_async(memory=oomless.learned(default="300MiB"))
            big.get(timeout=30), unknown.get(timeout=30)
            got = events.wait([big.id, unknown.id], timeout=10 * SLACK)
    finally:
        worker.stop()
        app.close()
    # peak = 2 × size exactly: 1 GiB for 512 MiB of input; request × 1.15, limit × 1.2 (whole MiB)
    assert format_size(got[big.id].limit) == format_size(int(1.2 * 2**30))
    assert got[big.id].request == int(1.15 * 2**30 + MiB - 1) // MiB * MiB
    assert got[unknown.id].limit == 300 * MiB
    rows = {a.task_id: a for a in Store(url).attempts("t.sized")}
    assert rows[big.id].input_size == 4 * MiB  # the task's own report wins over the hint


def test_learned_rejects_a_bad_default():
    with pytest.raises(oomless.InvalidMemorySpec):
        oomless.learned(default="lots")


def test_a_task_killed_at_its_learned_limit_gets_more_at_once_not_at_the_next_load(learning):
    worker, app = learning  # t.hold: learned at request 115 MiB, limit 120 MiB
    with MemoryEvents(app) as events:
        big = app.tasks["t.hold"].delay(2.0, 200)
        with pytest.raises(oomless.MemoryLimitExceeded):
            big.get(timeout=60)
        after = app.tasks["t.hold"].delay(0.1, 8)
        after.get(timeout=30)
        got = events.wait([big.id, after.id], timeout=10 * SLACK)
    assert (got[big.id].outcome, got[big.id].limit) == ("memory-killed", 120 * MiB)
    # killed at 120 MiB: it needs max(× 1.2, + 100 MiB) = 220 MiB, and the limit is that × 1.2
    assert (got[after.id].outcome, got[after.id].limit) == ("ok", 264 * MiB)
    assert worker.text().count("learned memory sizes for") == 1  # no reload: the kill moved it


def _sized_history(url: str) -> None:
    now = time.time()
    Store(url).add([Attempt("t.sized", f"s{mb}", "ok", now - 60, 1.0, peak_rss=2 * mb * MiB, input_size=mb * MiB)
                    for mb in range(8, 136, 8)])


def test_an_input_beyond_the_sizes_seen_is_said_once_per_task(tmp_path, caplog):
    from oomless.history.learned import resolve_learned

    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    _sized_history(url)
    with caplog.at_level("WARNING", logger="oomless"):
        inside = resolve_learned("t.sized", oomless.learned(input_size=100 * MiB, history=url), None)
        beyond = [resolve_learned("t.sized", oomless.learned(input_size=n * MiB, history=url), None)
                  for n in (400, 500)]
    assert inside.limit < 2 * 128 * MiB * 1.2 < beyond[0].limit < beyond[1].limit  # extrapolated, not the blind max
    said = [r.getMessage() for r in caplog.records if "larger than any its history has seen" in r.getMessage()]
    assert len(said) == 1 and "t.sized: an input of 400.0 MiB" in said[0] and "8.0 MiB to 128.0 MiB" in said[0]


def test_a_kill_recorded_by_a_worker_reaches_the_client_before_the_next_load(tmp_path, monkeypatch):
    from oomless.history import learned as module

    monkeypatch.setattr(module, "KILLS_EVERY", 0.0)
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    _sized_history(url)
    want = oomless.learned(input_size=64 * MiB, history=url)
    before = module.resolve_learned("t.sized", want, None)
    # what a worker records when the task is killed at that limit (the store is the real one)
    Store(url).add([Attempt("t.sized", "k1", "memory-killed", time.time(), 1.0, limit=before.limit,
                            peak_rss=before.limit, input_size=64 * MiB)])
    after = module.resolve_learned("t.sized", want, None)
    smaller = module.resolve_learned("t.sized", oomless.learned(input_size=32 * MiB, history=url), None)
    assert after.limit == -(-int(max(before.limit * 1.2, before.limit + 100 * MiB) * 1.2) // MiB) * MiB
    assert smaller.limit < after.limit  # a smaller input is not held to what a larger one needed


@pytest.mark.parametrize("case", ["missing", "missing, driver named", "empty", "unreachable"])
def test_a_history_that_cannot_be_read_is_a_warning_naming_it_and_nothing_is_created(tmp_path, caplog, case):
    from oomless.history.learned import resolve_learned

    url = {
        "missing": f"sqlite:///{tmp_path / 'typo.sqlite'}",
        "missing, driver named": f"sqlite+pysqlite:///{tmp_path / 'typo.sqlite'}",
        "empty": f"sqlite:///{tmp_path / 'empty.sqlite'}",
        "unreachable": "postgresql+psycopg://me:s3cret@127.0.0.1:1/oomless",
    }[case]
    if case == "empty":
        (tmp_path / "empty.sqlite").touch()
    with caplog.at_level("WARNING", logger="oomless"):
        got = [resolve_learned("t.any", oomless.learned(default="300MiB", history=url), None) for _ in range(3)]
    assert [g.limit for g in got] == [300 * MiB] * 3
    said = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1, [r.getMessage() for r in said]  # once, not per call
    text = said[0].getMessage()
    assert "s3cret" not in text
    expected = {"missing": f"no history store at {tmp_path / 'typo.sqlite'}",
                "missing, driver named": f"no history store at {tmp_path / 'typo.sqlite'}",
                "empty": f"the history store {url} is empty",
                "unreachable": "cannot open the history store postgresql+psycopg://me:***@127.0.0.1:1/oomless"}
    assert expected[case] in text, text
    assert not (tmp_path / "typo.sqlite").exists()
    if case == "empty":
        import sqlite3

        with sqlite3.connect(tmp_path / "empty.sqlite") as db:  # not given tables
            assert db.execute("select count(*) from sqlite_master").fetchone() == (0,)


def test_learned_refuses_a_history_that_is_not_a_url_and_an_input_size_that_is_not_bytes():
    with pytest.raises(ValueError, match="history= of oomless.learned"):
        oomless.learned(history="typo.sqlite")
    for bad in ("12", -1, 10**200, True, 1.5):
        with pytest.raises(oomless.InvalidMemorySpec, match="input_size="):
            oomless.learned(input_size=bad)


def test_a_task_with_nothing_learned_yet_is_sized_from_its_kill(tmp_path, monkeypatch):
    from oomless.history import learned as module

    monkeypatch.setattr(module, "KILLS_EVERY", 0.0)
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    _history(url)  # t.new has no attempt: nothing learned
    want = oomless.learned(default="300MiB", history=url)
    assert module.resolve_learned("t.new", want, None).limit == 300 * MiB
    Store(url).add([Attempt("t.new", "k1", "memory-killed", time.time(), 1.0, limit=300 * MiB, peak_rss=300 * MiB)])
    got = module.resolve_learned("t.new", want, None)
    # killed at 300 MiB: it needs max(× 1.2, + 100 MiB) = 400 MiB; the limit is that × 1.2, reserved whole
    assert (got.request, got.limit) == (480 * MiB, 480 * MiB)


def test_a_learned_spec_larger_than_the_worker_is_capped_not_refused(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    now = time.time()
    Store(url).add([Attempt("t.hold", f"h{i}", "ok", now - 60, 1.0, peak_rss=400 * MiB) for i in range(6)])
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", extra=("--memory-budget", "256MiB"))
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    try:
        with MemoryEvents(app) as events:
            learned = app.tasks["t.hold"].apply_async([0.1, 8], memory=oomless.learned(history=url))
            declared = app.tasks["t.hold"].apply_async([0.1, 8], memory="480MiB")
            learned.get(timeout=30)
            with pytest.raises(oomless.InfeasibleMemoryRequest):
                declared.get(timeout=30)
            got = events.wait([learned.id], timeout=10 * SLACK)
    finally:
        worker.stop()
        app.close()
    # learned: request 460 MiB, limit 480 MiB, more than the whole 256 MiB budget: capped, and said once
    assert (got[learned.id].outcome, got[learned.id].limit, got[learned.id].request) == ("ok", 256 * MiB, 256 * MiB)
    assert "t.hold: its learned memory request 460.0 MiB, limit 480.0 MiB is more than this worker" in worker.text()
