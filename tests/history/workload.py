"""A mixed workload on a real governed worker that records into a history store."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import oomless

from ..celery.harness import Worker, start_worker

sys.path.insert(0, str(Path(__file__).parent.parent / "celery"))
from worker_app import make_app  # noqa: E402


def record_mixed(tmp: Path, redis_url: str, url: str, mode: str, ok_mbs: tuple[int, ...], budget: str) -> tuple:
    """``t.hog`` of each size in ``ok_mbs`` (ok), one over its 256 MiB limit (memory-killed) and one
    larger than ``budget`` (infeasible), recorded in ``url``; returns (worker, ok results, killed, refused)
    after the worker stopped (its recorder flushes at shutdown)."""
    worker: Worker = start_worker(tmp, redis_url, redis_url, mode=mode, extra=("--memory-budget", budget),
                                  conf={"oomless_history": url})
    app = make_app(redis_url, redis_url, worker.queue, mode)
    try:
        ok = [app.tasks["t.hog"].delay(mb) for mb in ok_mbs]
        killed = app.tasks["t.hog"].delay(1024)
        refused = app.tasks["t.hog"].apply_async([8], memory="64GiB")
        assert [r.get(timeout=60) for r in ok] == list(ok_mbs)
        for result, exc in ((killed, oomless.MemoryLimitExceeded), (refused, oomless.InfeasibleMemoryRequest)):
            with pytest.raises(exc):
                result.get(timeout=60)
    finally:
        worker.stop()
        app.close()
    return worker, ok, killed, refused
