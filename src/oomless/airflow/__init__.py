"""oomless for Apache Airflow 3 on the CeleryExecutor.

DAG authors::

    from oomless.airflow import memory

    @task(executor_config=memory("2GiB", escalate=2, max="16GiB"), retries=3)
    def transform(path): ...

Operators (``airflow.cfg``)::

    [core]
    executor = oomless.airflow.executor.OomlessCeleryExecutor
    [celery]
    celery_config_options = oomless.airflow.celery_config.CELERY_CONFIG
    [oomless]
    budget = auto

See docs/airflow.md.  Importing this package imports nothing from Airflow.
"""

from .spec import KEY, TaskMemory, memory

__all__ = ["memory", "TaskMemory", "KEY"]
