"""Byte sizes at the edges: parse "2GiB"-style strings into ints, format ints for people.

Inside oomless every size is an ``int`` of bytes.  Strings exist only where a
person writes or reads them (task options, config, CLI, error messages).

Units follow the Kubernetes convention, the one platform teams already use for
memory: binary units carry an ``i`` (``Ki``, ``Mi``, ``Gi``, ``Ti``, ``Pi`` with
or without a trailing ``B``), decimal units do not (``k``/``K``, ``M``, ``G``,
``T``, ``P``, with or without ``B``).  ``"1.5G"`` is therefore 1,500,000,000 bytes and
``"1.5GiB"`` is 1,610,612,736 bytes.  Units are case-insensitive.
"""

from __future__ import annotations

import math
import re
import reprlib
from datetime import timedelta
from decimal import Context, Decimal

__all__ = ["parse_size", "format_size", "parse_duration", "MAX_SIZE", "MAX_SECONDS", "KiB", "MiB", "GiB"]

#: The largest size oomless accepts (the kernel's "unlimited" is near 2**63).
MAX_SIZE = 2**62
KiB, MiB, GiB = 2**10, 2**20, 2**30
#: The longest duration oomless accepts (~115 days: longer is surely a mistake in a unit).
MAX_SECONDS = 10**7

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "p": 10**15,
    "pb": 10**15,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
    # format_size prints PiB for sizes up to MAX_SIZE; what it prints must parse back.
    "pi": 2**50,
    "pib": 2**50,
}

# Enough digits for any 64-character number times 2**50: parsing never rounds.
_EXACT = Context(prec=100)

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object, what: str = "size") -> int:
    """Return ``value`` as a positive number of bytes.

    Accepts an ``int`` (bytes) or a string such as ``"512MiB"``, ``"2GiB"``,
    ``"1.5G"`` or ``"1024"``.  Raises :class:`ValueError` naming the value and
    the accepted forms when the value is not a size; ``what`` names the value
    in that message ("memory limit", "oomless_budget", ...).
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(
            f"{what} must be a number of bytes or a string such as '512MiB' or '2GiB', "
            f"got {short_repr(value)} ({type(value).__name__})"
        )
    if isinstance(value, int):
        size = value
    else:
        if len(value) > 64:
            raise ValueError(f"{what} {value[:64]!r}… is too long to be a size")
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{what} {value!r} is not a size: write a number with an optional unit, "
                f"e.g. '512MiB', '2GiB', '1.5G' or '1048576' "
                f"(binary units: KiB MiB GiB TiB PiB; decimal: K M G T P)"
            )
        # Decimal, not float: "1.001K" is 1001 bytes, not 1000.9999999999999 rounded down.
        size = math.floor(_EXACT.multiply(Decimal(match.group(1)), _UNITS[unit]))
    if size <= 0:
        raise ValueError(f"{what} must be more than 0 bytes, got {short_repr(value)}")
    if size > MAX_SIZE:
        raise ValueError(f"{what} {short_repr(value)} is larger than any machine ({format_size(MAX_SIZE)})")
    return size


_DURATION_UNITS = {
    "": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
}
_DURATION_RE = re.compile(r"^\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: object, what: str = "duration", longest: float = MAX_SECONDS) -> float:
    """Seconds from ``30``, ``2.5``, ``"5ms"``, ``"45s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` or a
    :class:`datetime.timedelta`; 0 is allowed.  Raises :class:`ValueError` naming ``what`` and the
    accepted forms otherwise (negative, not a duration, or more than ``longest`` seconds)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 64 and (match := _DURATION_RE.match(value)) is not None \
            and match.group(2).lower() in _DURATION_UNITS:
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    else:
        raise ValueError(
            f"{what} {short_repr(value)} is not a duration: write seconds (30, 2.5) or a number with a unit "
            f"(5ms, 45s, 30m, 12h, 7d, 2w)"
        )
    if not 0 <= seconds <= longest or seconds != seconds:
        raise ValueError(f"{what} {short_repr(value)} is outside 0 s – {longest:,.0f} s")
    return seconds


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int beyond 4300 digits raises ValueError (CPython's conversion limit).
        if x.bit_length() > 256:
            return f"<{x.bit_length()}-bit integer>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()
_SHORT.maxstring = _SHORT.maxother = 70
_SHORT.maxlevel = 3


def short_repr(value: object) -> str:
    """``repr`` that stays short and cannot fail on untrusted input (huge, deep or giant values)."""
    return _SHORT.repr(value)


def format_size(n_bytes: int | None) -> str:
    """Format bytes for people: ``2.0 GiB``, ``512.0 MiB``, ``300 B``; ``None`` is "no limit"."""
    if n_bytes is None:
        return "no limit"
    sign = "-" if n_bytes < 0 else ""
    if abs(n_bytes) < 1024:
        return f"{sign}{abs(n_bytes)} B"
    n = float(abs(n_bytes))
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{sign}{n:.1f} {unit}"
    raise AssertionError("unreachable")
