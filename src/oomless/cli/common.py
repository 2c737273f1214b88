"""Pieces the CLI commands share."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["AppNotLoaded", "load_app"]


class AppNotLoaded(Exception):
    """``-A`` named an app that cannot be imported."""


def load_app(spec: str) -> Any:
    """The Celery app ``spec`` (``module`` or ``module:attr``), imported the way ``celery -A`` does."""
    from celery.app.utils import find_app

    # `celery -A` imports from the current directory; do the same.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return find_app(spec)
    except (ImportError, AttributeError) as exc:
        raise AppNotLoaded(f"cannot load the Celery app {spec!r}: {exc}") from exc
