"""Pieces the CLI commands share."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["AppNotLoaded", "load_app", "progress_bar"]


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


def progress_bar(what: str, disable: bool = False) -> Any:
    """A rich progress bar on stderr (rows read of rows to read), gone once done: stdout keeps only the result."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=disable,
    )
