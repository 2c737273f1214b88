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


def test_a_task_that_declares_nothing_gets_its_learned_spec_and_declared_ones_keep_theirs(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    _history(url)
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog",
                          conf={"oomless_history": url, "oomless_learned": True})
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    try:
        worker.wait_for("learned memory sizes for 3 task names")
        with MemoryEvents(app) as events:
            hold = app.tasks["t.hold"].delay(0.1, 8)
            hog = app.tasks["t.hog"].delay(8)  # declares memory="256MiB": that wins over what was learned
            hold.get(timeout=30), hog.get(timeout=30)
            got = events.wait([hold.id, hog.id], timeout=10 * SLACK)
    finally:
        worker.stop()
        app.close()
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
