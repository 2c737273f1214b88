"""A slot's processes are its task's, whatever they do; what a task or a dead worker left is killed.

The pool child is a child subreaper (a daemon that double-forks and calls
``setsid()`` stays its descendant), puts :data:`SLOT_ENV` in its environment
(every exec'd descendant carries it), and kills what its task left running
when the task returns (``oomless_leftovers``, :meth:`SlotProcesses.clear_leftovers`).
When a pool child dies for any other reason, the main process kills what is
left of its tree (:meth:`~SlotProcesses.sweep`) before Celery requeues its
message; when a whole worker died, the next run of it kills what its tasks
left (:meth:`~SlotProcesses.sweep_previous`).

Not here: killing a task over its limit (the monitors), how a tree is proven
ours and killed (:mod:`oomless.linux.kill`).
"""

from __future__ import annotations

import logging
import os
import time

from ..linux import proc
from .readers import Killer
from .slots import SlotTable

logger = logging.getLogger(__name__)

__all__ = ["SLOT_ENV", "SlotProcesses"]

#: Environment variable each pool child sets to ``<node name>/<worker pid>-<worker start>/<child pid>``;
#: its exec'd descendants inherit it, so they can be found after the pool child (or the worker) died.
SLOT_ENV = "OOMLESS_SLOT"


class SlotProcesses:
    """What makes a slot's processes its own (a base of :class:`~oomless.enforce.base.Enforcer`)."""

    table: SlotTable
    killer: Killer
    own_children: proc.OwnChildren  # the pool child's (see Enforcer.__init__)
    #: the worker's node name (``celery@host``), set by the bootstep: what marks a run as this worker's
    node = ""
    #: kill the processes a task left running when it returns (``oomless_leftovers="kill"``)
    kill_leftovers = True
    _worker_id = ""  # ``<worker pid>-<its start time>``

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

        killed = self.killer.matching(left_by_a_dead_run)
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
        killed = self.killer.orphans(pid, self.table.born(index) if index is not None else None, self.marker(pid))
        if killed:
            logger.warning("oomless: pool child %d is gone; killed the %d processes its task left: %s",
                           pid, len(killed), killed)
        return killed

    # -- pool child -----------------------------------------------------------
    def adopt_orphans(self, pid: int) -> None:
        """Pool child ``pid``, at birth: mark its environment with :data:`SLOT_ENV` and become the
        subreaper of its descendants."""
        os.environ[SLOT_ENV] = self.marker(pid).decode().split("=", 1)[1]
        try:
            proc.set_child_subreaper()
        except OSError as exc:
            logger.warning("oomless: pool child %d cannot adopt its orphans (%s): a task's daemon that starts "
                           "a new session escapes its slot", pid, exc)

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
        if not (self.own_children.any() if pid == proc.self_pid() else self.slot_members(index, pid)):
            return []  # the common case, after every task: one or two preads
        proc.reap_zombie_children()
        if not self.kill_leftovers or not self.slot_members(index, pid, alive=True):
            return []
        killed = self.killer.tree(pid, None, spare_root=True)
        for _ in range(40):  # wait (at most 0.2 s) until the killed ones are reaped
            proc.reap_zombie_children()
            if not self.slot_members(index, pid, alive=True):
                break
            time.sleep(0.005)
        return killed
