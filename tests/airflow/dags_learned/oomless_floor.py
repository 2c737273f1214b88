"""A limit below what any Airflow try costs: ``tiny`` declares 16 MiB by hand (``memory()`` would warn
when the DAG is parsed); its log says so before the try is killed (cgroup mode)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def oomless_floor():
    @task(executor_config={"oomless": {"memory": "16MiB"}}, retries=0)
    def tiny() -> str:
        return "only prints"

    tiny()


oomless_floor()
