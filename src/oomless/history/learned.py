"""Learned sizes: the recommender's answers, kept in memory for the worker and the client.

Two users, one cache:

* a worker with ``oomless_learned = True`` gives a task that declares no
  memory (no per-call spec, no ``memory=`` option) the recommended spec, ahead
  of ``oomless_default_memory`` (precedence: call > task > learned > worker
  default).  A thread loads the recommendations when the worker starts and
  refreshes them every ``refresh`` seconds; until the first load, nothing is
  learned and tasks run as before.
* a client may ask at submit time: ``task.apply_async(args,
  memory=oomless.learned(input_size=n, default="1GiB"))``.  The publish hook
  resolves it to a concrete spec for that task name (and input size, when the
  history has a size fit), so the worker sees an ordinary per-call spec.

Only task names with at least ``min_samples`` samples are learned, and a
learned limit is capped at ``cap`` (the worker's budget), so learning never
turns a runnable task into an infeasible one.  Airflow tries are not learned
here (they are grouped per DAG task, and the executor sets their specs): use
``oomless recommend --format airflow``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..spec import Memory

logger = logging.getLogger(__name__)

__all__ = ["Learned", "LearnedMemory", "learned", "resolve_learned"]

WINDOW = 30 * 86400  # seconds of history the recommendations rest on
REFRESH = 600.0
MIN_SAMPLES = 5


class Learned:
    """Recommendations per task name from a history store (see the module docstring)."""

    def __init__(
        self,
        store: Callable[[], Any],
        window: float = WINDOW,
        min_samples: int = MIN_SAMPLES,
        on_update: Callable[[], None] | None = None,
    ) -> None:
        self._factory = store
        self.window, self.min_samples = window, min_samples
        self._on_update = on_update
        self._recs: dict[str, Any] = {}
        self.loaded_at: float | None = None

    def load(self) -> int:
        """Read the history now (any thread); returns how many task names are learned."""
        from .recommend import recommend_all

        store = self._factory()
        try:
            recs = recommend_all(store.samples(since=time.time() - self.window))
        finally:
            store.close()
        self._recs = {r.task_name: r for r in recs if r.dag_id is None and r.samples >= self.min_samples}
        self.loaded_at = time.time()
        if self._on_update is not None:
            self._on_update()
        return len(self._recs)

    def get(self, task_name: str, input_size: int | None = None, cap: int | None = None) -> Memory | None:
        """The learned spec of ``task_name`` (for ``input_size`` when there is a size fit), or ``None``."""
        rec = self._recs.get(task_name)
        if rec is None:
            return None
        request, limit = rec.for_size(input_size)
        if cap is not None and limit > cap:
            limit = cap
            request = min(request, cap)
        return Memory(request=request, limit=limit)

    def start(self, refresh: float = REFRESH) -> threading.Thread:
        """Load now and every ``refresh`` seconds in a daemon thread (a worker)."""

        def run() -> None:
            while True:
                try:
                    n = self.load()
                    logger.info("oomless: learned memory sizes for %d task names from the history", n)
                except Exception as exc:  # the store is down: keep what was learned, try again later
                    logger.warning("oomless: could not read learned memory sizes from the history: %s", exc)
                time.sleep(refresh)

        thread = threading.Thread(target=run, name="oomless-learned", daemon=True)
        thread.start()
        return thread


@dataclass(frozen=True)
class LearnedMemory:
    """``memory=oomless.learned(...)``: a per-call spec to be looked up at publish time."""

    input_size: int | None = None
    default: Memory | None = None
    history: str | None = None


def learned(input_size: int | None = None, default: Any = None, history: str | None = None) -> LearnedMemory:
    """Ask for the learned spec of the task being sent (``apply_async(..., memory=oomless.learned())``).

    ``input_size``: bytes of input, for tasks whose history has a size fit (it
    is also recorded, as with ``apply_async(input_size=n)``).  ``default``:
    the spec to send when nothing is learned yet (else the task's own
    ``memory=`` applies).  ``history``: the store URL (default: the app's
    ``oomless_history``, else the default SQLite file).
    """
    return LearnedMemory(input_size, Memory.coerce(default, what="default= of oomless.learned()"), history)


_CLIENT: dict[str, tuple[float, Learned]] = {}
_LOCK = threading.Lock()


def resolve_learned(task_name: str, want: LearnedMemory, app_history: Any) -> Memory | None:
    """Client side: the concrete spec for ``want`` (cached per store for :data:`REFRESH` seconds)."""
    from ..paths import history_url
    from ..settings import history
    from .store import Store

    url = want.history or history(app_history) or history_url()
    with _LOCK:
        cached = _CLIENT.get(url)
        if cached is None or time.monotonic() - cached[0] > REFRESH:
            cache = Learned(lambda: Store(url))
            try:
                n = cache.load()
                logger.debug("oomless: learned sizes for %d task names from %s", n, url)
            except Exception as exc:
                logger.warning("oomless: could not read learned sizes from the history (%s); using the default", exc)
            cached = _CLIENT[url] = (time.monotonic(), cache)
    spec = cached[1].get(task_name, want.input_size)
    if spec is not None:
        logger.debug("oomless: %s gets its learned memory %s", task_name, spec)
    return spec if spec is not None else want.default
