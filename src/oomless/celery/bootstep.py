"""The worker bootstep that makes a Celery worker governed.

``create`` runs while the worker is built, before the pool forks: it reads the
settings, picks the enforcement mode, prepares the slots (cgroups), gives
every task the governed Request class, and validates every task's
``memory=``.  ``start`` starts the monitor thread.  Teardown happens on
``worker_shutdown`` (after the pool has drained, so tasks finishing during a
warm shutdown are still enforced) and, as a fallback, at interpreter exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
from typing import Any

from celery import bootsteps, signals
from celery.utils.imports import symbol_by_name

from ..admission import Admission
from ..enforce.modes import choose_mode, make_enforcer
from ..enforce.slots import SlotTable
from ..errors import EnforcementUnavailable, InvalidMemorySpec
from ..linux import cgroup
from ..spec import Memory
from ..units import format_size
from ..urls import redact
from . import child, control, governor  # noqa: F401  (control: registers the oomless_status command)
from .config import load_settings
from .gate import MemoryGate, install_gate
from .request import governed_request_cls

logger = logging.getLogger("oomless")

__all__ = ["GovernorStep", "isolating_pool", "task_spec"]


def task_spec(task: Any) -> Memory | None:
    """The spec a task declares with ``memory=`` (validated), or ``None``."""
    try:
        return Memory.coerce(getattr(task, "memory", None), what=f"memory= of task {task.name}")
    except InvalidMemorySpec as exc:
        raise InvalidMemorySpec(f"{exc} (in the declaration of task {task.name})") from None


def isolating_pool(pool_cls: Any) -> tuple[str, bool]:
    """The pool's short name, and whether it runs each task in a child process of its own (prefork or a subclass)."""
    from celery.concurrency.prefork import TaskPool as PreforkPool

    cls = symbol_by_name(pool_cls) if isinstance(pool_cls, str) else pool_cls
    name = getattr(cls, "__module__", str(cls)).rsplit(".", 1)[-1]
    return name, isinstance(cls, type) and issubclass(cls, PreforkPool)


class GovernorStep(bootsteps.StartStopStep):
    """Governs the worker's memory (see :mod:`oomless`)."""

    label = "oomless"
    # After the Pool step's create (its semaphore becomes the admission gate),
    # before its start (the pool forks after the slots exist).
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, memory_budget: str | None = None, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.memory_budget = memory_budget

    def create(self, w: Any) -> Any:
        app = w.app
        host = cgroup.detect()
        settings = load_settings(app.conf, host, self.memory_budget)
        pool_name, isolating = isolating_pool(w.pool_cls)
        choice = choose_mode(settings.enforcement, host, pool_name, isolating)
        for task in app.tasks.values():
            task._oomless_spec = task_spec(task)
            task.Request = governed_request_cls(symbol_by_name(task.Request))
            child.guard(task)
        size = max(int(w.concurrency or 1), int(getattr(w, "max_concurrency", None) or 0))
        table = SlotTable(size)
        enforcer = make_enforcer(choice, table, host, settings.poll_interval)
        try:
            enforcer.prepare()
        except OSError as exc:
            if settings.enforcement == choice.mode:
                raise EnforcementUnavailable(
                    f"oomless_enforcement={choice.mode} could not prepare slots: {exc}"
                ) from exc
            # auto: the host looked usable but the kernel said no; say so and fall back.
            try:
                enforcer.stop()
            except OSError as cleanup:
                logger.warning("oomless: could not remove partly made slot cgroups: %s", cleanup)
            host = dataclasses.replace(host, writable=False, reason=f"cgroup slots could not be made: {exc}")
            choice = choose_mode(settings.enforcement, host, pool_name, isolating)
            choice = dataclasses.replace(choice, warning=choice.warning or f"cgroup mode unavailable: {exc}")
            enforcer = make_enforcer(choice, table, host, settings.poll_interval)
            enforcer.prepare()
        enforcer.kill_leftovers = settings.kill_leftovers
        enforcer.node = str(w.hostname or "")
        if enforcer.node:
            enforcer.sweep_previous()
        gov = governor.Governor(settings, choice, enforcer, children_report=isolating)
        gov.limit_source, gov._limit = functools.partial(cgroup.current_limit, host), host.limit
        governor.current = gov
        for path in settings.plugins:
            plugin = symbol_by_name(path)()
            plugin.setup(app, gov)
            gov.add_plugin(plugin)
        gov.gate = self._gate(w, gov)
        enforcer.configure_pressure(
            settings.budget.bytes if gov.gate is not None else None, settings.eviction_margin, host
        )
        logger.info(
            "oomless: governing %d slots; budget %s%s (%s); enforcement %s (%s)",
            size,
            "at most " if settings.budget.auto else "",
            format_size(settings.budget.bytes),
            settings.budget.source + (", measured once the pool is up" if settings.budget.auto else ""),
            choice.mode,
            choice.reason,
        )
        for warning in (choice.warning, settings.budget.warning):
            if warning:
                logger.warning("oomless: %s", warning)
        atexit.register(gov.shutdown)
        if settings.gc_freeze:
            child.share_with_children()
        return gov

    @staticmethod
    def _gate(w: Any, gov: governor.Governor) -> MemoryGate | None:
        """The admission gate in place of Celery's slot semaphore, when the pool uses one."""
        settings = gov.settings
        uses_semaphore = getattr(w, "semaphore", None) is not None and w.process_task == w._process_task_sem
        if not settings.admission or not uses_semaphore:
            logger.info(
                "oomless: admission by memory is off (%s)",
                "oomless_admission=False" if not settings.admission else "this pool does not use Celery's semaphore",
            )
            return None
        slots = int(w.min_concurrency or w.concurrency or 1)
        adm = Admission(
            settings.budget.bytes, slots, settings.backfill_window, settings.give_back_after
        )
        driver = w.app.connection_for_read().transport.driver_type
        gate = MemoryGate(adm, settings.max_waiting or slots, higher_priority_first=driver == "amqp", refuse=gov.refuse)
        install_gate(w, gate)
        logger.info(
            "oomless: admission by memory: %d slots, budget %s; at most %d waiting that cannot fit; "
            "backfill window %g s; give back after %s",
            slots, format_size(adm.budget), gate.max_waiting, adm.backfill_window,
            f"{adm.give_back_after:g} s" if adm.give_back_after else "never",
        )
        return gate

    def start(self, w: Any) -> None:
        gov = governor.current
        if gov is not None:
            gov.enforcer.start()
            port = gov.settings.metrics_port
            if port is not None and gov.metrics is None:
                from .metrics import WorkerMetrics

                gov.metrics = WorkerMetrics(gov, w.hostname)
                try:
                    gov.metrics.serve(port, gov.settings.metrics_address)
                except OSError as exc:  # the port is taken: the worker runs on, without metrics
                    logger.error("oomless: cannot serve metrics on %s:%s: %s; set oomless_metrics_port to a free "
                                 "port (or 0 for any)", gov.settings.metrics_address, port, exc)
                    gov.metrics = None
                if gov.metrics is not None and gov.gate is not None:
                    gov.gate.on_admitted = gov.metrics.observe_wait
            url = gov.settings.history
            if url is not None and gov.recorder is None:
                from ..history import Recorder
                from ..history.pss import PssSampler
                from ..history.store import Store

                # The store is opened (and migrated) by the recorder's thread, never here.
                gov.recorder = Recorder(lambda: Store(url))
                gov.pss = PssSampler(gov.enforcer.table)
                if gov.settings.learned:
                    from ..history.learned import Learned

                    # A refresh forgets the per-name specs the requests cached, so they pick it up.
                    gov.learned = Learned(lambda: Store(url), on_update=gov.task_specs.clear)
                    gov.learned.start()
                logger.info("oomless: recording every attempt in %s", redact(url))

    def register_with_event_loop(self, w: Any, hub: Any) -> None:
        """On every (re)connection: the kill notices and the gate's timer join the event loop."""
        gov = governor.current
        if gov is not None:
            gov.watch_kills(hub)
            if gov.gate is not None:
                gov.gate.register(hub, w.consumer)
            gov.watch_budget(hub)

    def stop(self, w: Any) -> None:
        """Nothing: enforcement must outlive the pool's drain (see module docstring)."""

    def terminate(self, w: Any) -> None:
        """Nothing, as for :meth:`stop`."""


@signals.worker_shutdown.connect(weak=False)
def _on_worker_shutdown(**_: Any) -> None:
    gov = governor.current
    if gov is not None:
        gov.shutdown()
