"""Every oomless setting, declared once: its key, parser, default, unit and meaning.

A Celery app sets them as ``oomless_<name>`` config keys; an Airflow deployment
as ``<name>`` in the ``[oomless]`` section (:mod:`oomless.airflow.provider`
lists the same :data:`SETTINGS`).  README's configuration table and the Airflow
provider's info are checked against this table by
``tests/celery/test_settings.py``: change a setting here, and the test tells
what else to change.

A value that cannot be used raises :class:`~oomless.errors.InvalidConfiguration`
naming the key, the value and what is accepted.  An unset key, ``None`` or an
empty string (Airflow's unset option) means the default.

No Celery import here: Airflow's providers manager reads this table.

What is not here: how the values combine into a worker's settings
(:mod:`oomless.celery.config`), the budget's arithmetic (:mod:`oomless.budget`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfiguration
from .units import parse_duration, parse_size

__all__ = ["Setting", "SETTINGS", "BY_NAME", "PREFIX", "read", "history"]

#: A setting's Celery key is PREFIX + its name.
PREFIX = "oomless_"

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


# -- parsers: (value, key) -> parsed; ValueError with a sentence when the value cannot be used -----


def text(value: Any, key: str) -> str:
    """Any string (a number is taken as its text)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{key}={value!r} is not text")
    return str(value).strip()


def flag(value: Any, key: str) -> bool:
    """True/False, or the words yes/no, on/off, 1/0 (Airflow hands every option over as text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return True
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return False
    raise ValueError(f"{key}={value!r} is not a yes/no value; use True or False")


def count(low: int) -> Callable[[Any, str], int]:
    """A whole number of at least ``low``."""

    def parse(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise ValueError(f"{key}={value!r} is not a whole number")
        if int(value) < low:
            raise ValueError(f"{key}={value} must be at least {low}")
        return int(value)

    return parse


def seconds(value: Any, key: str) -> float:
    """A duration up to ~115 days: seconds (``30``, ``2.5``), ``"5ms"`` … ``"7d"``, a ``timedelta``;
    ``False`` is 0 (as a number)."""
    return parse_duration(0 if value is False else value, key)


def long_seconds(value: Any, key: str) -> float:
    """A duration of any length (how long stored data is kept)."""
    return parse_duration(0 if value is False else value, key, longest=float("inf"))


def poll_interval(value: Any, key: str) -> float:
    """A duration between 0.5 ms and 1 s."""
    interval = parse_duration(value, key)
    if not 0.0005 <= interval <= 1:
        raise ValueError(f"{key}={interval} s is outside 0.0005–1 s")
    return interval


def size(value: Any, key: str) -> int:
    """Bytes: ``"512MiB"``, ``"2GiB"``, ``1048576``."""
    return parse_size(value, key)


def size_or_auto(value: Any, key: str) -> str | int:
    """``"auto"`` or bytes."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return parse_size(value, key)


def choice(*words: str) -> Callable[[Any, str], str]:
    """One of ``words`` (case-insensitive)."""

    def parse(value: Any, key: str) -> str:
        if isinstance(value, str) and value.strip().lower() in words:
            return value.strip().lower()
        raise ValueError(f"{key}={value!r} is not understood; use {', '.join(repr(w) for w in words)}")

    return parse


def infeasible(value: Any, key: str) -> str | None:
    """``"fail"`` (None) or ``"queue:<name>"`` (the queue's name)."""
    if value == "fail":
        return None
    if isinstance(value, str) and value.startswith("queue:") and value[6:].strip():
        return value[6:].strip()
    raise ValueError(
        f"{key}={value!r} is not understood; use 'fail' or 'queue:<name>' "
        f"(the queue a worker with a larger budget consumes)"
    )


def leftovers(value: Any, key: str) -> bool:
    """``"kill"`` (True) or ``"keep"`` (False)."""
    if isinstance(value, str) and value.strip().lower() == "kill":
        return True
    if isinstance(value, str) and value.strip().lower() == "keep":
        return False
    raise ValueError(
        f"{key}={value!r} is not understood; use 'kill' (processes a task leaves running are "
        f"killed when it returns) or 'keep'"
    )


def port(value: Any, key: str) -> int | None:
    """A TCP port (0: any free one), or ``"off"``."""
    if value is False or (isinstance(value, str) and value.strip().lower() in ("", "off")):
        return None
    if isinstance(value, bool) or not str(value).strip().isdigit() or not 0 <= int(value) <= 65535:
        raise ValueError(f"{key}={value!r} is not a TCP port (0–65535); use e.g. 9894, or 'off'")
    return int(value)


def names(value: Any, key: str) -> tuple[str, ...]:
    """Import paths: a list, or one string separated by spaces or commas."""
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}={value!r} is not a list of import paths")
    return tuple(value)


def history(value: Any, key: str = "oomless_history") -> str | None:
    """``"default"``/``"on"`` (the SQLite file, :func:`oomless.paths.history_url`), an SQLAlchemy URL,
    or ``"off"``/``False`` (``None``: not recorded)."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "off")):
        return None
    if isinstance(value, str) and value.strip().lower() in ("default", "on"):
        from .paths import history_url

        return history_url()
    if isinstance(value, str) and "://" in value:
        return value.strip()
    raise ValueError(
        f"{key}={value!r} is not understood; use 'default' (an SQLite file), an SQLAlchemy URL "
        f"such as 'postgresql+psycopg://user@host/db', or 'off'"
    )


def offload(value: Any, key: str) -> bool | str:
    """``True`` (a local directory), an fsspec URL, or False/``"off"``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return True
    if isinstance(value, str) and value.strip().lower() in _FALSE + ("",):
        return False
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value).strip()
    raise ValueError(f"{key}={value!r} is not understood; use True (a local directory) or an fsspec URL")


def memory(value: Any, key: str) -> Any:
    """A memory spec: a size, ``{"request": …, "limit": …}``, or a :class:`~oomless.Memory`."""
    from .spec import Memory

    return Memory.coerce(value, what=key)


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: ``oomless_<name>`` in Celery, ``<name>`` in Airflow's ``[oomless]``."""

    name: str
    parse: Callable[[Any, str], Any]
    #: what an unset key means, as it would be written (``None``: see ``shown``)
    default: Any
    #: the default as the docs show it (README's "default" column)
    shown: str
    #: Airflow's option type: string | integer | float | boolean
    kind: str
    #: what it does (README's "meaning" column)
    doc: str
    example: str | None = None
    #: an option of Airflow's ``[oomless]`` section
    airflow: bool = True
    #: the option's description for Airflow users, where a try is not a task
    airflow_doc: str | None = None
    #: a value of 0 means the default too (0 bytes or 0 s would make no sense there)
    zero_is_default: bool = False

    @property
    def key(self) -> str:
        return PREFIX + self.name

    def read(self, conf: Mapping[str, Any]) -> Any:
        """The parsed value of this setting in ``conf`` (its default where unset)."""
        value = conf.get(self.key)
        if value is None or (isinstance(value, str) and not value.strip()):
            value = self.default
        if self.zero_is_default and value == 0 and value is not True:  # 0, 0.0, False (sizes refuse 0)
            value = self.default
        parsed = self._parse(value)
        if self.zero_is_default and parsed == 0:  # a duration written otherwise: timedelta(0), "0s"
            parsed = self._parse(self.default)
        return parsed

    def _parse(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            return self.parse(value, self.key)
        except InvalidConfiguration:
            raise
        except (ValueError, TypeError) as exc:
            raise InvalidConfiguration(self.key, str(exc)) from None


def _s(*args: Any, **kwargs: Any) -> Setting:
    return Setting(*args, **kwargs)


SETTINGS: tuple[Setting, ...] = (
    _s("budget", size_or_auto, "auto", '`"auto"`', "string",
       "bytes tasks may use on this worker; `auto` = min(machine, worker cgroup limit) − reserve − the worker's "
       "own footprint (main process, pool children), measured once a second and logged with a breakdown. "
       "`--memory-budget` overrides it", "6GiB",
       airflow_doc="Bytes this Celery worker may give to tasks. 'auto': the worker's memory cgroup limit, or the "
       "machine's memory, minus a reserve and the worker's own measured footprint. Size tasks against it, not "
       "against worker_concurrency."),
    _s("reserve", size, None, "max(256 MiB, 3 %)", "string",
       "kept back from `auto` for the kernel, page cache and slack", "1GiB"),
    _s("default_memory", memory, None, "unset", "string",
       "spec for tasks that declare none; unset means accounted but not limited", "512MiB",
       airflow_doc="Memory of tries whose task declares none (unset: they are accounted, not limited)."),
    # Checked where the mode is chosen (oomless.enforce.modes.choose_mode): a mode that is not one
    # stops the worker as EnforcementUnavailable, as one that cannot work here does.
    _s("enforcement", text, "auto", '`"auto"`', "string",
       "`auto`, `cgroup`, `watchdog` or `off`; a mode named explicitly that cannot work stops the worker from "
       "starting", "cgroup",
       airflow_doc="How limits are enforced: 'cgroup' (a memory cgroup per pool slot; exact, needs a writable "
       "cgroup), 'watchdog' (polls /proc every poll_interval; works in containers), 'off', or 'auto' (cgroup "
       "where possible). `oomless doctor` tells which one this host supports."),
    _s("poll_interval", poll_interval, 0.005, "`0.005`", "float",
       "watchdog poll interval, seconds", "0.005"),
    _s("gc_freeze", flag, True, "`True`", "boolean",
       "freeze the worker's heap before the pool forks, and build there what each child would build alone "
       "(billiard's C parser), so pool children copy far less of it (24 children: footprint 775 → 240 MiB)",
       "True"),
    _s("malloc_trim", flag, True, "`True`", "boolean",
       "after a task that leaves its pool child 4 MiB or more above where it was, give the C heap's free "
       "memory back (`malloc_trim`; 24 children: footprint 786 → ~430 MiB)", "True"),
    _s("leftovers", leftovers, "kill", '`"kill"`', "string",
       "processes a task leaves running when it returns are killed (`\"keep\"`: left alone, charged to no task)",
       "kill"),
    _s("admission", flag, True, "`True`", "boolean",
       "start a task only when its request fits the budget left", "True"),
    _s("max_waiting", count(1), None, "pool size", "integer",
       "tasks that cannot fit held before the worker stops fetching", "4"),
    _s("backfill_window", seconds, 60, "`60`", "float",
       "seconds a task that cannot fit lets others pass it, at most", "60"),
    _s("give_back_after", seconds, 30, "`30`", "float",
       "seconds a task that cannot fit waits before it goes back to the broker (not while its queue there has "
       "a backlog)", "30"),
    _s("infeasible", infeasible, "fail", '`"fail"`', "string",
       "or `\"queue:<name>\"`: re-route requests larger than the budget there, once", "queue:bigmem"),
    _s("max_evictions", count(0), 3, "`3`", "integer",
       "requeues after an eviction for node memory pressure, then `EvictedForMemoryPressure`", "3",
       airflow_doc="Times a Celery task is requeued after an eviction for node memory pressure (Airflow tries "
       "are not requeued: the try fails and Airflow's retries apply)."),
    _s("eviction_margin", size, "100MiB", "`100MiB`", "string",
       "evict when less than this is available to the worker", "100MiB"),
    _s("history", history, None, "unset", "string",
       "record every attempt: `\"default\"` (an SQLite file under `$XDG_STATE_HOME/oomless/`) or an SQLAlchemy "
       "URL (e.g. `postgresql+psycopg://…`). Written in batches by a thread, never on the task path; a store "
       "that is down costs a warning, not a task", "postgresql+psycopg://oomless@db/oomless"),
    _s("learned", flag, False, "`False`", "boolean",
       "tasks that declare no memory get what `oomless recommend` says (needs `oomless_history`)", "True",
       airflow_doc="Tries whose task declares no memory get the size learned from the history of that DAG task "
       "(set by the scheduler's executor, needs history; memory('auto') asks for it per task)."),
    _s("metrics_port", port, None, "unset", "integer",
       "serve Prometheus metrics on this port (`0`: any free port)", "9894"),
    _s("metrics_address", text, "127.0.0.1", "`127.0.0.1`", "string",
       "the metrics server's address", "0.0.0.0"),
    _s("offload", offload, None, "unset", "string",
       "claim check: `True` (a local directory) or a shared fsspec URL (`s3://bucket/claims`); arguments and "
       "results over the threshold travel by reference", "s3://bucket/claims", airflow=False),
    _s("offload_threshold", size, "1MiB", "`1MiB`", "string",
       "values above this go to the claim store", "1MiB",
       airflow=False, zero_is_default=True),
    _s("offload_ttl", long_seconds, 604800, "`604800`", "float",
       "seconds an argument stays in the store (results go when forgotten or expired)", "7d",
       airflow=False, zero_is_default=True),
    _s("offload_sweep_interval", long_seconds, 3600, "`3600`", "float",
       "seconds between a worker's sweeps of the store", "1h",
       airflow=False, zero_is_default=True),
    _s("max_message_size", size, None, "by broker", "string",
       "without a store, task messages over this are refused before they are sent: RabbitMQ 16 MiB, Redis "
       "128 MiB, SQS 192 KiB", "16MiB",
       airflow=False, zero_is_default=True),
    _s("plugins", names, (), "none", "string",
       "import paths of `oomless.celery.plugin.Plugin` classes the worker builds (the Airflow integration "
       "adds its own)", "mypkg.plugins:Audit", airflow=False),
)

#: name -> Setting
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def read(conf: Mapping[str, Any], name: str) -> Any:
    """The parsed value of setting ``name`` (without the prefix) in ``conf``."""
    return BY_NAME[name].read(conf)
