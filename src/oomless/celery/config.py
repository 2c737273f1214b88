"""oomless settings read from a Celery app's configuration (all optional).

=========================  ==========  ==============================================
key                        default     meaning
=========================  ==========  ==============================================
``oomless_budget``         ``"auto"``  bytes tasks may use on this worker (a size)
``oomless_reserve``        see budget  bytes kept back from ``auto``
``oomless_default_memory`` ``None``    spec for tasks that declare none (unset:
                                       accounted, not limited)
``oomless_enforcement``    ``"auto"``  ``auto`` | ``cgroup`` | ``watchdog`` | ``off``
``oomless_poll_interval``  ``0.005``   watchdog poll interval, seconds
=========================  ==========  ==============================================

The worker option ``--memory-budget`` overrides ``oomless_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..budget import Budget, compute_budget
from ..errors import InvalidMemorySpec
from ..linux import proc
from ..linux.cgroup import CgroupHost
from ..spec import Memory

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    budget: Budget
    default_memory: Memory | None
    enforcement: str
    poll_interval: float


def _conf(conf: Any, key: str, default: Any = None) -> Any:
    value = conf.get(key)
    return default if value is None else value


def load_settings(conf: Any, host: CgroupHost, cli_budget: str | None = None) -> Settings:
    """Read and validate the ``oomless_*`` keys of a Celery config mapping."""
    if cli_budget is not None:
        budget = compute_budget(cli_budget, None, proc.mem_total(), host.limit, configured_by="--memory-budget")
    else:
        budget = compute_budget(
            _conf(conf, "oomless_budget", "auto"), conf.get("oomless_reserve"), proc.mem_total(), host.limit
        )
    try:
        default = Memory.coerce(conf.get("oomless_default_memory"), what="oomless_default_memory")
    except InvalidMemorySpec as exc:
        raise ValueError(str(exc)) from None
    interval = float(_conf(conf, "oomless_poll_interval", 0.005))
    if not 0.0005 <= interval <= 1:
        raise ValueError(f"oomless_poll_interval={interval} s is outside 0.0005–1 s")
    return Settings(budget, default, str(_conf(conf, "oomless_enforcement", "auto")), interval)
