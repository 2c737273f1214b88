"""The enforcer protocol shared by the cgroup and watchdog modes.

An enforcer has two halves that live in different processes:

* the **main-process half** prepares slots before the pool forks, runs one
  monitor thread (no task code runs in the main process, so the thread never
  waits behind a task's allocation loop), kills a slot's tree on breach and
  files a :class:`KillReport` *before* it signals, so that when Celery later
  sees the pool child die the report is already there;
* the **pool-child half** joins the slot at birth and, around every task, sets
  the limit, resets and reads the peak, and publishes both in the
  :class:`~oomless.enforce.slots.SlotTable`.

A task's memory is what its process tree holds *above the slot's baseline at
task start*: pages the pool child shares copy-on-write with the worker, and
what earlier tasks left behind, are not charged to it.

A slot's processes are its task's, whatever they do: the pool child is a
child subreaper (a daemon that double-forks and calls ``setsid()`` stays its
descendant), puts :data:`SLOT_ENV` in its environment (every exec'd
descendant carries it), and kills what its task left running when the task
returns (``oomless_leftovers``).  When a pool child dies for any other reason,
the main process kills what is left of its tree (:meth:`Enforcer.sweep`)
before Celery requeues its message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..budget import Footprint
from ..linux import cgroup, proc
from ..linux.cgroup.host import CgroupHost
from ..linux.kill import kill_matching, kill_orphans, kill_tree
from ..linux.proc.memory import OwnMemory
from ..spec import Memory
from ..units import format_size
from .eviction import Use, choose_victim, group_pressure, pressure
from .slots import SlotState, SlotTable

logger = logging.getLogger(__name__)

__all__ = ["BoundedDict", "Enforcer", "KillReport", "NullEnforcer", "SLOT_ENV"]

#: Nice value of the monitor thread where the worker may raise its priority.
MONITOR_NICE = -10

#: Environment variable each pool child sets to ``<node name>/<worker pid>-<worker start>/<child pid>``;
#: its exec'd descendants inherit it, so they can be found after the pool child (or the worker) died.
SLOT_ENV = "OOMLESS_SLOT"


@dataclass(frozen=True)
class KillReport:
    """Proof that the governor killed a task for memory, filed before the kill."""

    task_id: str
    pid: int
    limit: int
    peak: int  # for an eviction: what the task used when it was evicted
    mode: str
    killed: tuple[int, ...] = field(default=())
    at: float = field(default_factory=time.time)
    reason: str = "limit"  # "limit": over its own limit; "evicted": node memory pressure
    request: int = 0
    detail: str = ""  # for an eviction: the pressure, in words
    spared: bool = False  # the pool child was spared; only its subprocesses were killed


class BoundedDict(OrderedDict):
    """A dict that forgets its oldest entries beyond ``maxlen`` (reports nobody claimed)."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def put(self, key: str, value: object) -> None:
        self[key] = value
        while len(self) > self.maxlen:
            self.popitem(last=False)


class Enforcer:
    """Base of the enforcement modes; ``mode`` names it in logs, events and errors."""

    mode = "off"
    #: Eviction for node memory pressure (see :mod:`oomless.enforce.eviction`); off until configured.
    budget: int | None = None
    eviction_margin = 0
    _group: tuple[int, str, int] | None = None  # (cgroup version, path, limit) of the worker
    _host: CgroupHost | None = None
    _signals: cgroup.GroupSignals | None = None  # cgroup v2: the worker group's PSI and events

    def __init__(self, table: SlotTable) -> None:
        self.table = table
        self._reports: BoundedDict = BoundedDict(4096)
        #: called with each report right before its kill (see :meth:`file_report`)
        self.before_kill: list[Callable[[KillReport], None]] = []
        self._thread: threading.Thread | None = None
        self.monitor_tid: int | None = None  # native thread id, for CPU accounting
        self._child_cost_seen = 0  # what an idle pool child held privately, last seen (footprint)
        self._stopping = threading.Event()
        # pool-child half: what the running task started from
        self._baseline = 0
        self._spare = False  # the running task's memory_scope is "subprocesses" (pool child half)
        self._limit: int | None = None
        self._seq = -1  # slot row sequence number the running task started at
        self.own = OwnMemory()  # the pool child's own /proc files
        #: kill the processes a task left running when it returns (``oomless_leftovers="kill"``)
        self.kill_leftovers = True
        self._worker_id = f"{os.getpid()}-{proc.start_time(os.getpid())}"
        #: the worker's node name (``celery@host``), set by the bootstep: what marks a run as this worker's
        self.node = ""
        # The monitor thread writes a killed task's id here; the worker's event
        # loop reads it and fails the task at once (see celery.governor).
        self.notify_r, self.notify_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- main process ---------------------------------------------------------
    def prepare(self) -> None:
        """Set slots up; called in the main process before the pool forks."""

    def start(self) -> None:
        """Start the monitor thread."""
        if self._thread is None and type(self).monitor is not Enforcer.monitor:
            self._thread = threading.Thread(target=self._run_monitor, name=f"oomless-{self.mode}", daemon=True)
            self._thread.start()

    def _run_monitor(self) -> None:
        self.monitor_tid = threading.get_native_id()
        logger.debug("oomless: %s monitor thread runs as tid %d", self.mode, self.monitor_tid)
        try:
            # Ahead of busy tasks on a loaded machine: a monitor that waits behind them cannot evict
            # before the kernel has to kill.  Needs CAP_SYS_NICE (root); else it keeps its nice value.
            os.setpriority(os.PRIO_PROCESS, self.monitor_tid, MONITOR_NICE)
        except OSError as exc:
            logger.debug("oomless: the monitor thread keeps its priority (%s)", exc)
        try:
            self.monitor()
        except Exception:  # the worker must hear about it, loudly, once
            logger.exception("oomless: the %s monitor thread crashed; tasks are no longer enforced", self.mode)

    def monitor(self) -> None:
        """The monitor thread's loop; returns when :meth:`stop` is called."""

    def stop(self) -> None:
        """Stop the monitor thread and remove what :meth:`prepare` made."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        for fd in (self.notify_r, self.notify_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def configure_pressure(self, budget: int | None, margin: int, host: CgroupHost | None = None) -> None:
        """Evict a task when the running tasks together use more than ``budget`` and one is over its
        request, or when less than ``margin`` is available to the worker (its own memory cgroup, when
        limited, or the machine).  ``budget`` ``None``: only measure (:meth:`footprint`)."""
        self.budget, self.eviction_margin = budget, margin
        self._host = host
        self.follow_limit(None if host is None else host.limit)
        if host is not None and host.version == 2 and host.path is not None and budget is not None:
            self._signals = cgroup.GroupSignals(host.path)

    def follow_limit(self, limit: int | None) -> None:
        """The worker's cgroup limit is ``limit`` (``None``: none); the governor says so when it changes."""
        host = self._host
        self._group = (host.version, host.path, limit) if host and host.version and host.path and limit else None

    def child_memory(self, index: int, state: SlotState) -> int | None:
        """The pool child's own memory in slot ``index`` (its baseline while a task runs), ``None`` if none.

        Here: its RSS above what it had when it claimed the slot (pages it still
        shares with the worker are the main process's); cgroup mode reads the slot.
        """
        try:
            rss = state.baseline if state.running else proc.rss(state.pid)
        except (FileNotFoundError, ProcessLookupError):
            return None
        return max(0, rss - self.table.born_rss(index))

    def footprint(self) -> Footprint:
        """Measure what the worker itself holds now (main process, any thread; a few file reads a slot).

        ``worker``: the unreclaimable memory of the worker's cgroup when it is
        limited, else of the machine (MemTotal − MemAvailable), less what the
        running tasks hold above their baselines.  ``growth``: pool children that
        have run no task yet are expected to reach the median of those that have
        (what they hold already is in ``children``), and a slot with no live
        child will get one that does (an autoscaled pool may start it whenever
        Celery's autoscaler decides, a replacement is on its way).
        """
        tasks, mine, fresh, ran, unstarted, idle = 0, 0, [], [], 0, []
        for index in range(self.table.size):
            state = self.table.read(index)
            if state.pid <= 0 or proc.exited(state.pid):
                unstarted += 1
                continue
            if state.running:
                tasks += max(0, self.usage(index, state) or 0)
            else:
                idle.append(state.pid)
            own = self.child_memory(index, state)
            if own is None:
                continue
            mine += own
            if self.table.ran(index):
                ran.append(own)
            else:
                fresh.append(own)
        if self._group is not None:
            version, path, _ = self._group
            used, scope = cgroup.working_set(version, path), "the worker's cgroup"
        else:
            used, scope = None, "the machine"
        if used is None:
            used, scope = proc.mem_total() - proc.mem_available(), "the machine"
        typical = sorted(ran)[len(ran) // 2] if ran else 0
        start = self._child_cost(idle) if unstarted else 0
        main = proc.rss(os.getpid())
        return Footprint(
            worker=max(main + mine, used - self.tasks_hold(tasks, mine)), main=main, children=mine,
            slots=len(fresh) + len(ran), growth=sum(max(0, typical - own) for own in fresh) + unstarted * start,
            scope=scope, unstarted=unstarted if start else 0,
        )

    def _child_cost(self, idle: list[int]) -> int:
        """What one more pool child costs: the median private memory (USS) of up to 3 idle ones
        (the last one seen while every child runs a task).

        Not their slot's own memory: most of what a child costs, it copied from the
        worker's heap while starting, before it claimed its slot.
        """
        costs = []
        for pid in idle[:3]:
            with contextlib.suppress(OSError, LookupError):
                costs.append(proc.uss(pid))
        if costs:
            self._child_cost_seen = sorted(costs)[len(costs) // 2]
        return self._child_cost_seen

    def tasks_hold(self, running: int, children: int) -> int:
        """What tasks hold of the worker's memory, given what running tasks use above their baselines
        and what the live pool children hold themselves (:meth:`footprint`)."""
        return running

    def fit_slots(self, headroom: int) -> int | None:
        """Limit what the slots hold together (cgroup mode, v1); here: nothing, ``None``."""
        return None

    def available(self) -> int:
        """Bytes the worker can still get: the machine's MemAvailable, or less if its cgroup is limited."""
        free = proc.mem_available()
        if self._group is not None:
            version, path, limit = self._group
            used = cgroup.working_set(version, path)
            if used is not None:
                free = min(free, limit - used)
        return free

    def pressure(
        self, uses: list[Use], check_available: bool, available: int | None = None, margin: int | None = None
    ) -> tuple[Use, str] | None:
        """The task to evict and why, or ``None`` (monitor thread).

        ``available``: a reading the caller just made (else read here when
        ``check_available``); ``margin``: the eviction margin to hold (default
        :attr:`eviction_margin`; the watchdog widens it by what it sees tasks allocate).
        """
        if self.budget is None or not uses:
            return None
        margin = self.eviction_margin if margin is None else margin
        total = sum(max(0, u.used) for u in uses)
        if available is None and check_available:
            available = self.available()
        why = pressure(total, self.budget, available, margin)
        if why is None and check_available and self._signals is not None:
            try:
                why = group_pressure(*self._signals.read())
            except (OSError, ValueError, KeyError):
                why = None
        if why is None:
            return None
        victim = choose_victim(uses)
        if victim is None:
            return None
        if victim.over <= 0 and (available is None or available >= self.eviction_margin):
            # Over a budget that shrank (the worker's footprint grew) under tasks that all keep
            # to their requests, or inside a margin widened for fast allocators: admission starts
            # nothing more until they end; nobody is evicted before the configured margin is crossed.
            return None
        return victim, why

    def eviction_report(self, state: SlotState, victim: Use, why: str, killed: tuple[int, ...] = ()) -> KillReport:
        logger.warning(
            "oomless: evicting %s for node memory pressure: %s; it uses %s against a request of %s, "
            "the most over its request",
            state.task_id, why, format_size(victim.used), format_size(victim.request),
        )
        return KillReport(
            state.task_id, state.pid, state.limit or 0, victim.used, self.mode, killed,
            reason="evicted", request=victim.request, detail=why, spared=state.spare_root,
        )

    def file_report(self, report: KillReport) -> None:
        """Record why a task is about to be killed (call *before* signalling it), and tell
        the :attr:`before_kill` hooks (monitor thread; they must be quick and never raise)."""
        self._reports.put(report.task_id, report)
        for hook in self.before_kill:
            try:
                hook(report)
            except Exception:
                logger.exception("oomless: a before-kill hook failed for task %s", report.task_id)

    def take_spared(self, task_id: str) -> KillReport | None:
        """Claim the report of a kill that spared the task's own process (its subprocesses died)."""
        report = self._reports.get(task_id)
        if report is None or not report.spared:
            return None
        return self._reports.pop(task_id, None)

    def announce_kill(self, task_id: str) -> None:
        """Tell the worker's event loop that ``task_id`` was killed (call *after* signalling)."""
        try:
            os.write(self.notify_w, task_id.encode()[:200] + b"\n")
        except BlockingIOError:
            pass  # the pipe is full of notices; Celery's own WorkerLostError path still applies

    def killed_task_ids(self) -> list[str]:
        """Drain the kill notices (worker event loop)."""
        data = b""
        while True:
            try:
                chunk = os.read(self.notify_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        return [line.decode() for line in data.split(b"\n") if line]

    def usage(self, index: int, state: SlotState) -> int | None:
        """What the task running in slot ``index`` uses now, above its baseline (any main-process thread).

        Not for the monitor's fast loop: it opens a /proc file.  Here: the pool
        child's own RSS (``off`` mode); the other modes see the whole tree.
        """
        try:
            return max(0, proc.rss(state.pid) - state.baseline)
        except (FileNotFoundError, ProcessLookupError):
            return None

    def marker(self, child_pid: int) -> bytes:
        """The :data:`SLOT_ENV` entry of pool child ``child_pid``'s environment:
        ``<node name>/<worker pid>-<worker start time>/<child pid>``."""
        return f"{SLOT_ENV}={self.node.replace('/', '%2F')}/{self._worker_id}/{child_pid}".encode()

    def sweep_previous(self) -> list[int]:
        """Kill what an earlier run of this worker (same node name) left behind when its main process
        died (SIGKILL, a crash): processes its tasks started, marked with :data:`SLOT_ENV`, whose worker
        is gone.  Called in the main process before the pool forks; returns the PIDs killed."""
        prefix = self.node.replace("/", "%2F").encode() + b"/"
        mine = self._worker_id.encode()

        def left_by_a_dead_run(pid: int) -> bool:
            value = proc.environ_value(pid, SLOT_ENV.encode())
            if value is None or not value.startswith(prefix):
                return False
            worker = value[len(prefix):].split(b"/", 1)[0]
            if worker == mine:
                return False
            wpid, _, wstart = worker.partition(b"-")
            try:
                return proc.start_time(int(wpid)) != int(wstart)  # that worker is gone (or its PID reused)
            except ValueError:
                return False

        killed = kill_matching(left_by_a_dead_run)
        if killed:
            logger.warning("oomless: killed %d processes that an earlier run of worker %s left running when it "
                           "died: %s", len(killed), self.node, killed)
        return killed

    def sweep(self, pid: int) -> list[int]:
        """Pool child ``pid`` is gone (killed from outside, crashed): kill every process left of its tree.

        Called on the event loop before Celery fails or requeues the child's task,
        so the task never runs twice at once.  Returns the PIDs killed.
        """
        index = self.table.index_of(pid)
        killed = kill_orphans(pid, self.table.born(index) if index is not None else None, self.marker(pid))
        if killed:
            logger.warning("oomless: pool child %d is gone; killed the %d processes its task left: %s",
                           pid, len(killed), killed)
        return killed

    def peek_kill(self, task_id: str) -> KillReport | None:
        return self._reports.get(task_id)

    def claim_kill(self, task_id: str, pid: int | None) -> KillReport | None:
        """The report for ``task_id`` if the governor killed it (each report is claimed once)."""
        return self._reports.pop(task_id, None)

    # -- pool child -----------------------------------------------------------
    def child_init(self, index: int, pid: int) -> None:
        """Called in a newly born pool child, before it runs any task."""
        os.environ[SLOT_ENV] = self.marker(pid).decode().split("=", 1)[1]
        try:
            proc.set_child_subreaper()
        except OSError as exc:
            logger.warning("oomless: pool child %d cannot adopt its orphans (%s): a task's daemon that starts "
                           "a new session escapes its slot", pid, exc)
        self.table.set_pid(index, pid, proc.start_time(pid) or 0, self.own.rss())

    def slot_members(self, index: int, pid: int, alive: bool = False) -> list[int]:
        """Pool child: the processes of its slot other than itself (here: its children, exited ones
        too unless ``alive``; a subreaper's descendants all end up as its children or theirs)."""
        children = proc.all_children(pid)
        return [child for child in children if not proc.exited(child)] if alive else children

    def clear_leftovers(self, index: int, pid: int) -> list[int]:
        """Pool child, after a task returned: kill the processes it left running; returns their PIDs.

        They would hold memory no task is charged for, and run beside the next
        task.  Exited children it adopted are reaped here too.
        """
        if not self.slot_members(index, pid):
            return []
        proc.reap_zombie_children()
        if not self.kill_leftovers or not self.slot_members(index, pid, alive=True):
            return []
        killed = kill_tree(pid, None, spare_root=True)
        for _ in range(40):  # wait (at most 0.2 s) until the killed ones are reaped
            proc.reap_zombie_children()
            if not self.slot_members(index, pid, alive=True):
                break
            time.sleep(0.005)
        return killed

    def task_start(self, index: int, pid: int, task_id: str, spec: Memory, spare_root: bool = False) -> None:
        """Called in the pool child right before the task's code runs.

        ``spare_root``: on a breach kill only the child's subprocesses (the task's
        ``memory_scope="subprocesses"``), so the task itself sees them die.
        """
        self._limit = spec.limit
        self._spare = spare_root
        self._baseline = self.measure_baseline(index, pid)
        self._seq = self.table.start(
            index, pid, task_id, spec.limit, spec.request, self._baseline, time.time_ns(), self.oom_count(index),
            spare_root, self.held(index) if spec.limit is not None else None,
        )
        self.arm(index, spec.limit)

    def task_end(self, index: int, pid: int, task_id: str, input_size: int | None = None) -> int:
        """Called in the pool child after the task; returns the task's peak (bytes).

        ``input_size``: what the task said it read (``oomless.input_size()``), for the history.

        The child measures itself; a watchdog monitor that saw the task's whole
        tree (subprocesses too) higher publishes that peak in the slot row.
        """
        peak = max(0, self.measure_peak(index, pid) - self._baseline)
        tree = self.table.tree_peak(index, self._seq)
        if tree is not None and tree > peak:
            peak = tree
        self.disarm(index)
        self.table.finish(index, pid, task_id, peak, self._limit, input_size)
        return peak

    def refused_at_limit(self, index: int) -> tuple[int, int] | None:
        """Pool child, after the running task raised ``MemoryError`` or ``ENOMEM``: ``(limit, peak)`` if that
        was the slot's limit saying no (cgroup mode: a ``write()`` to tmpfs is refused, not paused, at the
        limit), ``None`` if it was not oomless's limit."""
        return None

    def measure_baseline(self, index: int, pid: int) -> int:
        return 0

    def held(self, index: int) -> int | None:
        """After :meth:`measure_baseline`: what earlier tasks left in the slot that this one could
        free (see :class:`~oomless.enforce.cgroup.CgroupEnforcer`), ``None`` when nothing."""
        return None

    def measure_peak(self, index: int, pid: int) -> int:
        return 0

    def oom_count(self, index: int) -> int:
        return 0

    def arm(self, index: int, limit: int | None) -> None:
        """Put ``limit`` in force for the slot (before the task runs)."""

    def disarm(self, index: int) -> None:
        """Lift the slot's limit after the task."""


class NullEnforcer(Enforcer):
    """``off``: tasks are admitted and accounted (own RSS high-water mark) but never killed."""

    mode = "off"

    def measure_baseline(self, index: int, pid: int) -> int:
        self.own.reset_peak()
        return self.own.rss()

    def measure_peak(self, index: int, pid: int) -> int:
        return self.own.peak()
