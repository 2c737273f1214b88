"""The FastAPI app of oomless's Airflow UI plugin (:mod:`.plugin`), mounted by the api-server at ``/oomless``.

Its pages, which Airflow's UI shows in a frame:

* **task instance** → "Memory": each try's request, limit, peak and outcome
  (ok, memory-killed with the sentence, evicted, refused), and the escalation
  ladder across tries;
* **task** → "Memory": the task's peaks over its runs with its limits and the
  recommendation (:func:`~oomless.history.recommend.recommend_all`);
* **DAG** → "Memory": its tasks' sizes, waste and kills;
* **Browse** → "Memory (oomless)": every DAG with recorded tries.

Pages read the history store named by ``[oomless] history`` in the
api-server's configuration (read-only, see
:func:`~oomless.history.store.open_reader`): the store the workers write, so a
shared database (PostgreSQL) where they run on other hosts.  Every page is
behind Airflow's own auth: the session cookie or a bearer token, checked by the
auth manager for read access to the DAG's task instances (the index lists only
the DAGs the user may read).
"""

from __future__ import annotations

import functools
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse

from ..history.recommend import Recommendation, recommend_all
from ..urls import redact
from . import ui_pages
from .provider import SECTION

__all__ = ["app"]

#: links between the pages (all at one level under the mount point, so they work behind any base URL)
BASE = "./"
#: the newest tries a page reads
NEWEST = 5000

app = FastAPI(title="oomless", description="Memory of Airflow tasks, from oomless's history", docs_url=None,
              redoc_url=None, openapi_url=None)
_READ_TIS = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))


@functools.lru_cache(maxsize=4)
def _reader(url: str) -> Any:
    from ..history.store import open_reader

    return open_reader(url)


def _store() -> tuple[Any, str] | str:
    """The history store and its redacted URL, or why there is none (a sentence for the page)."""
    try:
        from airflow.configuration import conf

        from ..settings import history

        url = history(conf.get(SECTION, "history", fallback=None), f"[{SECTION}] history")
    except Exception as exc:  # noqa: BLE001 - a bad setting is the page's finding
        return f"oomless cannot read [{SECTION}] history: {exc}"
    if url is None:
        return (f"[{SECTION}] history is not set where the api-server runs: set it to the store the workers "
                f"write (e.g. a PostgreSQL URL), so that these pages can read it")
    try:
        return _reader(url), redact(url)
    except Exception as exc:  # noqa: BLE001 - StoreUnavailable names the store, password hidden
        _reader.cache_clear()
        return str(exc)


def _unavailable(why: str) -> HTMLResponse:
    return HTMLResponse(ui_pages.unavailable(why), status_code=503)


def _recommendations(tries: list[Any]) -> dict[str, Recommendation]:
    rows = ((a.task_name, a.dag_id, a.af_task_id, a.outcome, a.peak_rss, a.request, a.limit, a.input_size,
             a.started_at) for a in tries)
    return {r.af_task_id: r for r in recommend_all(rows) if r.af_task_id is not None}


@app.get("/", response_class=HTMLResponse)
def index(user: GetUserDep) -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    found = _store()
    if isinstance(found, str):
        return _unavailable(found)
    store, where = found
    allowed = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    dags = [d for d in store.airflow_dags() if d[0] in allowed]
    return ui_pages.index_page(dags, BASE, where)


@app.get("/dag", response_class=HTMLResponse, dependencies=[_READ_TIS])
def dag(dag_id: str = Query(max_length=250)) -> Any:
    found = _store()
    if isinstance(found, str):
        return _unavailable(found)
    tries = found[0].airflow_attempts(dag_id, newest=NEWEST)
    return ui_pages.dag_page(dag_id, tries, _recommendations(tries), BASE)


@app.get("/task", response_class=HTMLResponse, dependencies=[_READ_TIS])
def task(dag_id: str = Query(max_length=250), task_id: str = Query(max_length=250)) -> Any:
    found = _store()
    if isinstance(found, str):
        return _unavailable(found)
    tries = found[0].airflow_attempts(dag_id, task_id, newest=NEWEST)
    return ui_pages.task_page(dag_id, task_id, tries, _recommendations(tries).get(task_id), BASE)


@app.get("/ti", response_class=HTMLResponse, dependencies=[_READ_TIS])
def task_instance(dag_id: str = Query(max_length=250), run_id: str = Query(max_length=250),
                  task_id: str = Query(max_length=250), map_index: str = Query("-1", max_length=12)) -> Any:
    found = _store()
    if isinstance(found, str):
        return _unavailable(found)
    store = found[0]
    # the UI leaves {MAP_INDEX} as written for a task that is not mapped
    index = int(map_index) if map_index.lstrip("-").isdigit() else -1
    tries = store.airflow_attempts(dag_id, task_id, run_id, index)
    tries.sort(key=lambda a: (a.try_number or 0, a.started_at))
    history = store.airflow_attempts(dag_id, task_id, newest=NEWEST)
    return ui_pages.ti_page(dag_id, run_id, task_id, index, tries, _recommendations(history).get(task_id), BASE)
