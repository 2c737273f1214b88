"""Where the history lives: the ``oomless_history`` setting turned into a store URL.

No SQLAlchemy here (the worker's settings and the client's ``learned()`` read
it before any store is opened); the store itself is :mod:`oomless.history.store`.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["default_url", "resolve"]


def default_url() -> str:
    """``sqlite:///`` + ``$XDG_STATE_HOME/oomless/history.sqlite`` (``~/.local/state`` when unset)."""
    from ..paths import state_dir

    return f"sqlite:///{os.path.join(state_dir(), 'history.sqlite')}"


def resolve(value: Any) -> str | None:
    """``oomless_history``: unset/"off" (None), "default" (the default SQLite file) or a URL."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "off")):
        return None
    if isinstance(value, str) and value.strip().lower() in ("default", "on"):
        return default_url()
    if isinstance(value, str) and "://" in value:
        return value.strip()
    raise ValueError(
        f"oomless_history={value!r} is not understood; use 'default' (an SQLite file), an SQLAlchemy URL "
        f"such as 'postgresql+psycopg://user@host/db', or 'off'"
    )
