"""oomless as an Airflow provider: ``get_provider_info`` (the ``apache_airflow_provider``
entry point) documents the ``[oomless]`` section, its types and defaults, and
names the executor.  No Airflow import here (the providers manager calls it)."""

from __future__ import annotations

from typing import Any

__all__ = ["SECTION", "OPTIONS", "get_provider_info"]

SECTION = "oomless"

#: option -> (type, default, example, description); defaults are oomless's own.
OPTIONS: dict[str, tuple[str, str | None, str | None, str]] = {
    "budget": (
        "string", "auto", "6GiB",
        "Bytes this Celery worker may give to tasks. 'auto': the worker's memory cgroup limit, or the "
        "machine's memory, minus a reserve. Size tasks against it, not against worker_concurrency.",
    ),
    "reserve": (
        "string", None, "1GiB",
        "Bytes kept back from an 'auto' budget for the kernel, page cache and slack "
        "(default: max(256 MiB, 3% of the memory)); the worker's own measured footprint is left out too.",
    ),
    "enforcement": (
        "string", "auto", "cgroup",
        "How limits are enforced: 'cgroup' (a memory cgroup per pool slot; exact, needs a writable cgroup), "
        "'watchdog' (polls /proc every poll_interval; works in containers), 'off', or 'auto' (cgroup where "
        "possible). `oomless doctor` tells which one this host supports.",
    ),
    "default_memory": (
        "string", None, "512MiB",
        "Memory of tries whose task declares none (unset: they are accounted, not limited).",
    ),
    "infeasible": (
        "string", "fail", "queue:bigmem",
        "A try asking for more than this worker's whole budget: 'fail' it at once with a clear message, or "
        "re-route it once to 'queue:<name>', a queue of workers with a larger budget.",
    ),
    "admission": (
        "boolean", "True", "True",
        "Start a try only when its memory request fits the budget left (False: Celery's own slot count only).",
    ),
    "max_waiting": (
        "integer", None, "4",
        "Tries that cannot fit yet held by the worker before it stops fetching (default: worker_concurrency).",
    ),
    "backfill_window": (
        "float", "60", "60",
        "Seconds a try that cannot fit lets smaller ones pass it before it blocks them.",
    ),
    "give_back_after": (
        "float", "30", "30",
        "Seconds a try that cannot fit waits on this worker before it goes back to the broker (0: never).",
    ),
    "max_evictions": (
        "integer", "3", "3",
        "Times a Celery task is requeued after an eviction for node memory pressure (Airflow tries are not "
        "requeued: the try fails and Airflow's retries apply).",
    ),
    "eviction_margin": (
        "string", "100MiB", "100MiB",
        "Evict the task most over its request when less than this is available to the worker.",
    ),
    "poll_interval": (
        "float", "0.005", "0.005",
        "Seconds between two looks of the watchdog at each running try's process tree.",
    ),
    "history": (
        "string", None, "postgresql+psycopg://oomless@db/oomless",
        "Record every try's memory (peak, limit, outcome, DAG/task/run ids): 'default' (an SQLite file under "
        "$XDG_STATE_HOME/oomless/ of the worker) or an SQLAlchemy URL. Read by `oomless recommend` and "
        "`oomless report`. Unset: nothing is recorded.",
    ),
    "metrics_port": (
        "integer", None, "9808",
        "Serve Prometheus metrics of the worker on this port (0: any free port, logged). Unset: no metrics.",
    ),
    "metrics_address": (
        "string", "127.0.0.1", "0.0.0.0",
        "Address the metrics server binds to.",
    ),
}


def get_provider_info() -> dict[str, Any]:
    """Airflow's providers manager reads this through the ``apache_airflow_provider`` entry point."""
    from importlib.metadata import version

    return {
        "package-name": "oomless",
        "name": "oomless",
        "description": "Memory as a first-class, enforced resource for Airflow tasks on the CeleryExecutor: "
        "per-task memory limits, clear memory failures in the task log, retries that escalate memory.",
        "versions": [version("oomless")],
        "config": {
            SECTION: {
                "description": "Memory of the tries that run on oomless-governed Airflow Celery workers. "
                "Tasks declare memory with executor_config=oomless.airflow.memory(...).",
                "options": {
                    name: {
                        "description": description,
                        "version_added": "0.1.0",
                        "type": kind,
                        "example": example,
                        "default": default,
                    }
                    for name, (kind, default, example, description) in OPTIONS.items()
                },
            }
        },
    }
