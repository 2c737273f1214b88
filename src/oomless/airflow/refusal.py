"""A try the worker refuses before it runs ends as ``failed``, through Airflow's Execution API.

A try is refused when its memory can never fit the worker (larger than its
whole budget) or its declaration is malformed.  Retrying it cannot help, and
left to itself it would end through the scheduler's "state mismatch" path:
counted as a try killed externally, retried after ``retry_delay``, and its log
never served (the try never started, so Airflow knows no host to fetch it
from).

Instead the worker does for the try what the task supervisor does for one
that starts: it tells the API server the try runs on this host (``PATCH
…/run``), with its reason already in the try's log file, then that it ended
``failed`` (``PATCH …/state``), with the try's own token.  The task instance
is then ``failed`` at once, with no retry, like a try that raised
``AirflowFailException``; the REST API serves its log; the audit log shows the
try run and fail, not a mismatch.  ``on_failure_callback`` does not run: Airflow
runs task callbacks in the task runner, which a refused try never starts (as for
any try whose runner dies).

The calls run in a thread the event loop waits for: twice Airflow's own
``[workers] execution_api_timeout`` (what a try's supervisor gives one call),
at least :data:`WAIT` seconds; the try's Celery failure is stored only after,
so the scheduler never sees it first.  If they fail (the API server is down or
slow, the token expired), the try ends through the scheduler as before, with a
WARNING here.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timezone
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["fail_refused_try", "WAIT"]

#: The least seconds the worker's event loop waits for the API server.
WAIT = 10.0


def _wait() -> float:
    """Seconds to wait for both calls: two of Airflow's per-call timeouts, at least :data:`WAIT`."""
    try:
        from airflow.configuration import conf

        return max(WAIT, 2 * conf.getfloat("workers", "execution_api_timeout", fallback=5.0))
    except Exception:  # noqa: BLE001 - a bad value: the least wait
        return WAIT


def _server() -> str:
    """The Execution API's URL, as the Celery provider's ``execute_workload`` works it out."""
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="/")
    if base.startswith("/"):
        base = f"http://localhost:8080{base}"
    return conf.get("core", "execution_api_server_url", fallback=f"{base.rstrip('/')}/execution/")


def _run_and_fail(ti_id: str, token: str) -> None:
    from airflow.sdk.api.client import Client

    client = Client(base_url=_server(), token=token)
    try:
        now = datetime.now(timezone.utc)
        client.task_instances.start(ti_id, os.getpid(), now)
        # the client turns the state into its TerminalStateNonSuccess enum itself
        client.task_instances.finish(ti_id, "failed", datetime.now(timezone.utc), None)  # type: ignore[arg-type]
    finally:
        client.close()


def fail_refused_try(workload: Any, name: str) -> bool:
    """End the refused try of ``workload`` (the decoded ``execute_workload`` argument) as ``failed``;
    ``name`` says which try in a warning.  ``True`` when the API server took both calls in time."""
    try:
        ti_id, token = str(workload["ti"]["id"]), workload["token"]
        if not isinstance(token, str) or not token:
            raise ValueError("the workload carries no token")
    except (TypeError, KeyError, ValueError) as exc:
        logger.warning("oomless: cannot fail the refused try %s through the API server: %s", name, exc)
        return False
    failure: list[BaseException] = []

    def call() -> None:
        try:
            _run_and_fail(ti_id, token)
        except BaseException as exc:  # reported below, from the event loop
            failure.append(exc)

    wait = _wait()
    thread = threading.Thread(target=call, name="oomless-refusal", daemon=True)
    thread.start()
    thread.join(wait)
    if thread.is_alive() or failure:
        why = failure[0] if failure else f"no answer in {wait:g} s"
        logger.warning(
            "oomless: could not fail the refused try %s through the API server (%s); the scheduler will "
            "fail it as a task killed externally, and may retry it", name, why,
        )
        return False
    return True
