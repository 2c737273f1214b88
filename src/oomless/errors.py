"""The exceptions oomless raises, written for the person reading them at 3 a.m.

Each class keeps its numbers in ``args`` (plain str/int), because Celery's JSON
result backend ships an exception as ``{exc_type, exc_module, exc_message=args}``
and rebuilds it as ``cls(*args)`` in the client.  ``limit``/``peak``/``budget``
therefore survive the round trip, and ``str()`` renders the full sentence.
"""

from __future__ import annotations

from .units import format_size

__all__ = [
    "OomlessError",
    "InvalidMemorySpec",
    "MemoryLimitExceeded",
    "InfeasibleMemoryRequest",
    "EnforcementUnavailable",
    "EvictedForMemoryPressure",
    "ClaimMissing",
    "MessageTooLarge",
    "InvalidConfiguration",
]


class OomlessError(Exception):
    """Base class of every oomless error."""


class InvalidMemorySpec(OomlessError, ValueError):
    """A memory spec (task option, per-call option or message header) is malformed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


def _task_ref(task_name: str, task_id: str) -> str:
    short = task_id[:8] + "…" if len(task_id) > 8 else task_id
    return f"task {task_name}[{short}]"


class MemoryLimitExceeded(OomlessError):
    """A task's process tree went over its memory limit and was killed.

    Attributes ``limit`` and ``peak`` are bytes; ``mode`` is the enforcement
    mode that caught it ("cgroup" or "watchdog"); ``tried`` lists the limits of
    every attempt under an escalation policy (empty without one).
    """

    def __init__(
        self, task_name: str, task_id: str, limit: int, peak: int, mode: str = "", tried: list[int] | tuple = ()
    ) -> None:
        super().__init__(task_name, task_id, int(limit), int(peak), mode, [int(t) for t in tried])

    task_name = property(lambda self: self.args[0])
    task_id = property(lambda self: self.args[1])
    limit = property(lambda self: self.args[2])
    peak = property(lambda self: self.args[3])
    mode = property(lambda self: self.args[4])
    tried = property(lambda self: self.args[5])

    def __str__(self) -> str:
        how = f" by the {self.mode} enforcer" if self.mode else ""
        text = (
            f"{_task_ref(self.task_name, self.task_id)} exceeded its memory limit of "
            f"{format_size(self.limit)} (peak {format_size(self.peak)}); its process tree was "
            f"killed{how}."
        )
        if len(self.tried) > 1:
            limits = ", ".join(format_size(t) for t in self.tried)
            return (
                f"{text} All {len(self.tried)} attempts were killed at their limits ({limits}); this was "
                f"the last its memory_retry policy allows. Raise memory= or the policy's max."
            )
        return f"{text} Raise memory= on the task or on this call if it really needs more."


class InfeasibleMemoryRequest(OomlessError):
    """A task asks for more memory than this worker could ever give it."""

    def __init__(self, task_name: str, task_id: str, limit: int, budget: int) -> None:
        super().__init__(task_name, task_id, int(limit), int(budget))

    task_name = property(lambda self: self.args[0])
    task_id = property(lambda self: self.args[1])
    limit = property(lambda self: self.args[2])
    budget = property(lambda self: self.args[3])

    def __str__(self) -> str:
        return (
            f"{_task_ref(self.task_name, self.task_id)} asks for a memory limit of "
            f"{format_size(self.limit)}, more than this worker's whole budget of "
            f"{format_size(self.budget)}; it can never run here. Lower memory= on the task, "
            f"or route it to a worker with a larger budget (--memory-budget / oomless_budget)."
        )


class EvictedForMemoryPressure(OomlessError):
    """A task was evicted for node memory pressure more often than ``oomless_max_evictions`` allows.

    It stayed within its own limit; the worker's tasks together ran out of
    memory and it was the one most over its request.
    """

    def __init__(self, task_name: str, task_id: str, used: int, request: int, evictions: int, why: str = "") -> None:
        super().__init__(task_name, task_id, int(used), int(request), int(evictions), why)

    task_name = property(lambda self: self.args[0])
    task_id = property(lambda self: self.args[1])
    used = property(lambda self: self.args[2])
    request = property(lambda self: self.args[3])
    evictions = property(lambda self: self.args[4])
    why = property(lambda self: self.args[5])

    def __str__(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return (
            f"{_task_ref(self.task_name, self.task_id)} was evicted for node memory pressure{why}: it used "
            f"{format_size(self.used)} against a request of {format_size(self.request)}, and has now been "
            f"evicted {self.evictions} time(s). It stayed within its limit; give it a request closer to "
            f"what it uses so the worker can pack it honestly (or raise oomless_max_evictions)."
        )


class InvalidConfiguration(OomlessError, ValueError):
    """An ``oomless_*`` setting (or Airflow ``[oomless]`` option) has a value oomless cannot use.

    ``key`` names the setting; the message says what was given and what is accepted.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key = key

    def __str__(self) -> str:
        return str(self.args[1])

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.key, str(self)))


class EnforcementUnavailable(OomlessError):
    """The enforcement mode named in the configuration cannot work on this host."""


class ClaimMissing(OomlessError, LookupError):
    """A value sent by reference (claim check) cannot be fetched: it is gone, or its bytes changed.

    ``key`` is the object's path in the claim store, ``store`` the store's URL,
    ``why`` the reason in words (gone after its TTL, corrupt, store unreachable).
    """

    def __init__(self, key: str, store: str, why: str) -> None:
        super().__init__(key, store, why)

    key = property(lambda self: self.args[0])
    store = property(lambda self: self.args[1])
    why = property(lambda self: self.args[2])

    def __str__(self) -> str:
        return f"the value at {self.key} in the claim store {self.store} cannot be fetched: {self.why}"


class MessageTooLarge(OomlessError, ValueError):
    """A task message is over what its broker practically carries, and no claim store is configured.

    Raised before the message is sent (kombu wraps it in ``kombu.exceptions.EncodeError``).
    """

    def __init__(self, size: int, limit: int, broker: str) -> None:
        super().__init__(int(size), int(limit), broker)

    size = property(lambda self: self.args[0])
    limit = property(lambda self: self.args[1])
    broker = property(lambda self: self.args[2])

    def __str__(self) -> str:
        return (
            f"this task message is {format_size(self.size)}, over the {format_size(self.limit)} a {self.broker} "
            f"message may carry (oomless_max_message_size); it was not sent. Send large values by reference: "
            f"set oomless_offload = True (a local directory) or a shared fsspec URL such as 's3://bucket/claims' "
            f"(values over oomless_offload_threshold then travel as small claim checks), or pass a path or URL "
            f"to the data instead of the data"
        )
