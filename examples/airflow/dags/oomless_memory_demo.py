"""Per-task memory on the CeleryExecutor with oomless (runs as written; see examples/airflow/README.md).

* ``small``: a well-behaved task; its memory comes from ``default_args``.  It
  runs beside the others and is never touched by their kills.
* ``transform``: a Python task that needs more than its first limit; its first
  try is killed for memory, the retry gets twice the memory and succeeds.
* ``sort_words``: the same for a Bash task (the limit covers ``bash`` and every
  process it starts).
* ``part``: a mapped task; only the map index that needs more memory is killed
  and retried with more, the other succeeds at once.
* ``plain``: declares nothing (``executor_config={}`` overrides the default):
  it runs exactly as on the stock CeleryExecutor.
* ``too_big``: asks for more memory than any worker has; it fails at once, with
  no retry, and its log says why, instead of taking a worker down.

OOMLESS_DEMO_MIB (default 320) sets what the hungry tasks use, so that the
example fits any machine: their first limit is three quarters of it, the
escalated one one and a half times it.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import dag, task

from oomless.airflow import memory

MiB = 2**20
NEED = int(os.environ.get("OOMLESS_DEMO_MIB", "320"))  # what the hungry tasks use, in MiB
FIRST = NEED * 3 // 4  # their first limit: too small on purpose


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Every task gets 256 MiB unless it says otherwise.
    default_args={"retries": 2, "retry_delay": timedelta(seconds=2), "executor_config": memory("256MiB")},
    tags=["oomless"],
)
def oomless_memory_demo():
    @task
    def small() -> int:
        time.sleep(8)  # still running while its neighbours are killed
        return sum(range(1_000_000))

    @task(executor_config=memory(f"{FIRST}MiB", escalate=2, max="4GiB"))
    def transform() -> int:
        blocks = [bytearray(8 * MiB) for _ in range(NEED // 8)]  # NEED MiB at once
        return sum(len(b) for b in blocks) // MiB

    BashOperator(
        task_id="sort_words",
        # tail keeps the last NEED MiB of the stream in memory; the limit covers bash, head, tail and wc.
        bash_command=f"head -c {NEED}M /dev/zero | tail -c {NEED}M | wc -c",
        executor_config=memory(f"{FIRST}MiB", escalate=2, max="4GiB"),
    )

    @task(executor_config=memory(f"{FIRST}MiB", escalate=2, max="4GiB"))
    def part(mib: int) -> int:
        blocks = [bytearray(8 * MiB) for _ in range(mib // 8)]
        return len(blocks) * 8

    @task(executor_config={})
    def plain() -> str:
        return "no oomless key: runs as on any CeleryExecutor (accounted, not limited)"

    @task(executor_config=memory("64TiB"))  # retries=2 from default_args: none is used, it can never fit
    def too_big() -> None:
        raise AssertionError("never runs: no worker has 64 TiB")

    small()
    plain()
    transform()
    part.expand(mib=[64, NEED])
    too_big()


oomless_memory_demo()
