"""The benchmark DAG of bench/airflow_dag.py: mixed memory tasks, declared with oomless.

The stock CeleryExecutor ignores ``executor_config``, so the same file runs on both.
Each task holds ``mib`` MiB for ``hold`` seconds; ``underdeclared`` uses half as
much again as its first limit (it needs one escalated retry).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from airflow.sdk import dag, task

from oomless.airflow import memory

MiB = 2**20
OVERHEAD = 96  # MiB an Airflow try's runner uses above the worker image (measured: 40–60)


def _hold(mib: int, seconds: float) -> int:
    blocks = [bytearray(8 * MiB) for _ in range(mib // 8)]
    time.sleep(seconds)
    return len(blocks) * 8


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=3)},
)
def bench_memory_mix():
    @task(executor_config=memory(f"{128 + OVERHEAD}MiB"))
    def small(i: int) -> int:
        return _hold(128, 3)

    @task(executor_config=memory(f"{768 + OVERHEAD}MiB"))
    def medium(i: int) -> int:
        return _hold(768, 5)

    @task(executor_config=memory(f"{2048 + OVERHEAD}MiB"))
    def large(i: int) -> int:
        return _hold(2048, 6)

    @task(executor_config=memory("1GiB", escalate=2, max="4GiB"))
    def underdeclared(i: int) -> int:
        return _hold(1536, 4)

    small.expand(i=list(range(16)))
    medium.expand(i=list(range(8)))
    large.expand(i=list(range(3)))
    underdeclared.expand(i=list(range(2)))


bench_memory_mix()
