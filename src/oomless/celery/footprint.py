"""The worker's live budget: it follows the worker's measured footprint and its cgroup limit.

Once a second (on the worker's event loop) :meth:`LiveBudget.refresh` measures
what the worker itself holds (the enforcer's :meth:`~oomless.enforce.base.Enforcer.footprint`)
and moves the budget admission hands out: it takes out the largest footprint of
the last :data:`FOOTPRINT_WINDOW` seconds, each settled over
:data:`FOOTPRINT_SETTLE` seconds, so the budget shrinks within seconds when the
worker grows and grows back only once the worker has stayed smaller.  When the
worker's cgroup limit changes at run time, the budget is rebased on it.
:class:`KernelOomWatch` notes the machine's kernel OOM kill count at the same
pace, to tell later whether a pool child that died of SIGKILL may have been the
kernel's victim.

What is not here: the budget's arithmetic (:mod:`oomless.budget`), admission
(:mod:`oomless.admission`), eviction (:mod:`oomless.enforce`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..budget import Budget, Footprint, breakdown
from ..enforce.base import Enforcer
from ..linux import proc
from ..units import MiB, format_size

logger = logging.getLogger(__name__)

__all__ = ["LiveBudget", "KernelOomWatch", "FOOTPRINT_WINDOW", "FOOTPRINT_SETTLE"]

#: Seconds over which the largest (settled) footprint measured is the one the budget takes out.
FOOTPRINT_WINDOW = 10.0
#: A footprint sample is the smallest measured over this many seconds (transients settle).
FOOTPRINT_SETTLE = 3.0


class KernelOomWatch:
    """The machine's kernel OOM kill count over time (``/proc/vmstat``'s ``oom_kill``)."""

    def __init__(self) -> None:
        self._counts: deque[tuple[float, int]] = deque(maxlen=4096)  # (wall time, kernel OOM kills)

    def note(self) -> None:
        """Note the count now, if it changed (once a second)."""
        count = proc.oom_kills()
        if count is None:
            return
        if not self._counts or self._counts[-1][1] != count:
            self._counts.append((time.time(), count))

    def killed_since(self, started: float | None) -> bool:
        """Whether the kernel's OOM killer killed anything on this machine since ``started`` (wall
        time; ``None``: since the last second), judged from the counts :meth:`note` noted."""
        now = proc.oom_kills()
        if now is None or not self._counts:
            return False
        since = (started or time.time()) - 1.0
        before = [count for when, count in self._counts if when <= since]
        return now > (before[-1] if before else self._counts[0][1])


class LiveBudget:
    """The budget of one worker, moved by what it measures.

    ``config``: the configured budget (rebased when the cgroup limit changes);
    ``eviction_margin``: what the slots' shared limit must leave free at least;
    ``on_change``: called with the new budget whenever it moves.
    """

    def __init__(self, config: Budget, enforcer: Enforcer, eviction_margin: int,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.enforcer = enforcer
        self.eviction_margin = eviction_margin
        self.on_change = on_change
        #: the budget now
        self.bytes = config.bytes
        #: the largest budget measured since start (before the first measurement: the configured one)
        self.capacity = config.bytes
        #: the worker's footprint at the last measurement
        self.footprint: Footprint | None = None
        self.kernel = KernelOomWatch()
        self._measured = False
        self._limit_source: Callable[[], int | None] | None = None
        self._limit: int | None = None
        self._limit_change: tuple[int | None, int | None] | None = None
        self._footprints: deque[tuple[float, int]] = deque()  # (when, footprint total) over FOOTPRINT_WINDOW
        self._samples: deque[tuple[float, int]] = deque()  # (when, settled footprint) over FOOTPRINT_WINDOW
        self._said_budget: int | None = None  # the budget in the last breakdown logged
        self._said_slots = 0  # the most pool children a logged breakdown counted
        self._timer: Any = None

    @property
    def headroom(self) -> int:
        """What the slots' shared limit leaves free in the worker: half the reserve, at least the
        eviction margin (so the kernel pauses the slots before the margin is crossed)."""
        return max(self.eviction_margin + 16 * MiB, self.config.reserve // 2)

    def follow_limit(self, source: Callable[[], int | None], now: int | None) -> None:
        """Follow the worker's cgroup limit: ``source()`` reads it (once a second), ``now`` is what
        it is at start."""
        self._limit_source, self._limit = source, now

    def watch(self, hub: Any) -> None:
        """Measure now and once a second on the worker's event loop."""
        if self._timer is not None:
            self._timer.cancel()  # a reconnection registers again
        self.refresh()
        self._timer = hub.call_repeatedly(1.0, self.refresh)

    def refresh(self, now: float | None = None) -> int:
        """Measure the worker's footprint and move the budget with it; returns the budget.

        A breakdown is logged when the budget moves by max(64 MiB, 2 %).
        """
        now = time.monotonic() if now is None else now
        self._follow_limit()
        try:
            fp = self.enforcer.footprint()
        except OSError as exc:
            logger.warning("oomless: could not measure the worker's footprint (%s); the budget stays %s",
                           exc, format_size(self.bytes))
            return self.bytes
        self.footprint = fp
        self.kernel.note()
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
        live = self.config.live(max(total for _, total in samples))
        self.capacity = live if not self._measured else max(self.capacity, live)
        self._measured = True
        if live != self.bytes:
            self.bytes = live
            if self.on_change is not None:
                self.on_change(live)
        self._say(live, fp)
        return live

    def _say(self, live: int, fp: Footprint) -> None:
        said = self._said_budget
        if self._limit_change is not None:
            old, new = self._limit_change
            self._limit_change = None
            self._said_budget, self._said_slots = live, max(self._said_slots, fp.slots)
            logger.warning(
                "oomless: the worker's cgroup limit changed from %s to %s: %s", _limit_text(old), _limit_text(new),
                breakdown(self.config, live, fp),
            )
            if self.config.warning:
                logger.warning("oomless: %s", self.config.warning)
        elif said is None or abs(live - said) >= max(64 * MiB, said // 50) or fp.slots > self._said_slots:
            self._said_budget, self._said_slots = live, max(self._said_slots, fp.slots)
            logger.info("oomless: %s", breakdown(self.config, live, fp))
            config = self.config
            if not config.auto and config.bytes + fp.total > config.ceiling:
                logger.warning(
                    "oomless: the budget of %s and the worker's own footprint of %s do not fit the %s: tasks "
                    "within their requests can exhaust it; lower the budget, or leave it to auto",
                    format_size(config.bytes), format_size(fp.total), config.whence,
                )

    def _follow_limit(self) -> None:
        """Re-read the worker's cgroup limit; when it changed, rebase the budget on it (admission
        shrinks or grows; running tasks are not killed for it, see the eviction rules)."""
        if self._limit_source is None:
            return
        try:
            limit = self._limit_source()
        except (OSError, ValueError):
            return
        if limit == self._limit:
            return
        self._limit_change, self._limit = (self._limit, limit), limit
        self.config = self.config.rebased(proc.mem_total(), limit)
        self.enforcer.follow_limit(limit)
        self._footprints.clear()
        self._samples.clear()
        self._measured = False  # the capacity (largest budget seen) starts again from the new ceiling


def _limit_text(limit: int | None) -> str:
    return "none" if limit is None else format_size(limit)
