"""PSS of running tasks, sampled once a second, for the history's ``peak_pss``.

RSS double-counts the pages a pool child shares copy-on-write with the worker
and its siblings; PSS (proportional set size) divides each shared page among
its sharers, so the PSS of all slots adds up to what the machine really
holds.  Reading it costs a walk of the page tables (``smaps_rollup``: about
0.3 ms for a small pool child, ~2 ms for a 200 MB one), far too slow for the
enforcement loop and too slow to run for every task on the worker's busy main
thread.  So a daemon thread samples each *running* slot's tree (pool child and
its descendants) every ``interval`` seconds and keeps the largest sum per
task.  What it records is therefore:

* an absolute PSS (the pool child's share of the interpreter included, unlike
  ``peak_rss``, which counts only what the task added above its start);
* a sampled maximum: a task shorter than ``interval`` may get no sample
  (``peak_pss`` stays empty), and a spike between samples is missed.
"""

from __future__ import annotations

import logging
import threading

from ..enforce.reports import BoundedDict
from ..enforce.slots import SlotTable
from ..linux import proc

logger = logging.getLogger(__name__)

__all__ = ["PssSampler"]


def tree_pss(pid: int) -> int | None:
    """PSS of ``pid`` and all its descendants (``None`` when ``pid`` is gone)."""
    try:
        total = proc.pss(pid)
    except (FileNotFoundError, ProcessLookupError, LookupError):
        return None
    todo = proc.all_children(pid)
    while todo:
        child = todo.pop()
        try:
            total += proc.pss(child)
        except (FileNotFoundError, ProcessLookupError, LookupError):
            continue
        todo.extend(proc.all_children(child))
    return total


class PssSampler:
    """A thread that samples the PSS of every running slot's tree and remembers each task's maximum."""

    def __init__(self, table: SlotTable, interval: float = 1.0) -> None:
        self.table = table
        self.interval = interval
        self._peaks: BoundedDict = BoundedDict(4096)  # task id -> largest PSS seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oomless-pss", daemon=True)
        self._thread.start()

    def take(self, task_id: str) -> int | None:
        """The task's largest sampled PSS, forgotten once taken (``None``: never sampled)."""
        return self._peaks.pop(task_id, None)

    def sample(self) -> None:
        """One pass over the running slots (the thread calls this every ``interval``)."""
        for index in range(self.table.size):
            state = self.table.read(index)
            if not state.running or not state.task_id:
                continue
            value = tree_pss(state.pid)
            # The slot may have moved on while we read: keep the value only for the task it belonged to.
            if value is None or self.table.seq(index) != state.seq:
                continue
            if value > self._peaks.get(state.task_id, -1):
                self._peaks.put(state.task_id, value)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.sample()
        except Exception:
            logger.exception("oomless: the PSS sampler stopped; peak_pss is no longer recorded")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
