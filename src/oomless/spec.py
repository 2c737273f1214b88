"""What a task declares: a memory *request* (for packing) and a *limit* (enforced).

``memory="2GiB"`` means request = limit = 2 GiB.  ``Memory(request=..., limit=...)``
sets them apart; a spec with only a limit requests its limit (as in Kubernetes),
one with only a request is accounted and packed but not limited.

Precedence, most specific first: per-call option (message header) > task
option > worker default (``oomless_default_memory``).  This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidMemorySpec
from .units import format_size, parse_size, short_repr

__all__ = ["Memory", "HEADER", "NO_SPEC"]

#: Message header that carries a per-call memory spec.
HEADER = "oomless_memory"
#: Message header: the spec in :data:`HEADER` was learned from the history (capped, not refused, on a
#: worker too small for it).
LEARNED_HEADER = "oomless_learned"
#: Message header: the publisher found the task's memory declaration malformed, and why (the worker
#: fails the task with that sentence instead of guessing from the raw value).
INVALID_HEADER = "oomless_invalid"


@dataclass(frozen=True)
class Memory:
    """A task's memory: ``request`` and ``limit`` in bytes (``None``: not set)."""

    request: int | None = None
    limit: int | None = None

    def __init__(self, request: int | str | None = None, limit: int | str | None = None) -> None:
        req = _size_or_none(request, "memory request")
        lim = _size_or_none(limit, "memory limit")
        if req is None and lim is not None:
            req = lim
        if req is not None and lim is not None and req > lim:
            raise InvalidMemorySpec(
                f"memory request {format_size(req)} is larger than the limit {format_size(lim)}; "
                f"a task cannot be promised more than it may use. Set request <= limit."
            )
        object.__setattr__(self, "request", req)
        object.__setattr__(self, "limit", lim)

    @classmethod
    def coerce(cls, value: Any, what: str = "memory") -> Memory | None:
        """Turn a user value (Memory, int, "2GiB", {"request":…, "limit":…}, None) into a Memory."""
        if value is None or isinstance(value, Memory):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"request", "limit"}
            if unknown:
                raise InvalidMemorySpec(
                    f"{what} {short_repr(dict(value))} has unknown keys {short_repr(sorted(map(str, unknown)))}; "
                    f"use 'request' and/or 'limit'"
                )
            return cls(request=value.get("request"), limit=value.get("limit"))
        size = _size_or_none(value, what)
        return cls(request=size, limit=size)

    def to_header(self) -> dict[str, int | None]:
        """The JSON-safe form carried in the :data:`HEADER` message header."""
        return {"request": self.request, "limit": self.limit}

    def __str__(self) -> str:
        if self.request == self.limit:
            return format_size(self.limit)
        return f"request {format_size(self.request)}, limit {format_size(self.limit)}"


def _size_or_none(value: Any, what: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, what)
    except ValueError as exc:
        raise InvalidMemorySpec(str(exc)) from None


NO_SPEC = Memory()


def from_header(raw: Any) -> Memory | None:
    """Decode the header of an incoming message.  Broker headers are untrusted input:
    anything but a small mapping of sizes raises :class:`InvalidMemorySpec`."""
    if raw is None:
        return None
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        return Memory.coerce(raw, what=f"message header {HEADER}")
    if not isinstance(raw, Mapping) or len(raw) > 2:
        raise InvalidMemorySpec(
            f"message header {HEADER}={short_repr(raw)} is not a memory spec; expected a size such as "
            f"'2GiB' or {{'request': <bytes>, 'limit': <bytes>}}"
        )
    return Memory.coerce(raw, what=f"message header {HEADER}")


def invalid_from_header(raw: Any) -> InvalidMemorySpec | None:
    """The publisher's reason a declaration is malformed (:data:`INVALID_HEADER`), or ``None``.
    Untrusted: any value gives a bounded sentence."""
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else short_repr(raw)
    return InvalidMemorySpec(text[:1000] or f"message header {INVALID_HEADER} is empty")


def resolve(call: Memory | None, task: Memory | None, default: Memory | None) -> Memory:
    """The spec that applies: per-call beats the task option, which beats the worker default."""
    for spec in (call, task, default):
        if spec is not None:
            return spec
    return NO_SPEC
