"""Tries sized from the history (``[oomless] learned = True``): the test seeds the history first.

* ``grows``: declares nothing; the history says it peaks at 100 MiB, but this
  run it needs OOMLESS_LEARNED_MIB: its first try is killed at the learned
  limit, and the retry is sized again with that kill counted.
* ``auto_new``: ``memory("auto", default=...)`` with no history yet: the default.
* ``plain``: declares nothing and has no history: the worker's default.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag, task

from oomless.airflow import memory

MiB = 2**20
NEED = int(os.environ.get("OOMLESS_LEARNED_MIB", "160"))


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def oomless_learned():
    @task(retries=1, retry_delay=timedelta(seconds=3))
    def grows() -> int:
        blocks = [bytearray(8 * MiB) for _ in range(NEED // 8)]
        return sum(len(b) for b in blocks) // MiB

    @task(executor_config=memory("auto", default="256MiB"))
    def auto_new() -> str:
        return "nothing learned yet: the default"

    @task
    def plain() -> str:
        return "nothing learned, nothing declared: the worker's default"

    grows()
    auto_new()
    plain()


oomless_learned()
