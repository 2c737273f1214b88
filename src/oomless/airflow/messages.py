"""The sentences oomless writes into an Airflow try's log (no I/O here).

A try's log otherwise ends with Airflow's own "Process terminated by signal.
Likely out of memory error (OOM)."; these lines say what actually happened,
with the numbers, and what the next try will get.
"""

from __future__ import annotations

from ..errors import InfeasibleMemoryRequest
from ..history.recommend import bump, limit_for
from ..units import format_size
from .provider import SECTION
from .spec import KEY, TryInfo

__all__ = ["killed", "evicted", "infeasible", "learned"]


def killed(info: TryInfo | None, limit: int, peak: int) -> str:
    """A try whose task process tree went over its memory limit."""
    head = (
        f"oomless: this try was killed because its task process tree exceeded its memory limit of "
        f"{format_size(limit)} (peak {format_size(peak)}); the Celery worker and the other tasks on it "
        f"keep running."
    )
    if info is None:
        return head
    return f"{head} {_next(info, limit)}"


def _next(info: TryInfo, limit: int) -> str:
    if not info.retries_left:
        return (
            f"No retry is left (try {info.try_number} of {info.max_tries + 1}): raise the memory in "
            f'executor_config["{KEY}"], or set escalate= in oomless.airflow.memory(...) so retries get more.'
        )
    nxt = info.next_try()
    if info.declared.auto and info.declared.escalate is None:
        need = limit_for(bump(limit))
        if info.declared.max is not None and need > info.declared.max:
            return (
                f"The next try (try {info.try_number + 1}) is sized from the history again, which counts this "
                f"kill, up to max={format_size(info.declared.max)}: it will likely be killed again; raise max."
            )
        return (
            f"The next try (try {info.try_number + 1}) is sized from the history again, which counts this "
            f"kill: a limit of at least {format_size(need)}."
        )
    if info.declared.escalate is None:
        return (
            f"The next try (try {info.try_number + 1}) gets the same limit of {format_size(nxt.limit)}: "
            f"no escalation is set; use oomless.airflow.memory(..., escalate=2, max=...) to give retries more."
        )
    capped = info.declared.max is not None and nxt.limit == info.declared.max
    if nxt.limit is not None and nxt.limit <= limit:
        return (
            f"The next try (try {info.try_number + 1}) gets the same limit of {format_size(nxt.limit)}, the "
            f"escalation cap max={format_size(info.declared.max)}: it will likely be killed again; raise max."
        )
    return (
        f"The next try (try {info.try_number + 1}) gets a limit of {format_size(nxt.limit)} "
        f"(× {info.declared.escalate:g} per memory-killed try"
        f"{f', capped at max={format_size(info.declared.max)}' if capped else ''})."
    )


def evicted(info: TryInfo | None, used: int, request: int, why: str) -> str:
    """A try stopped because the worker's node ran out of memory (it stayed within its limit)."""
    head = (
        f"oomless: this try was stopped for node memory pressure ({why}); it used {format_size(used)} against "
        f"a request of {format_size(request)}, the most over its request of the tasks running. It stayed "
        f"within its limit, so the next try does not get more memory; raise its request to what it uses so "
        f"that the worker packs it honestly."
    )
    if info is not None and not info.retries_left:
        return f"{head} No retry is left."
    return head


def infeasible(exc: BaseException, final: bool = True) -> str:
    """A try refused before it ran: its memory can never fit this worker, or its declaration is malformed.
    In Airflow's words: what to change is ``executor_config``, ``[oomless]`` and the task's queue.
    ``final``: the worker failed it through the API server, so no retry follows (else Airflow decides)."""
    ending = "it fails without retries" if final else "the scheduler fails it"
    if isinstance(exc, InfeasibleMemoryRequest):
        return (
            f"oomless: this try did not run: it asks for a memory limit of {format_size(exc.limit)}, more than "
            f"this worker's whole budget of {format_size(exc.budget)}, so it can never run here; {ending}. "
            f"Lower the memory in its executor_config (oomless.airflow.memory(...)), or give "
            f"the task a queue= served by workers with a larger [{SECTION}] budget."
        )
    return f"oomless: this try did not run: {exc}; {ending}."


def learned(source: str) -> str:
    """A try whose memory the executor sized from the history (``[oomless] learned``, ``memory("auto")``)."""
    return f"oomless: this try runs with {source}"
