"""Which earlier tries of a task instance were killed for memory.

The worker that kills a try records it in the Celery result backend that the
CeleryExecutor already shares with its workers (Redis, or Airflow's
metadata database through ``db+…``), under an id derived from the task
instance and the try number.  When the scheduler queues the next try, the
oomless executor counts those records to escalate the memory.  Using the
result backend means nothing new to deploy, and it works with any backend
Celery supports; records expire with ``result_expires`` like any result.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["STATE", "record_id", "record_kill", "count_memory_killed"]

#: The state of a record (a Celery state name of its own; never a real task's state).
STATE = "OOMLESS_MEMORY_KILLED"
#: Tries looked back at, at most (a task with hundreds of retries is looked up cheaply).
LOOK_BACK = 64


def record_id(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """The result-backend id of the record of one try (stable across schedulers and workers)."""
    ti = hashlib.sha256("\0".join((dag_id, run_id, task_id, str(map_index))).encode()).hexdigest()[:32]
    return f"oomless-airflow-{ti}-{try_number}"


def record_kill(backend: Any, ids: tuple[str, str, str, int], try_number: int, limit: int, peak: int) -> None:
    """Worker: remember that ``try_number`` of task instance ``ids`` was killed at ``limit``."""
    backend.store_result(record_id(*ids, try_number), {"limit": limit, "peak": peak}, STATE)


def count_memory_killed(backend: Any, ids: tuple[str, str, str, int], try_number: int) -> int:
    """Scheduler: how many tries before ``try_number`` were killed for memory."""
    killed = 0
    for earlier in range(max(1, try_number - LOOK_BACK), try_number):
        try:
            meta = backend.get_task_meta(record_id(*ids, earlier))
        except Exception as exc:  # the backend is down: do not block scheduling, do not escalate
            logger.warning("oomless: could not read memory-kill records for %s: %s; not escalating", ids, exc)
            return killed
        if meta.get("status") == STATE:
            killed += 1
    return killed
