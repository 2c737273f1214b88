"""The worker main process's governor: the spec each task gets, infeasibility, per-task reports.

One :class:`Governor` per worker process, created by the bootstep before the
pool forks (pool children inherit it and use only the enforcer's child half).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..budget import Footprint, breakdown
from ..enforce.base import Enforcer, KillReport
from ..enforce.modes import Choice
from ..errors import InfeasibleMemoryRequest
from ..history.attempt import Attempt
from ..linux import proc
from ..spec import Memory
from ..units import format_size
from .config import Settings
from .republish import INPUT_SIZE, header_int

if TYPE_CHECKING:
    from ..history.learned import Learned
    from ..history.pss import PssSampler
    from ..history.recorder import Recorder
    from .gate import MemoryGate
    from .metrics import WorkerMetrics

logger = logging.getLogger("oomless")

__all__ = ["Governor", "Plugin", "current", "EVENT"]

#: Celery event sent when a task ends, with its memory figures.
EVENT = "task-memory"

#: Seconds over which the largest (settled) footprint measured is the one the budget takes out.
FOOTPRINT_WINDOW = 10.0
#: A footprint sample is the smallest measured over this many seconds (transients settle).
FOOTPRINT_SETTLE = 3.0

current: Governor | None = None


def summary(outcome: str, peak: int | None, spec: Memory, mode: str) -> str:
    """``<outcome>: peak …, limit …, request … [<mode>]`` (the log line's tail, and the event's ``memory``)."""
    return "{}: peak {}, limit {}, request {} [{}]".format(
        outcome,
        "unknown" if peak is None else format_size(peak),
        format_size(spec.limit),
        format_size(spec.request) if spec.request is not None else "none",
        mode,
    )


def log_finished(name: str, task_id: str, outcome: str, peak: int | None, spec: Memory, mode: str) -> None:
    """The one line per task: ``oomless: <name>[<id>] <outcome>: peak …, limit …, request … [<mode>]``."""
    if logger.isEnabledFor(logging.INFO):
        logger.info("oomless: %s[%s] %s", name, task_id, summary(outcome, peak, spec, mode))


def _events_on(req: Any) -> bool:
    """Whether ``req.send_event`` would send (Celery's own test, without building the event)."""
    eventer = getattr(req, "_eventer", None)
    return bool(eventer is not None and eventer.enabled and req.task.send_events)


class Plugin:
    """Hooks through which an integration (Airflow) follows the governed worker's decisions.

    Named in ``oomless_plugins`` (import paths); every hook is optional and must
    not raise.  ``setup`` runs in the main process before the pool forks.
    """

    def setup(self, app: Any, governor: Governor) -> None:
        """The worker is being built (its tasks exist; the pool has not forked)."""

    def received(self, req: Any) -> None:
        """A governed request was created (main thread), its spec resolved."""

    def before_kill(self, report: KillReport) -> None:
        """The monitor thread is about to kill ``report.task_id`` (quick, no network I/O)."""

    def killed(self, req: Any, report: KillReport) -> None:
        """A kill that spared the task's own process happened (event loop)."""

    def refused(self, req: Any, exc: BaseException) -> None:
        """``req`` was refused before it started (malformed or infeasible spec)."""

    def ended(self, req: Any, outcome: str, report: KillReport | None) -> None:
        """``req`` ended (ok, failed, memory-killed, evicted, lost, retry)."""

    def attempt_fields(self, req: Any) -> dict[str, Any]:
        """Extra :class:`~oomless.history.Attempt` fields for ``req`` (e.g. Airflow's ids)."""
        return {}


class Governor:
    """State and decisions of one governed worker (main process)."""

    def __init__(self, settings: Settings, choice: Choice, enforcer: Enforcer, children_report: bool = False) -> None:
        self.settings = settings
        # Pool children log the line of every task they finish (see child.py);
        # the main process logs only what they cannot: kills and lost children.
        self.children_report = children_report
        self.choice = choice
        self.enforcer = enforcer
        self.budget = settings.budget.bytes
        #: the largest budget measured since start (before the first measurement: the configured one)
        self.capacity = settings.budget.bytes
        self._measured = False
        #: reads the worker's cgroup limit now (set by the bootstep); the budget follows its changes
        self.limit_source: Callable[[], int | None] | None = None
        self._limit: int | None = None
        self._limit_change: tuple[int | None, int | None] | None = None
        self._stopped = False
        #: the admission gate, when the pool uses Celery's slot semaphore (prefork)
        self.gate: MemoryGate | None = None
        #: task name -> its spec when the message carries none (most messages)
        self.task_specs: dict[str, Memory] = {}
        self.plugins: list[Plugin] = []
        #: the history recorder, when ``oomless_history`` is set (started by the bootstep)
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
        #: the worker's footprint at the last measurement (see :meth:`refresh_budget`)
        self.footprint: Footprint | None = None
        self._footprints: deque[tuple[float, int]] = deque()  # (when, footprint total) over FOOTPRINT_WINDOW
        self._samples: deque[tuple[float, int]] = deque()  # (when, settled footprint) over FOOTPRINT_WINDOW
        self._oom_counts: deque[tuple[float, int]] = deque(maxlen=4096)  # (wall time, kernel OOM kills)
        self._said_budget: int | None = None  # the budget in the last breakdown logged
        self._said_slots = 0  # the most pool children a logged breakdown counted
        self._budget_timer: Any = None

    def _watch_kernel(self, now: float) -> None:
        """Note the machine's kernel OOM kill count (once a second), to know later whether a pool
        child that died of SIGKILL may have been the kernel's victim (:meth:`kernel_killed`)."""
        count = proc.oom_kills()
        if count is None:
            return
        seen = self._oom_counts
        if not seen or seen[-1][1] != count:
            seen.append((time.time(), count))

    def kernel_killed(self, started: float | None) -> bool:
        """Whether the kernel's OOM killer killed anything on this machine since ``started`` (wall
        time; ``None``: since the last second), judged from the counts :meth:`_watch_kernel` noted."""
        now = proc.oom_kills()
        if now is None or not self._oom_counts:
            return False
        since = (started or time.time()) - 1.0
        before = [count for when, count in self._oom_counts if when <= since]
        return now > (before[-1] if before else self._oom_counts[0][1])

    @property
    def headroom(self) -> int:
        """What the slots' shared limit leaves free in the worker: half the reserve, at least the
        eviction margin (so the kernel pauses the slots before the margin is crossed)."""
        return max(self.settings.eviction_margin + 16 * 2**20, self.settings.budget.reserve // 2)

    def watch_budget(self, hub: Any) -> None:
        """Measure the footprint now and once a second on the worker's event loop."""
        if self._budget_timer is not None:
            self._budget_timer.cancel()  # a reconnection registers again
        self.refresh_budget()
        self._budget_timer = hub.call_repeatedly(1.0, self.refresh_budget)

    def refresh_budget(self, now: float | None = None) -> int:
        """Measure the worker's footprint and move the budget with it (event loop, once a second).

        The budget takes out the largest footprint of the last
        :data:`FOOTPRINT_WINDOW` seconds, each settled over
        :data:`FOOTPRINT_SETTLE` seconds: it shrinks within seconds when the
        worker grows, and grows back only once the worker has stayed smaller.  A
        breakdown is logged when the budget moves by max(64 MiB, 2 %).
        Returns the budget.
        """
        now = time.monotonic() if now is None else now
        self._follow_limit()
        try:
            fp = self.enforcer.footprint()
        except OSError as exc:
            logger.warning("oomless: could not measure the worker's footprint (%s); the budget stays %s",
                           exc, format_size(self.budget))
            return self.budget
        self.footprint = fp
        self._watch_kernel(now)
        try:
            self.enforcer.fit_slots(self.headroom)
        except OSError as exc:
            logger.warning("oomless: could not limit the slots together: %s", exc)
        # A sample is the smallest footprint of the last FOOTPRINT_SETTLE seconds (memory of a killed
        # task still being freed is no one's footprint); the budget takes out the largest sample of
        # the last FOOTPRINT_WINDOW seconds.
        window = self._footprints
        window.append((now, fp.total))
        while window and window[0][0] < now - FOOTPRINT_WINDOW:
            window.popleft()
        samples = self._samples
        samples.append((now, min(total for when, total in window if when >= now - FOOTPRINT_SETTLE)))
        while samples and samples[0][0] < now - FOOTPRINT_WINDOW:
            samples.popleft()
        live = self.settings.budget.live(max(total for _, total in samples))
        self.capacity = live if not self._measured else max(self.capacity, live)
        self._measured = True
        if live != self.budget:
            self.budget = live
            if self.enforcer.budget is not None:
                self.enforcer.budget = live
            if self.gate is not None:
                self.gate.set_budget(live)
        said = self._said_budget
        if self._limit_change is not None:
            old, new = self._limit_change
            self._limit_change = None
            self._said_budget, self._said_slots = live, max(self._said_slots, fp.slots)
            logger.warning(
                "oomless: the worker's cgroup limit changed from %s to %s: %s", _limit_text(old), _limit_text(new),
                breakdown(self.settings.budget, live, fp),
            )
            if self.settings.budget.warning:
                logger.warning("oomless: %s", self.settings.budget.warning)
        elif said is None or abs(live - said) >= max(64 * 2**20, said // 50) or fp.slots > self._said_slots:
            self._said_budget, self._said_slots = live, max(self._said_slots, fp.slots)
            logger.info("oomless: %s", breakdown(self.settings.budget, live, fp))
            budget = self.settings.budget
            if not budget.auto and budget.bytes + fp.total > budget.ceiling:
                logger.warning(
                    "oomless: the budget of %s and the worker's own footprint of %s do not fit the %s: tasks "
                    "within their requests can exhaust it; lower the budget, or leave it to auto",
                    format_size(budget.bytes), format_size(fp.total), budget.whence,
                )
        return live

    def _follow_limit(self) -> None:
        """Re-read the worker's cgroup limit; when it changed, rebase the budget on it (admission
        shrinks or grows; running tasks are not killed for it, see the eviction rules)."""
        if self.limit_source is None:
            return
        try:
            limit = self.limit_source()
        except (OSError, ValueError):
            return
        if limit == self._limit:
            return
        self._limit_change, self._limit = (self._limit, limit), limit
        self.settings = dataclasses.replace(self.settings, budget=self.settings.budget.rebased(proc.mem_total(), limit))
        self.enforcer.follow_limit(limit)
        self._footprints.clear()
        self._samples.clear()
        self._measured = False  # the capacity (largest budget seen) starts again from the new ceiling

    def add_plugin(self, plugin: Plugin) -> None:
        self.plugins.append(plugin)
        self.enforcer.before_kill.append(plugin.before_kill)

    @property
    def mode(self) -> str:
        return self.enforcer.mode

    def check_feasible(self, task_name: str, task_id: str, spec: Memory) -> None:
        """Refuse a spec larger than any budget this worker has offered (``capacity``): one that only
        exceeds the budget now (the footprint grew) waits, and is given back if it waits too long."""
        need = max(spec.limit or 0, spec.request or 0)
        if need > self.capacity:
            raise InfeasibleMemoryRequest(task_name, task_id, need, self.capacity)

    def finished(self, req: Any, outcome: str, report: KillReport | None = None) -> None:
        """The task's one log line (unless its pool child wrote it) and its memory event."""
        spec: Memory = req._oomless_spec
        peak: int | None = report.peak if report is not None else None
        self.counts[outcome] += 1
        found = None
        wanted = (
            outcome != "ok" or not self.children_report or _events_on(req)
            or self.recorder is not None or self.metrics is not None
        )
        if report is None and outcome != "lost" and wanted:
            found = self._finished_in_child(req)
            if found is not None:
                peak = found.peak
        # A pool child logs every task it finishes; a killed or lost one never finishes.
        child_logged = self.children_report and report is None and (outcome == "ok" or found is not None)
        if not child_logged:
            log_finished(req.name, req.id, outcome, peak, spec, self.mode)
        if _events_on(req):
            req.send_event(
                EVENT, outcome=outcome, peak=peak, limit=spec.limit, request=spec.request, mode=self.mode,
                memory=summary(outcome, peak, spec, self.mode),
            )
        if self.recorder is not None:
            self.record(req, outcome, peak, found.input_size if found is not None else None)
        if self.metrics is not None and peak is not None:
            self.metrics.observe_peak(req.name, peak)
        for plugin in self.plugins:
            plugin.ended(req, outcome, report)

    def record(self, req: Any, outcome: str, peak: int | None, input_size: int | None = None) -> None:
        """One attempt into the history (an append to the recorder's buffer; no I/O here).

        ``input_size``: what the task reported from its pool child; else the caller's hint.
        """
        assert self.recorder is not None
        spec: Memory = req._oomless_spec
        if input_size is None:
            input_size = header_int(req, INPUT_SIZE, -1, high=2**60)
            input_size = None if input_size < 0 else input_size
        now = time.time()
        started = req.time_start or now
        extra: dict[str, Any] = {}
        for plugin in self.plugins:
            extra.update(plugin.attempt_fields(req))
        self.recorder.record(Attempt(
            task_name=req.name, task_id=req.id, outcome=outcome, started_at=started,
            duration=now - started if req.time_start else None, request=spec.request, limit=spec.limit,
            peak_rss=peak, peak_pss=self.pss.take(req.id) if self.pss is not None else None,
            input_size=input_size, mode=self.mode, worker_host=req.hostname, worker_pid=req.worker_pid, **extra,
        ))

    def _finished_in_child(self, req: Any) -> Any:
        pid = req.worker_pid
        index = self.enforcer.table.index_of(pid) if pid is not None else None
        return None if index is None else self.enforcer.table.finished(index, req.id)

    def refuse(self, req: Any) -> None:
        """The gate's answer to a request refused before it starts (malformed or infeasible spec)."""
        req._oomless_refuse()

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
        that job itself: ``ApplyResult._set`` is what billiard's own
        ``mark_as_worker_lost`` calls (checked against billiard 4.2 and 4.3).
        Jobs not yet acknowledged by their pool child are left to the
        ``WorkerLostError`` path, which reaches the same failure.
        """
        from celery.worker.state import active_requests

        for task_id in self.enforcer.killed_task_ids():
            req = next((r for r in active_requests if r.id == task_id), None)
            job = req._apply_result() if req is not None and req._apply_result is not None else None
            if req is None:
                continue
            peek = self.enforcer.peek_kill(task_id)
            if peek is not None and peek.spared:
                # Only the task's subprocesses died: the task goes on and ends by itself.
                for plugin in self.plugins:
                    plugin.killed(req, peek)
                continue
            if job is None or job.ready() or not getattr(job, "_accepted", False):
                continue
            report = self.enforcer.claim_kill(task_id, req.worker_pid)
            if report is None:
                continue
            req._oomless_kill = report
            from .request import memory_exceeded_einfo

            job._set(None, (False, memory_exceeded_einfo(req, report)))

    def shutdown(self) -> None:
        if not self._stopped:
            self._stopped = True
            hub = getattr(self, "_hub", None)
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


def _limit_text(limit: int | None) -> str:
    return "none" if limit is None else format_size(limit)
