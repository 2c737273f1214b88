"""Airflow cluster policy: each task's ``executor_config["oomless"]`` is checked when its DAG is parsed.

Registered through the ``airflow.policy`` entry point, which Airflow loads in
every component that parses DAGs.  A malformed declaration (``{"memory":
"lots"}``, unknown keys, ``escalate`` below 1, …) makes the DAG an import error
that names the task and the value, shown in the UI and by ``airflow dags
list-import-errors``, instead of a try that fails on a worker.  Tasks without
an ``oomless`` key are not touched; ``oomless.airflow.memory(...)`` already
checks its arguments when the DAG file runs.
"""

from __future__ import annotations

from typing import Any

from airflow.policies import hookimpl

from ..errors import InvalidMemorySpec
from .spec import TaskMemory

__all__ = ["task_policy"]


@hookimpl
def task_policy(task: Any) -> None:
    try:
        TaskMemory.from_config(getattr(task, "executor_config", None))
    except InvalidMemorySpec as exc:
        from airflow.exceptions import AirflowClusterPolicyViolation

        raise AirflowClusterPolicyViolation(f"task {task.task_id!r}: {exc}") from None
