"""The governor of one worker: it builds, starts and owns everything oomless runs in the worker.

One :class:`Governor` per worker process, built by :meth:`Governor.build` while
Celery builds the worker (before the pool forks: pool children inherit it and
use only the enforcer's child half).  It owns the enforcement mode and its
enforcer, the live budget, the admission gate, the plugins, and, once started,
the history recorder, learned sizes and metrics.  The bootstep
(:mod:`oomless.celery.bootstep`) only adapts it to Celery's worker.

What is not here: what happens to one task message (:mod:`oomless.celery.request`),
what a task's end leaves behind (:mod:`oomless.celery.ends`), the pool child's
half (:mod:`oomless.celery.child`), the budget's measurement
(:mod:`oomless.celery.footprint`).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.utils.imports import symbol_by_name

from ..budget import Footprint
from ..enforce.base import Enforcer
from ..enforce.modes import Choice, prepared_enforcer
from ..enforce.reports import KillReport
from ..enforce.slots import SlotTable
from ..errors import InfeasibleMemoryRequest
from ..linux import cgroup
from ..spec import Memory
from ..units import format_size
from ..urls import redact
from . import compat, ends
from .config import Settings, load_settings
from .failures import memory_exceeded_einfo
from .footprint import LiveBudget
from .gate import MemoryGate
from .plugin import Plugin

if TYPE_CHECKING:
    from ..history.learned import Learned
    from ..history.pss import PssSampler
    from ..history.recorder import Recorder
    from .metrics import WorkerMetrics

logger = logging.getLogger(__name__)

__all__ = ["Governor", "Plugin", "current", "isolating_pool"]

#: The governor of this process (set by the bootstep; inherited by pool children).
current: Governor | None = None


def isolating_pool(pool_cls: Any) -> tuple[str, bool]:
    """The pool's short name, and whether it runs each task in a child process of its own (prefork or a subclass)."""
    from celery.concurrency.prefork import TaskPool as PreforkPool

    cls = symbol_by_name(pool_cls) if isinstance(pool_cls, str) else pool_cls
    name = getattr(cls, "__module__", str(cls)).rsplit(".", 1)[-1]
    return name, isinstance(cls, type) and issubclass(cls, PreforkPool)


class Governor:
    """State and decisions of one governed worker (main process)."""

    def __init__(self, settings: Settings, choice: Choice, enforcer: Enforcer, children_report: bool = False) -> None:
        self.settings = settings
        # Pool children log the line of every task they finish (see child.py);
        # the main process logs only what they cannot: kills and lost children.
        self.children_report = children_report
        self.choice = choice
        self.enforcer = enforcer
        #: the budget, following the worker's footprint and cgroup limit
        self.live = LiveBudget(settings.budget, enforcer, settings.eviction_margin, self._budget_moved)
        #: the admission gate, when the pool uses Celery's slot semaphore (prefork)
        self.gate: MemoryGate | None = None
        #: task name -> its spec when the message carries none (most messages)
        self.task_specs: dict[str, Memory] = {}
        self._capped: set[str] = set()  # task names whose learned spec was capped (said once each)
        self.plugins: list[Plugin] = []
        #: the history recorder, when ``oomless_history`` is set (started by :meth:`start`)
        self.recorder: Recorder | None = None
        #: recommended specs for tasks that declare none (``oomless_learned``)
        self.learned: Learned | None = None
        #: Prometheus metrics (``oomless_metrics_port``)
        self.metrics: WorkerMetrics | None = None
        #: samples running tasks' PSS for the history (started with the recorder)
        self.pss: PssSampler | None = None
        #: tasks ended per outcome (ok, failed, memory-killed, evicted, ...), plus "escalated"
        #: (memory-killed tasks republished with more memory); read by ``top`` and the metrics
        self.counts: Counter[str] = Counter()
        self._hub: Any = None
        self._stopped = False

    # -- assembly ---------------------------------------------------------------------------
    @classmethod
    def build(cls, w: Any, memory_budget: str | None = None,
              govern_task: Callable[[Any], None] | None = None) -> Governor:
        """The governor of the Celery worker ``w`` being built (after the Pool step's ``create``,
        before the pool forks), in this order: settings; ``govern_task(task)`` for each of the app's
        tasks (its ``memory=`` is checked before any slot is made); enforcement mode and slots;
        :data:`current` set; plugins set up (they may read it); the admission gate."""
        global current
        app = w.app
        host = cgroup.detect()
        settings = load_settings(app.conf, host, memory_budget)
        if govern_task is not None:
            for task in app.tasks.values():
                govern_task(task)
        pool = isolating_pool(w.pool_cls)
        size = max(int(w.concurrency or 1), int(getattr(w, "max_concurrency", None) or 0))
        choice, enforcer = prepared_enforcer(
            settings.enforcement, host, *pool, SlotTable(size), settings.poll_interval
        )
        enforcer.kill_leftovers = settings.kill_leftovers
        enforcer.node = str(w.hostname or "")
        if enforcer.node:
            enforcer.sweep_previous()
        gov = current = cls(settings, choice, enforcer, children_report=pool[1])
        gov.live.follow_limit(functools.partial(cgroup.current_limit, host), host.limit)
        for path in settings.plugins:
            plugin = symbol_by_name(path)()
            plugin.setup(app, gov)
            gov.add_plugin(plugin)
        gov.gate = MemoryGate.for_worker(w, settings, gov.refuse)
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
        return gov

    def start(self, hostname: str | None) -> None:
        """The worker starts: the monitor thread, and metrics, history and learned sizes if configured."""
        self.enforcer.start()
        settings = self.settings
        if settings.metrics_port is not None and self.metrics is None:
            from .metrics import WorkerMetrics

            metrics = WorkerMetrics(self, hostname)
            try:
                metrics.serve(settings.metrics_port, settings.metrics_address)
            except OSError as exc:  # the port is taken: the worker runs on, without metrics
                logger.error("oomless: cannot serve metrics on %s:%s: %s; set oomless_metrics_port to a free "
                             "port (or 0 for any)", settings.metrics_address, settings.metrics_port, exc)
            else:
                self.metrics = metrics
                if self.gate is not None:
                    self.gate.on_admitted = metrics.observe_wait
        url = settings.history
        if url is not None and self.recorder is None:
            from ..history import Recorder
            from ..history.pss import PssSampler
            from ..history.store import Store

            # The store is opened (and migrated) by the recorder's thread, never here.
            self.recorder = Recorder(lambda: Store(url))
            self.pss = PssSampler(self.enforcer.table)
            if settings.learned:
                from ..history.learned import Learned
                from ..history.store import open_reader

                # A refresh forgets the per-name specs the requests cached, so they pick it up.
                self.learned = Learned(lambda: open_reader(url), on_update=self.task_specs.clear)
                self.learned.start()
            logger.info("oomless: recording every attempt in %s", redact(url))

    def register(self, hub: Any, consumer: Any) -> None:
        """On every (re)connection of the worker's event loop: kill notices, the gate's timer, the
        budget's measurement."""
        self.watch_kills(hub)
        if self.gate is not None:
            self.gate.register(hub, consumer)
        self.live.watch(hub)

    # -- the budget -------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        """The budget now (bytes)."""
        return self.live.bytes

    @property
    def capacity(self) -> int:
        """The largest budget this worker has offered: a larger request can never fit here."""
        return self.live.capacity

    @property
    def footprint(self) -> Footprint | None:
        """The worker's own footprint at the last measurement."""
        return self.live.footprint

    def _budget_moved(self, budget: int) -> None:
        if self.enforcer.budget is not None:
            self.enforcer.budget = budget
        if self.gate is not None:
            self.gate.set_budget(budget)

    def refresh_budget(self, now: float | None = None) -> int:
        """Measure the worker's footprint and move the budget with it (see :class:`LiveBudget`)."""
        return self.live.refresh(now)

    def kernel_killed(self, started: float | None) -> bool:
        """Whether the kernel's OOM killer killed anything on this machine since ``started``."""
        return self.live.kernel.killed_since(started)

    def add_plugin(self, plugin: Plugin) -> None:
        self.plugins.append(plugin)
        self.enforcer.before_kill.append(plugin.before_kill)

    @property
    def mode(self) -> str:
        return self.enforcer.mode

    def cap_learned(self, task_name: str, spec: Memory) -> Memory:
        """A learned spec larger than this worker can ever give is capped at its capacity, not refused:
        learning never makes a runnable task infeasible."""
        cap = self.capacity
        if (spec.limit or 0) <= cap and (spec.request or 0) <= cap:
            return spec
        if task_name not in self._capped:
            self._capped.add(task_name)
            logger.warning("oomless: %s: its learned memory %s is more than this worker can ever give (%s); it runs "
                           "with %s (said once per task)", task_name, spec, format_size(cap), format_size(cap))
        return Memory(request=None if spec.request is None else min(spec.request, cap),
                      limit=None if spec.limit is None else min(spec.limit, cap))

    def check_feasible(self, task_name: str, task_id: str, spec: Memory) -> None:
        """Refuse a spec larger than any budget this worker has offered (``capacity``): one that only
        exceeds the budget now (the footprint grew) waits, and is given back if it waits too long."""
        need = max(spec.limit or 0, spec.request or 0)
        if need > self.capacity:
            raise InfeasibleMemoryRequest(task_name, task_id, need, self.capacity)

    def finished(self, req: Any, outcome: str, report: KillReport | None = None) -> None:
        """``req`` ended: its slot and memory are freed first, so the next task starts before the
        bookkeeping and whoever reads the counters (metrics, status) never sees an ended task still
        running; then what its end leaves behind (:func:`oomless.celery.ends.ended`)."""
        self.release(req)
        ends.ended(self, req, outcome, report)

    def refused(self, req: Any, exc: BaseException) -> None:
        """``req`` was refused before it started (:func:`oomless.celery.ends.refused`)."""
        ends.refused(self, req, exc)

    def release(self, req: Any) -> None:
        """``req`` ended (or never ran): free its slot and memory in the admission gate, if any
        (again is harmless: the gate forgets a request once)."""
        if self.gate is not None:
            self.gate.finish(req)

    def refuse(self, req: Any) -> None:
        """The gate's answer to a request refused before it starts (malformed or infeasible spec)."""
        req.oomless_refuse()

    def watch_kills(self, hub: Any) -> None:
        """Have the worker's event loop fail killed tasks as soon as the monitor announces them."""
        self._hub = hub
        hub.add_reader(self.enforcer.notify_r, self.on_kill_notice)

    def on_kill_notice(self, *_: Any) -> None:
        """Fail each announced task now, instead of when billiard notices the dead pool child.

        billiard marks a job lost only when the pool's maintenance sees the
        child gone and, for accepted jobs, after ``worker_lost_wait``; vanilla
        Celery surfaces a killed child anywhere from 0.05 s to several seconds
        later.  The governor knows which job it killed and why, so it completes
        that job itself, as billiard's own ``mark_as_worker_lost`` does
        (:func:`oomless.celery.compat.fail_job`).
        Jobs not yet acknowledged by their pool child are left to the
        ``WorkerLostError`` path, which reaches the same failure.
        """
        from celery.worker.state import active_requests

        for task_id in self.enforcer.killed_task_ids():
            req = next((r for r in active_requests if r.id == task_id), None)
            if req is None:
                continue
            job = compat.pool_job(req)
            peek = self.enforcer.peek_kill(task_id)
            if peek is not None and peek.spared:
                # Only the task's subprocesses died: the task goes on and ends by itself.
                for plugin in self.plugins:
                    plugin.killed(req, peek)
                continue
            if job is None or job.ready() or not compat.job_accepted(job):
                continue
            report = self.enforcer.claim_kill(task_id, req.worker_pid)
            if report is None:
                continue
            req.oomless_kill = report
            compat.fail_job(job, memory_exceeded_einfo(req, report))

    def shutdown(self) -> None:
        """Stop the monitor, remove the slots, flush the history (once; after the pool drained)."""
        if not self._stopped:
            self._stopped = True
            hub = self._hub
            if hub is not None:
                try:
                    hub.remove(self.enforcer.notify_r)
                except Exception:  # the hub may already be closed at shutdown
                    pass
            self.enforcer.stop()
            if self.pss is not None:
                self.pss.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.recorder is not None:
                self.recorder.close()

