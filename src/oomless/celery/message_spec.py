"""Which memory one task message gets, decided once in the worker's main process when it arrives.

In order, the first that applies (a message whose publisher found its
declaration malformed, the ``oomless_invalid`` header, is refused before any of
this, by the request):

1. the message's own spec (``oomless`` header: ``apply_async(memory=...)``, an
   escalation, a requeue after eviction), capped at the worker's capacity when
   it was learned at submit time;
2. the task's ``memory=`` option;
3. learned sizes (``oomless_learned``), by the message's input-size hint when it
   has one;
4. the worker's ``oomless_default_memory``.

A spec larger than any budget this worker offers is refused
(:class:`~oomless.errors.InfeasibleMemoryRequest`).  Messages that carry no spec
get their task's answer from a per-name cache (``Governor.task_specs``, cleared
when learned sizes change), except, with learned sizes on, those with a size
hint.

What is not here: what the request does with a refusal or the spec
(:mod:`oomless.celery.request`), the spec's grammar (:mod:`oomless.spec`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..spec import HEADER, LEARNED_HEADER, Memory, from_header, resolve
from .republish import INPUT_SIZE, header_int

if TYPE_CHECKING:
    from .governor import Governor

__all__ = ["message_spec"]


def message_spec(req: Any, gov: Governor | None) -> Memory:
    """The spec of the request ``req``.  Raises :class:`~oomless.errors.InvalidMemorySpec` or
    :class:`~oomless.errors.InfeasibleMemoryRequest`; a spec resolved but infeasible is set on
    ``req.oomless_spec`` first, so the refusal's record has it."""
    header = req.request_dict.get(HEADER)
    learned = gov.learned if gov is not None else None
    size = header_int(req, INPUT_SIZE, -1, high=2**60) if learned is not None else -1
    # With learned sizes, a message's input-size hint may pick a size-fitted spec: not cached per name.
    cacheable = gov is not None and header is None and size < 0
    spec = gov.task_specs.get(req.name) if cacheable else None  # type: ignore[union-attr]
    if spec is not None:
        return spec
    call = from_header(header)
    if call is not None and gov is not None and req.request_dict.get(LEARNED_HEADER) == 1:
        call = gov.cap_learned(req.name, call)
    task_spec = getattr(req.task, "oomless_spec", None)
    default = gov.settings.default_memory if gov else None
    if call is None and task_spec is None and learned is not None:
        default = learned.get(req.name, size if size >= 0 else None, cap=gov.budget) or default  # type: ignore[union-attr]
    spec = resolve(call, task_spec, default)
    req.oomless_spec = spec
    if gov is not None:
        gov.check_feasible(req.name, req.id, spec)
        if cacheable:  # feasible: the same for every message of this task without a header
            gov.task_specs[req.name] = spec
    return spec
