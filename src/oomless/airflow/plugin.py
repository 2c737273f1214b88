"""oomless's Airflow UI plugin (``airflow.plugins`` entry point; Airflow 3.1+ plugin API).

Every Airflow process that loads plugins imports this module, each try's task
runner included, so it imports nothing but :class:`AirflowPlugin`: the FastAPI
app (:mod:`.ui`, with FastAPI and Airflow's API security, ~27 MiB and 0.8 s)
is built only when the api-server asks for :attr:`OomlessPlugin.fastapi_apps`.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

__all__ = ["OomlessPlugin", "PREFIX"]

#: where the api-server mounts the pages
PREFIX = "/oomless"


class _App:
    """``fastapi_apps``, built on first read (the api-server; other processes never read it)."""

    def __get__(self, obj: Any, owner: Any) -> list[dict[str, Any]]:
        from .ui import app

        return [{"app": app, "url_prefix": PREFIX, "name": "oomless: memory of tasks"}]


class OomlessPlugin(AirflowPlugin):
    """The Memory views: task instance, task, DAG, and a Browse entry (see :mod:`.ui`)."""

    name = "oomless"
    fastapi_apps = _App()  # type: ignore[assignment]
    external_views = [
        {"name": "Memory", "href": f"{PREFIX}/ti?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}"
                                   f"&map_index={{MAP_INDEX}}",
         "destination": "task_instance", "url_route": "oomless-memory"},
        {"name": "Memory", "href": f"{PREFIX}/task?dag_id={{DAG_ID}}&task_id={{TASK_ID}}",
         "destination": "task", "url_route": "oomless-task-memory"},
        {"name": "Memory", "href": f"{PREFIX}/dag?dag_id={{DAG_ID}}", "destination": "dag",
         "url_route": "oomless-dag-memory"},
        {"name": "Memory (oomless)", "href": f"{PREFIX}/", "destination": "nav", "category": "browse",
         "url_route": "oomless"},
    ]
