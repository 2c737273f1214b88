"""The enforcer protocol shared by the cgroup and watchdog modes.

An enforcer has two halves that live in different processes:

* the **main-process half** prepares slots before the pool forks, runs one
  monitor thread (no task code runs in the main process, so the thread never
  waits behind a task's allocation loop), kills a slot's tree on breach and
  files a :class:`~oomless.enforce.reports.KillReport` *before* it signals, so
  that when Celery later sees the pool child die the report is already there;
* the **pool-child half** joins the slot at birth and, around every task, sets
  the limit, resets and reads the peak, and publishes both in the
  :class:`~oomless.enforce.slots.SlotTable`.

A task's memory is what its process tree holds *above the slot's baseline at
task start*: pages the pool child shares copy-on-write with the worker, and
what earlier tasks left behind, are not charged to it.

:class:`Enforcer` is made of one base class per concern, each in its own
module: the kill reports (:mod:`.reports`), eviction for node memory pressure
(:mod:`.pressure`), the worker's footprint (:mod:`.footprint`), and what makes
a slot's processes its task's (:mod:`.ownership`).  Here: the monitor thread's
life, and the task protocol each mode fills in.  The modes: :mod:`.cgroup`,
:mod:`.watchdog`; which one runs: :mod:`.modes`.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ..linux import kill, proc
from ..linux.proc.memory import OwnMemory
from ..spec import Memory
from .footprint import Footprints
from .ownership import SlotProcesses
from .pressure import PressureCheck
from .readers import Killer, Readers
from .reports import KillReports
from .slots import SlotTable

logger = logging.getLogger(__name__)

__all__ = ["Enforcer", "NullEnforcer"]

#: Nice value of the monitor thread where the worker may raise its priority.
MONITOR_NICE = -10


class Enforcer(KillReports, PressureCheck, Footprints, SlotProcesses):
    """Base of the enforcement modes; ``mode`` names it in logs, events and errors.

    ``readers`` and ``killer``: what the main process reads and how it kills
    (the real :mod:`oomless.linux` ones unless a test gives fakes, see :mod:`.readers`).
    """

    mode = "off"

    def __init__(self, table: SlotTable, readers: Readers | None = None, killer: Killer | None = None) -> None:
        KillReports.__init__(self)
        self.table = table
        self.readers = Readers() if readers is None else readers
        self.killer = Killer() if killer is None else killer
        self._thread: threading.Thread | None = None
        self.monitor_tid: int | None = None  # native thread id, for CPU accounting
        self._stopping = threading.Event()
        # An idle monitor sleeps until a task is handed to the pool (watchdog mode; see dispatched()).
        self._wake = threading.Event()
        self._idle = False
        self._kicked = False
        # pool-child half: what the running task started from
        self._baseline = 0
        self._spare = False  # the running task's memory_scope is "subprocesses" (pool child half)
        self._limit: int | None = None
        self._seq = -1  # slot row sequence number the running task started at
        self.own = OwnMemory()  # the pool child's own /proc files
        self.own_children = proc.OwnChildren()
        self._worker_id = f"{os.getpid()}-{proc.start_time(os.getpid())}"

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
        # Started from here, the thread that frees killed tasks' memory shares the monitor's priority.
        kill.releaser.start()
        try:
            self.monitor()
        except Exception:  # the worker must hear about it, loudly, once
            logger.exception("oomless: the %s monitor thread crashed; tasks are no longer enforced", self.mode)

    def monitor(self) -> None:
        """The monitor thread's loop; returns when :meth:`stop` is called."""

    def dispatched(self) -> None:
        """The main process hands a task to the pool (every task; two attribute writes): an idle
        monitor that sleeps between looks wakes at once."""
        self._kicked = True
        if self._idle:
            self._wake.set()

    def stop(self) -> None:
        """Stop the monitor thread and remove what :meth:`prepare` made."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.close_signals()
        self.close_notices()

    def fit_slots(self, headroom: int) -> int | None:
        """Limit what the slots hold together (cgroup mode, v1); here: nothing, ``None``."""
        return None

    # -- pool child -----------------------------------------------------------
    def child_init(self, index: int, pid: int) -> None:
        """Called in a newly born pool child, before it runs any task."""
        self.adopt_orphans(pid)
        self.table.set_pid(index, pid, proc.start_time(pid) or 0, self.own.rss())

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

    def task_end(self, index: int, pid: int, task_id: str, input_size: int | None = None,
                 peak: int | None = None) -> int:
        """Called in the pool child after the task; returns the task's peak (bytes).

        ``input_size``: what the task said it read (``oomless.input_size()``), for the history.
        ``peak``: :meth:`task_peak` as measured after the task's code returned (for Celery's line).

        The child measures itself; a watchdog monitor that saw the task's whole
        tree (subprocesses too) higher publishes that peak in the slot row.
        """
        peak = self.task_peak(index, pid, peak)
        self.disarm(index)
        self.table.finish(index, pid, task_id, peak, self._limit, input_size)
        return peak

    def task_peak(self, index: int, pid: int, own: int | None = None) -> int:
        """Pool child: the running task's peak so far (once its code has returned: its peak), or
        ``own``, the child's peak measured earlier, with the monitor's tree peak since."""
        peak = max(0, self.measure_peak(index, pid) - self._baseline) if own is None else own
        tree = self.table.tree_peak(index, self._seq)
        return tree if tree is not None and tree > peak else peak

    def refused_at_limit(self, index: int) -> tuple[int, int] | None:
        """Pool child, after the running task raised ``MemoryError`` or ``ENOMEM``: ``(limit, peak)`` if that
        was the slot's limit saying no (cgroup mode: a ``write()`` to tmpfs is refused, not paused, at the
        limit), ``None`` if it was not oomless's limit."""
        return None

    def measure_baseline(self, index: int, pid: int) -> int:
        """What the slot holds as its task starts (here: the pool child's own RSS, its peak reset)."""
        return self.own.reset_peak()

    def held(self, index: int) -> int | None:
        """After :meth:`measure_baseline`: what earlier tasks left in the slot that this one could
        free (see :class:`~oomless.enforce.cgroup.CgroupEnforcer`), ``None`` when nothing."""
        return None

    def measure_peak(self, index: int, pid: int) -> int:
        """The slot's peak since :meth:`measure_baseline` (here: the pool child's own RSS high-water mark)."""
        return self.own.peak()

    def oom_count(self, index: int) -> int:
        return 0

    def arm(self, index: int, limit: int | None) -> None:
        """Put ``limit`` in force for the slot (before the task runs)."""

    def disarm(self, index: int) -> None:
        """Lift the slot's limit after the task."""


class NullEnforcer(Enforcer):
    """``off``: tasks are admitted and accounted (own RSS high-water mark) but never killed."""

    mode = "off"
