"""oomless: memory as a first-class, enforced resource for Celery workers.

>>> import oomless
>>> oomless.install(app)                     # doctest: +SKIP
>>> @app.task(memory="2GiB")                 # doctest: +SKIP
... def transform(path): ...

See README.md and docs/ for the guide.
"""

from .errors import (
    ClaimMissing,
    EnforcementUnavailable,
    EvictedForMemoryPressure,
    InfeasibleMemoryRequest,
    InvalidMemorySpec,
    MemoryLimitExceeded,
    MessageTooLarge,
    OomlessError,
)
from .escalate import Escalate
from .spec import Memory
from .units import format_size, parse_size

__version__ = "0.1.0"

__all__ = [
    "install",
    "input_size",
    "learned",
    "Memory",
    "Escalate",
    "MemoryLimitExceeded",
    "InvalidMemorySpec",
    "InfeasibleMemoryRequest",
    "EnforcementUnavailable",
    "EvictedForMemoryPressure",
    "ClaimMissing",
    "MessageTooLarge",
    "OomlessError",
    "parse_size",
    "format_size",
]


def input_size(n_bytes: int) -> None:
    """Inside a task: the bytes of input it processes, recorded beside its peak; see
    :func:`oomless.celery.child.input_size`."""
    from .celery.child import input_size as _input_size

    _input_size(n_bytes)


def learned(input_size: int | None = None, default: object = None, history: str | None = None):  # type: ignore[no-untyped-def]
    """``apply_async(..., memory=oomless.learned())``: the size history recommends for the task
    being sent; see :func:`oomless.history.learned.learned`."""
    from .history.learned import learned as _learned

    return _learned(input_size, default, history)


def install(app):  # type: ignore[no-untyped-def]
    """Add the oomless governor to every worker of ``app``; see :func:`oomless.celery.install`."""
    from .celery.install import install as _install

    return _install(app)
