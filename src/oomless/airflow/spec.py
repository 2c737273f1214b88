"""What a DAG author declares in ``executor_config={"oomless": {...}}``, and what each try gets.

The ``oomless`` key holds sizes (bytes or strings such as ``"2GiB"``)::

    {"memory": "2GiB"}                                  # request = limit = 2 GiB
    {"request": "1GiB", "limit": "3GiB"}
    {"memory": "2GiB", "escalate": 2, "max": "16GiB"}   # Airflow's retries escalate
    {"memory": "auto"}                                  # the size learned from the history

Try *n* of a task whose earlier tries were killed for memory *k* times gets its
request and limit multiplied by ``escalate ** k``, capped at ``max``.  A try
that failed for any other reason does not escalate the next one.  This module
does no I/O and imports nothing from Airflow, so DAG files stay cheap to parse.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidMemorySpec
from ..history.recommend import AIRFLOW_TRY_FLOOR
from ..spec import Memory
from ..units import format_size, parse_size, short_repr

__all__ = ["KEY", "AIRFLOW_HEADER", "TASK", "TRY_FLOOR", "TaskMemory", "below_floor", "memory", "TryInfo"]

#: The key of ``executor_config`` that oomless reads.
KEY = "oomless"
#: Message header with what the worker needs to word a kill in the try's log.
AIRFLOW_HEADER = "oomless_airflow"
#: The Celery task of the Airflow provider that runs one workload (a try).
TASK = "execute_workload"

_KEYS = {"memory", "request", "limit", "escalate", "max", "auto"}

#: The least memory limit an Airflow try can run under in cgroup mode (the recommender's
#: :data:`~oomless.history.recommend.AIRFLOW_TRY_FLOOR`).  A DAG file that imports more (pandas)
#: costs more; the worker measures its own (the smallest peak of its tries).
TRY_FLOOR = AIRFLOW_TRY_FLOOR


def below_floor(limit: int | None, floor: int = TRY_FLOOR) -> str | None:
    """Why a try with memory limit ``limit`` is killed before its code runs, or ``None``."""
    if limit is None or limit >= floor:
        return None
    return (
        f"a memory limit of {format_size(limit)} is below the {format_size(floor)} an Airflow try is charged "
        f"before the task's code runs (the task runner importing the SDK and the DAG file; cgroup mode): "
        f"the try would be killed before it starts; give it at least {format_size(floor)} plus what the "
        f"task itself uses"
    )
AUTO = "auto"


@dataclass(frozen=True)
class TaskMemory:
    """A task's declared memory and how Airflow's retries escalate it."""

    base: Memory  # with auto: the memory a try gets while nothing is learned
    escalate: float | None = None
    max: int | None = None
    auto: bool = False  # the size learned from the history of this DAG's task (``[oomless] history``)

    @classmethod
    def from_config(cls, executor_config: Any) -> TaskMemory | None:
        """The ``oomless`` part of an ``executor_config``, or ``None`` when it has none.

        Raises :class:`InvalidMemorySpec` naming the bad value and the fix."""
        if not isinstance(executor_config, Mapping) or KEY not in executor_config:
            return None
        raw = executor_config[KEY]
        if not isinstance(raw, Mapping):
            raise InvalidMemorySpec(
                f'executor_config["{KEY}"]={short_repr(raw)} is not a mapping; '
                f'use oomless.airflow.memory("2GiB") or {{"{KEY}": {{"memory": "2GiB"}}}}'
            )
        unknown = set(raw) - _KEYS
        if unknown:
            raise InvalidMemorySpec(
                f'executor_config["{KEY}"] has unknown keys {short_repr(sorted(map(str, unknown)))}; '
                f"use {', '.join(sorted(_KEYS))}"
            )
        if "memory" in raw and ("request" in raw or "limit" in raw):
            raise InvalidMemorySpec(
                f'executor_config["{KEY}"] gives both "memory" and "request"/"limit"; '
                f'"memory" means request = limit, so give one or the other'
            )
        what = f'executor_config["{KEY}"]'
        auto = raw.get("auto") is True or (isinstance(raw.get("memory"), str) and raw["memory"].strip() == AUTO)
        if "memory" in raw and not auto:
            base = Memory.coerce(raw["memory"], what=f"{what}['memory']")
        else:
            base = Memory.coerce({"request": raw.get("request"), "limit": raw.get("limit")}, what=what)
        return cls.make(base or Memory(), raw.get("escalate"), raw.get("max"), auto=auto)

    @classmethod
    def make(cls, base: Memory, escalate: Any = None, cap: Any = None, auto: bool = False) -> TaskMemory:
        """Validate ``escalate`` (a factor > 1) and ``max`` (a size >= the limit)."""
        factor = None
        if escalate is not None:
            if isinstance(escalate, bool) or not isinstance(escalate, (int, float)) or not math.isfinite(escalate):
                raise InvalidMemorySpec(f"escalate={escalate!r} is not a number; use e.g. escalate=2")
            if escalate <= 1:
                raise InvalidMemorySpec(
                    f"escalate={escalate} must be larger than 1, or the next try gets no more memory"
                )
            if base.limit is None and not auto:
                raise InvalidMemorySpec(f"escalate={escalate} needs a memory limit to multiply; set memory= too")
            factor = float(escalate)
        top = None
        if cap is not None:
            try:
                top = parse_size(cap, "max")
            except ValueError as exc:
                raise InvalidMemorySpec(str(exc)) from None
            if base.limit is not None and top < base.limit:
                raise InvalidMemorySpec(
                    f"max={format_size(top)} is below the memory limit {format_size(base.limit)}; "
                    f"max caps escalation, so it must be at least the limit"
                )
        return cls(base, factor, top, auto)

    def to_config(self) -> dict[str, Any]:
        """The JSON-safe ``executor_config["oomless"]`` value (bytes as integers)."""
        out: dict[str, Any] = {"request": self.base.request, "limit": self.base.limit}
        if self.auto:
            out["auto"] = True
        if self.escalate is not None:
            out["escalate"] = self.escalate
        if self.max is not None:
            out["max"] = self.max
        return out

    def for_try(self, memory_killed: int) -> Memory:
        """The spec of a try after ``memory_killed`` earlier tries were killed for memory."""
        if self.escalate is None or memory_killed <= 0 or self.base.limit is None:
            return self.base
        scale = self.escalate ** min(memory_killed, 64)
        limit = _capped(self.base.limit * scale, self.max)
        request = None if self.base.request is None else min(limit, _capped(self.base.request * scale, self.max))
        return Memory(request=request, limit=limit)


def _capped(value: float, cap: int | None) -> int:
    return int(value) if cap is None else int(min(value, cap))


def memory(
    memory: int | str | None = None,
    *,
    request: int | str | None = None,
    limit: int | str | None = None,
    escalate: float | None = None,
    max: int | str | None = None,  # noqa: A002
    default: int | str | None = None,
) -> dict[str, Any]:
    """``executor_config`` for a task's memory: ``{"oomless": {...}}``, validated now.

    ``memory("2GiB")`` sets request = limit; ``request=``/``limit=`` set them
    apart.  ``escalate=2, max="16GiB"``: each try after a memory-killed one
    gets twice the memory, up to 16 GiB.  ``memory("auto")``: the size learned
    from the history of this DAG's task (``[oomless] history``; see
    docs/airflow.md), ``default=`` while nothing is learned.  Merge with other
    executor keys as ``{**memory("2GiB"), "pod_override": ...}``; works in
    ``default_args`` and on mapped tasks (``.partial(executor_config=...)``) as
    any ``executor_config``.
    """
    if memory is not None and (request is not None or limit is not None):
        raise InvalidMemorySpec("give memory= or request=/limit=, not both (memory= means request = limit)")
    auto = isinstance(memory, str) and memory.strip() == AUTO
    if default is not None and not auto:
        raise InvalidMemorySpec("default= is the memory of memory('auto') while nothing is learned; with a "
                                "size given, leave it out")
    if auto:
        base = Memory.coerce(default, what="default") if default is not None else None
    elif memory is not None:
        base = Memory.coerce(memory, what="memory")
    else:
        base = Memory(request=request, limit=limit)
    declared = TaskMemory.make(base or Memory(), escalate, max, auto=auto)
    low = below_floor(declared.base.limit)
    if low is not None:
        warnings.warn(f"oomless.airflow.memory(): {low}", UserWarning, stacklevel=2)
    return {KEY: declared.to_config()}


@dataclass(frozen=True)
class TryInfo:
    """What the scheduler tells the worker about a try (the :data:`AIRFLOW_HEADER` header)."""

    try_number: int
    max_tries: int
    memory_killed: int  # earlier tries of this task instance killed for memory
    declared: TaskMemory  # with a learned size: that size, as declared memory
    source: str | None = None  # where a learned size came from, for the try's log

    def to_header(self) -> dict[str, Any]:
        out = {
            "try": self.try_number,
            "max_tries": self.max_tries,
            "memory_killed": self.memory_killed,
            "declared": self.declared.to_config(),
        }
        if self.source is not None:
            out["source"] = self.source
        return out

    @classmethod
    def from_header(cls, raw: Any) -> TryInfo | None:
        """Decode the header; broker headers are untrusted, so anything odd gives ``None``."""
        if not isinstance(raw, Mapping):
            return None
        numbers = [raw.get(k) for k in ("try", "max_tries", "memory_killed")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 10_000 for n in numbers):
            return None
        try:
            declared = TaskMemory.from_config({KEY: raw.get("declared")})
        except InvalidMemorySpec:
            return None
        if declared is None:
            return None
        source = raw.get("source")
        source = source if isinstance(source, str) and len(source) <= 1000 else None
        return cls(numbers[0], numbers[1], numbers[2], declared, source)  # type: ignore[arg-type]

    @property
    def retries_left(self) -> bool:
        """Airflow retries a failed try while its try number is at most ``max_tries``."""
        return self.try_number <= self.max_tries

    def next_try(self) -> Memory:
        """What the next try gets if this one is killed for memory."""
        return self.declared.for_try(self.memory_killed + 1)
