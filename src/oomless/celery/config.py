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
``oomless_admission``      ``True``    start a task only when its request fits
                                       (False: Celery's own slot semaphore)
``oomless_max_waiting``    pool size   tasks that cannot fit held before the worker
                                       stops fetching
``oomless_backfill_window`` ``60``     seconds a task that cannot fit lets smaller
                                       ones pass before it blocks them
``oomless_give_back_after`` ``30``     seconds a task that cannot fit waits here
                                       before it goes back to the broker, if its
                                       queue there is empty (0: never)
``oomless_infeasible``     ``"fail"``  ``fail`` | ``queue:<name>``: a request larger
                                       than the budget fails, or goes to that queue
``oomless_max_evictions``  ``3``       times a task is requeued after an eviction
                                       for node pressure before it fails
``oomless_eviction_margin`` ``100MiB`` evict when less than this is available to
                                       the worker (its cgroup, or the machine)
``oomless_history``        ``None``    record every attempt: ``"default"`` (an SQLite
                                       file under $XDG_STATE_HOME/oomless) or an
                                       SQLAlchemy URL; unset: not recorded
``oomless_leftovers``      ``"kill"``  ``kill`` | ``keep``: processes a task leaves
                                       running when it returns (daemons, forgotten
                                       subprocesses) are killed before the slot's
                                       next task, or kept (and charged to no task)
``oomless_gc_freeze``      ``True``    freeze the worker's heap (``gc.freeze()``) before
                                       the pool forks, and build there what each child
                                       would build alone (billiard's C parser): pool
                                       children then copy far less of it
``oomless_malloc_trim``    ``True``    after a task that leaves its pool child 4 MiB or
                                       more above where it was, give the C heap's free
                                       memory back (glibc keeps up to 64 MiB of it)
``oomless_plugins``        ``()``      import paths of :class:`~oomless.celery.governor.Plugin`
                                       classes (the Airflow integration adds its own)
=========================  ==========  ==============================================

The worker option ``--memory-budget`` overrides ``oomless_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..budget import Budget, compute_budget
from ..errors import InvalidMemorySpec
from ..history.url import resolve as resolve_history
from ..linux import proc
from ..linux.cgroup.host import CgroupHost
from ..spec import Memory
from ..units import parse_size

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    budget: Budget
    default_memory: Memory | None
    enforcement: str
    poll_interval: float
    admission: bool = True
    max_waiting: int | None = None  # None: the pool size
    backfill_window: float = 60.0
    give_back_after: float | None = 30.0
    infeasible_queue: str | None = None
    max_evictions: int = 3
    eviction_margin: int = 100 * 2**20
    plugins: tuple[str, ...] = ()
    history: str | None = None  # SQLAlchemy URL of the history store
    learned: bool = False  # give tasks that declare no memory the recommended spec
    metrics_port: int | None = None  # Prometheus metrics: off unless set (0: any free port)
    metrics_address: str = "127.0.0.1"
    kill_leftovers: bool = True  # oomless_leftovers="kill"
    gc_freeze: bool = True  # oomless_gc_freeze
    malloc_trim: bool = True  # oomless_malloc_trim


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
    history = resolve_history(conf.get("oomless_history"))
    learned = _flag(conf, "oomless_learned", False)
    if learned and history is None:
        raise ValueError("oomless_learned=True needs the history it learns from: set oomless_history too "
                         "('default' for the SQLite file, or an SQLAlchemy URL)")
    interval = float(_conf(conf, "oomless_poll_interval", 0.005))
    if not 0.0005 <= interval <= 1:
        raise ValueError(f"oomless_poll_interval={interval} s is outside 0.0005–1 s")
    return Settings(
        budget,
        default,
        str(_conf(conf, "oomless_enforcement", "auto")),
        interval,
        admission=_flag(conf, "oomless_admission", True),
        max_waiting=_count(conf, "oomless_max_waiting", None, low=1),
        backfill_window=_seconds(conf, "oomless_backfill_window", 60.0),
        give_back_after=_seconds(conf, "oomless_give_back_after", 30.0) or None,
        infeasible_queue=_infeasible(conf.get("oomless_infeasible")),
        max_evictions=_count(conf, "oomless_max_evictions", 3, low=0) or 0,
        eviction_margin=parse_size(_conf(conf, "oomless_eviction_margin", "100MiB"), "oomless_eviction_margin"),
        plugins=_names(conf, "oomless_plugins"),
        history=history,
        learned=learned,
        metrics_port=_port(conf.get("oomless_metrics_port")),
        metrics_address=str(_conf(conf, "oomless_metrics_address", "127.0.0.1")),
        kill_leftovers=_leftovers(conf.get("oomless_leftovers")),
        gc_freeze=_flag(conf, "oomless_gc_freeze", True),
        malloc_trim=_flag(conf, "oomless_malloc_trim", True),
    )


def _names(conf: Any, key: str) -> tuple[str, ...]:
    value = _conf(conf, key, ())
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}={value!r} is not a list of import paths")
    return tuple(value)


def _flag(conf: Any, key: str, default: bool) -> bool:
    value = _conf(conf, key, default)
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "off"):
            return False
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key}={value!r} is not a yes/no value; use True or False")


def _count(conf: Any, key: str, default: int | None, low: int) -> int | None:
    value = _conf(conf, key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ValueError(f"{key}={value!r} is not a whole number")
    if int(value) < low:
        raise ValueError(f"{key}={value} must be at least {low}")
    return int(value)


def _seconds(conf: Any, key: str, default: float) -> float:
    value = _conf(conf, key, default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not a number of seconds") from None
    if not 0 <= seconds < 10**7:
        raise ValueError(f"{key}={seconds} s is outside 0–10,000,000 s")
    return seconds


def _port(value: Any) -> int | None:
    """``oomless_metrics_port``: unset/"off" (no metrics) or a TCP port (0: any free port)."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "off")):
        return None
    if isinstance(value, bool) or not str(value).strip().isdigit() or not 0 <= int(value) <= 65535:
        raise ValueError(f"oomless_metrics_port={value!r} is not a TCP port (0–65535); use e.g. 9808, or 'off'")
    return int(value)


def _leftovers(value: Any) -> bool:
    """``oomless_leftovers``: ``"kill"`` (True, the default) or ``"keep"``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "kill"):
        return True
    if isinstance(value, str) and value.strip().lower() == "keep":
        return False
    raise ValueError(
        f"oomless_leftovers={value!r} is not understood; use 'kill' (processes a task leaves running are "
        f"killed when it returns) or 'keep'"
    )


def _infeasible(value: Any) -> str | None:
    """``oomless_infeasible``: ``"fail"`` (None) or ``"queue:<name>"`` (the queue name)."""
    if value is None or value == "fail":
        return None
    if isinstance(value, str) and value.startswith("queue:") and value[6:].strip():
        return value[6:].strip()
    raise ValueError(
        f"oomless_infeasible={value!r} is not understood; use 'fail' or 'queue:<name>' "
        f"(the queue a worker with a larger budget consumes)"
    )
