"""Per-task memory on the CeleryExecutor with oomless (runs as written; see examples/airflow/README.md).

* ``small``: a well-behaved task with a modest limit.
* ``transform``: a Python task that needs more than its first limit; its first
  try is killed for memory, the retry gets twice the memory and succeeds.
* ``sort_words``: the same for a Bash task (the limit covers ``bash`` and every
  process it starts).
* ``too_big``: asks for more memory than any worker has; it fails at once with
  a message that says so, instead of taking a worker down.

Sizes are given with the environment variable OOMLESS_DEMO_MIB (default 320), so
that the example fits any machine: the first limit of ``transform`` and
``sort_words`` is below what they use, twice that limit is above it.
"""

from __future__ import annotations

import os
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
    default_args={"retries": 2, "retry_delay": timedelta(seconds=2)},
    tags=["oomless"],
)
def oomless_memory_demo():
    @task(executor_config=memory("256MiB"))
    def small() -> int:
        return sum(range(1_000_000))

    @task(executor_config=memory(f"{FIRST}MiB", escalate=2, max="4GiB"))
    def transform() -> int:
        # Holds NEED MiB at once: more than the first limit, less than twice it.
        blocks = [bytearray(8 * MiB) for _ in range(NEED // 8)]
        return sum(len(b) for b in blocks) // MiB

    sort_words = BashOperator(
        task_id="sort_words",
        # awk builds one string of NEED MiB; the limit covers bash, awk and everything below.
        bash_command=(
            f"awk 'BEGIN {{ s = sprintf(\"%{NEED * MiB}s\", \"\"); print length(s) }}'"
        ),
        executor_config=memory(f"{FIRST}MiB", escalate=2, max="4GiB"),
    )

    @task(executor_config=memory("64TiB"), retries=0)
    def too_big() -> None:
        raise AssertionError("never runs: no worker has 64 TiB")

    small() >> transform() >> sort_words
    too_big()


oomless_memory_demo()
