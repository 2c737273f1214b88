"""oomless as an Airflow provider: ``get_provider_info`` (the ``apache_airflow_provider``
entry point) documents the ``[oomless]`` section, its types and defaults, and
names the executor.  No Airflow import here (the providers manager calls it); the options
are the settings declared in :mod:`oomless.settings`."""

from __future__ import annotations

from typing import Any

from ..settings import SETTINGS

__all__ = ["SECTION", "OPTIONS", "get_provider_info"]


def _plain(doc: str) -> str:
    """README's markdown, as one sentence for Airflow's config reference (no backticks)."""
    text = doc.replace("`", "")
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


SECTION = "oomless"

#: option -> (type, default, example, description): the settings of
#: :mod:`oomless.settings` an Airflow worker takes from ``[oomless]``.
OPTIONS: dict[str, tuple[str, str | None, str | None, str]] = {
    setting.name: (
        setting.kind,
        None if setting.default is None else str(setting.default),
        setting.example,
        setting.airflow_doc or _plain(setting.doc),
    )
    for setting in SETTINGS
    if setting.airflow
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
