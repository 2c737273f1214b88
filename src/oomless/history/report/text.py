"""Times and durations as the report writes them (UTC, short units).

Not here: sizes (:func:`oomless.units.format_size`), and the page around
them (:mod:`.page`).
"""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["utc", "duration", "bucket_width"]


def utc(t: float) -> str:
    """``t`` (seconds since the epoch) as a UTC date and time plotly reads: ``2026-11-01 12:00:00``."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    """A period, rounded to one decimal of its largest unit: ``7.1 d``, ``3.5 h``, ``12 s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def bucket_width(seconds: float) -> str:
    """A bucket width in the largest unit it is a whole number of: ``30 min``, ``1 d``, ``7.5 s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"
