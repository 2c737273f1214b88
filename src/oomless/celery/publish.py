"""Client side: carry a per-call ``memory=`` option in a message header.

``task.apply_async(..., memory="4GiB")`` and ``sig.set(memory="4GiB")`` reach
Celery's ``send_task_message`` as an extra keyword, which lands in the AMQP
message *properties*; RabbitMQ drops non-standard properties.  This
``before_task_publish`` receiver moves it into the :data:`~oomless.spec.HEADER`
header.  Celery logs and swallows exceptions raised by signal receivers, so a
malformed value is not raised here: it travels as given and the worker fails
that task with :class:`~oomless.errors.InvalidMemorySpec` (nothing is lost).
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import InvalidMemorySpec
from ..history.learned import LearnedMemory
from ..spec import HEADER, LEARNED_HEADER, Memory
from .republish import INPUT_SIZE

logger = logging.getLogger(__name__)

__all__ = ["on_before_task_publish"]


def _learned(task_name: Any, want: LearnedMemory) -> Memory | None:
    from celery import current_app

    from ..history.learned import resolve_learned

    try:
        return resolve_learned(str(task_name), want, current_app.conf.get("oomless_history"))
    except Exception as exc:  # never fail a publish over a hint: send the default
        logger.warning("oomless: learned memory for %s unavailable (%s); sending %s", task_name, exc, want.default)
        return want.default


def on_before_task_publish(sender: Any = None, headers: Any = None, properties: Any = None, **_: Any) -> None:
    if not properties or headers is None:
        return
    if "input_size" in properties:
        size = properties.pop("input_size")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            headers[INPUT_SIZE] = size
        else:
            logger.error("oomless: input_size=%r of %s is not a number of bytes; not sent", size, sender)
    if "memory" not in properties:
        return
    raw = properties.pop("memory")
    if isinstance(raw, LearnedMemory):
        if raw.input_size is not None:
            headers.setdefault(INPUT_SIZE, raw.input_size)
        want, raw = raw, _learned(sender, raw)
        if raw is None:
            return  # nothing learned and no default: the task's own memory= applies
        if raw is not want.default:
            headers[LEARNED_HEADER] = 1  # a worker too small for it caps it instead of refusing the task
    try:
        spec = Memory.coerce(raw, what=f"memory= of {sender}")
    except InvalidMemorySpec as exc:
        logger.error("oomless: %s; the worker will fail task %s with InvalidMemorySpec", exc, headers.get("id"))
        headers[HEADER] = raw if isinstance(raw, (str, int, dict)) else repr(raw)
        return
    if spec is not None:
        headers[HEADER] = spec.to_header()
