"""``[celery] celery_config_options = oomless.airflow.celery_config.CELERY_CONFIG``.

The provider's ``DEFAULT_CELERY_CONFIG`` (acks_late, prefetch 1, the broker
and result backend from ``[celery]``, …) extended, never replaced, with the
``oomless_*`` keys read from Airflow's ``[oomless]`` section, and the governor
added to every Airflow Celery worker (``airflow celery worker``) at
``worker_init``.  Importing this module in the scheduler changes nothing there.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery import signals

from ..celery.install import add_governor
from .provider import OPTIONS, SECTION

__all__ = ["CELERY_CONFIG", "oomless_config"]

PLUGIN = "oomless.airflow.worker:AirflowPlugin"


def oomless_config(conf: Any = None) -> dict[str, Any]:
    """The ``oomless_*`` Celery keys for the options set in Airflow's ``[oomless]`` section."""
    if conf is None:
        from airflow.configuration import conf as airflow_conf

        conf = airflow_conf
    out: dict[str, Any] = {"oomless_plugins": [PLUGIN]}
    for name in OPTIONS:
        value = conf.get(SECTION, name, fallback=None)
        if value is not None and str(value).strip() != "":
            out[f"oomless_{name}"] = str(value).strip()
    return out


CELERY_CONFIG: dict[str, Any] = {**DEFAULT_CELERY_CONFIG, **oomless_config()}


@signals.worker_init.connect(weak=False)
def _govern(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None and app.conf.get("oomless_plugins") and PLUGIN in app.conf.oomless_plugins:
        add_governor(app)
