"""A worker's settings, read from a Celery app's configuration (every key optional).

Each key is declared once, with its parser, default and meaning, in
:mod:`oomless.settings` (README's configuration table is checked
against it); this module combines them into the :class:`Settings` of one
worker: the budget (with ``--memory-budget`` overriding ``oomless_budget``),
the default memory spec, and the checks that span two keys.  A value that
cannot be used raises :class:`~oomless.errors.InvalidConfiguration` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..budget import Budget, compute_budget
from ..errors import InvalidConfiguration
from ..linux import proc
from ..linux.cgroup.host import CgroupHost
from ..settings import read
from ..spec import Memory

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    """One worker's settings, parsed (the defaults live in :mod:`oomless.settings`)."""

    budget: Budget
    default_memory: Memory | None
    enforcement: str
    poll_interval: float
    admission: bool
    max_waiting: int | None  # None: the pool size
    backfill_window: float
    give_back_after: float | None  # None: never
    infeasible_queue: str | None  # None: fail
    max_evictions: int
    eviction_margin: int
    plugins: tuple[str, ...]
    history: str | None  # SQLAlchemy URL of the history store
    learned: bool  # give tasks that declare no memory the recommended spec
    metrics_port: int | None  # Prometheus metrics: off unless set (0: any free port)
    metrics_address: str
    kill_leftovers: bool  # oomless_leftovers="kill"
    gc_freeze: bool
    malloc_trim: bool


def load_settings(conf: Any, host: CgroupHost, cli_budget: str | None = None) -> Settings:
    """Read and validate the ``oomless_*`` keys of a Celery config mapping."""
    # The budget's arithmetic parses both keys (the reserve only for ``auto``) and names the one it refuses.
    if cli_budget is not None:
        budget = compute_budget(cli_budget, None, proc.mem_total(), host.limit, configured_by="--memory-budget")
    else:
        budget = compute_budget(
            conf.get("oomless_budget") or "auto", conf.get("oomless_reserve"), proc.mem_total(), host.limit
        )
    history = read(conf, "history")
    learned = read(conf, "learned")
    if learned and history is None:
        raise InvalidConfiguration(
            "oomless_learned", "oomless_learned=True needs the history it learns from: set oomless_history too "
            "('default' for the SQLite file, or an SQLAlchemy URL)"
        )
    default: Memory | None = read(conf, "default_memory")
    return Settings(
        budget,
        default,
        read(conf, "enforcement"),
        read(conf, "poll_interval"),
        admission=read(conf, "admission"),
        max_waiting=read(conf, "max_waiting"),
        backfill_window=read(conf, "backfill_window"),
        give_back_after=read(conf, "give_back_after") or None,
        infeasible_queue=read(conf, "infeasible"),
        max_evictions=read(conf, "max_evictions"),
        eviction_margin=read(conf, "eviction_margin"),
        plugins=read(conf, "plugins"),
        history=history,
        learned=learned,
        metrics_port=read(conf, "metrics_port"),
        metrics_address=read(conf, "metrics_address"),
        kill_leftovers=read(conf, "leftovers"),
        gc_freeze=read(conf, "gc_freeze"),
        malloc_trim=read(conf, "malloc_trim"),
    )
