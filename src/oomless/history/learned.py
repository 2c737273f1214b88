"""Learned sizes: the recommender's answers, kept in memory for the worker, the client and the executor.

Three users, one cache:

* a worker with ``oomless_learned = True`` gives a task that declares no
  memory (no per-call spec, no ``memory=`` option) the recommended spec, ahead
  of ``oomless_default_memory`` (precedence: call > task > learned > worker
  default).  A thread loads the recommendations when the worker starts and
  refreshes them every ``refresh`` seconds; until the first load, nothing is
  learned and tasks run as before.  A task this worker kills for memory moves
  its learned limit at once (:meth:`Learned.note_kill`), not at the next load.
* a client may ask at submit time: ``task.apply_async(args,
  memory=oomless.learned(input_size=n, default="1GiB"))``.  The publish hook
  resolves it to a concrete spec for that task name (and input size, when the
  history has a size fit), so the worker sees an ordinary per-call spec.  The
  client reloads every :data:`REFRESH` seconds and, in between, reads the
  task's new memory kills every :data:`KILLS_EVERY` seconds (one indexed query).
* the Airflow executor (``[oomless] learned = True``), per DAG task.

Only task names with at least ``min_samples`` samples are learned, and a
learned limit is capped at ``cap`` (the worker's budget), so learning never
turns a runnable task into an infeasible one.  The history is only read here,
never created or migrated: a store that is missing, empty or unreadable is
said in a WARNING that names it (password hidden), and tried again after
:data:`RETRY` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..spec import Memory
from ..units import format_size
from ..urls import redact
from .recommend import Recommendation, bump, limit_for

logger = logging.getLogger(__name__)

__all__ = ["Learned", "Learnt", "LearnedMemory", "learned", "lookup_learned", "resolve_learned", "airflow_key"]

WINDOW = 30 * 86400  # seconds of history the recommendations rest on
REFRESH = 600.0
RETRY = 60.0  # a store that could not be read is tried again after this long
KILLS_EVERY = 2.0  # a client reads a task's new memory kills this often (one indexed query)
MIN_SAMPLES = 5
KEEP_NOTED = 120.0  # a kill noted this long before a load began is kept: the recorder may not have written it


def airflow_key(dag_id: str, task_id: str) -> tuple[str, str]:
    """The key an Airflow task's recommendation is learned under."""
    return dag_id, task_id


@dataclass(frozen=True)
class Learnt:
    """A learned spec and where it came from (for the log)."""

    memory: Memory
    how: str  # Sized.how ("size-blind", "fitted", "below range", "above range"), or "killed": only kills known
    samples: int
    kills_since_load: int

    def describe(self, size: int | None = None, name: str | None = None) -> str:
        """``learned from 34 attempts [of <name>] in the history, fitted to an input of 120 MiB``."""
        if self.how == "killed":
            n = self.kills_since_load
            return (f"sized from {n} memory kill{'s' if n > 1 else ''}{f' of {name}' if name else ''} recorded since "
                    f"the history was read (nothing was learned for it before)")
        where = {
            "size-blind": "",
            "fitted": f", fitted to an input of {format_size(size or 0)}",
            "below range": f", for an input of {format_size(size or 0)} (smaller than any seen: the smallest's size)",
            "above range": f", for an input of {format_size(size or 0)} (larger than any seen: the larger of the "
                           f"size-blind size and the extrapolation)",
        }[self.how]
        kills = (f", raised for {self.kills_since_load} memory kill{'s' if self.kills_since_load > 1 else ''} "
                 f"recorded since it was read" if self.kills_since_load else "")
        of = f" of {name}" if name else ""
        return f"learned from {self.samples} attempts{of} in the history{where}{kills}"


class Learned:
    """Recommendations per task from a history store (see the module docstring)."""

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
        self._recs: dict[Hashable, Recommendation] = {}
        #: memory kills seen since the last load, per key: (size or None, what it needed, when)
        self._kills: dict[Hashable, list[tuple[int | None, int, float]]] = {}
        self.last_id = 0  # the newest row when the history was last read
        self._after: dict[str, int] = {}  # per Celery task name: the newest row its kills were looked for in
        self._polled: dict[str, float] = {}
        self._warned: set[Hashable] = set()
        self._lock = threading.Lock()
        self.loaded_at: float | None = None

    @property
    def names(self) -> int:
        """How many tasks have a learned size."""
        return len(self._recs)

    def load(self) -> int:
        """Read the history now (any thread); returns how many tasks are learned.  Raises
        :class:`~oomless.history.store.StoreUnavailable` with a sentence when there is nothing to read."""
        from .recommend import recommend_all
        from .store import StoreUnavailable

        started = time.time()
        store = self._factory()
        try:
            if not store.version():
                raise StoreUnavailable(f"the history store {redact(store.url)} is empty: nothing recorded there yet")
            last = store.last_id()
            recs = recommend_all(store.samples(since=started - self.window))
        finally:
            store.close()
        with self._lock:
            self._recs = {_key(r): r for r in recs if r.samples >= self.min_samples}
            # kills noted well before this read began are in what it read (a floor counted twice is harmless)
            self._kills = {k: kept for k, ks in self._kills.items()
                           if (kept := [x for x in ks if x[2] >= started - KEEP_NOTED])}
            self.last_id, self._after = last, {}
            self.loaded_at = started
        if self._on_update is not None:
            self._on_update()
        return len(self._recs)

    def note_kill(self, key: Hashable, size: int | None, limit: int, at: float | None = None) -> None:
        """A task was killed at ``limit``: until the next load it is learned at no less than the
        recommender would then say (the kill's bumped need × the limit margin) for that size and larger;
        a task with nothing learned yet is learned from its kills alone."""
        with self._lock:
            self._kills.setdefault(key, []).append((size, bump(limit), time.time() if at is None else at))

    def poll_kills(self, task_name: str, store: Any, now: bool = False) -> None:
        """A client: note the memory kills of ``task_name`` recorded since the last look (every
        :data:`KILLS_EVERY` seconds at most, unless ``now``)."""
        last = self._polled.get(task_name)
        when = time.time()
        if last is not None and when - last < KILLS_EVERY and not now:
            return
        self._polled[task_name] = when
        after = self._after.get(task_name, self.last_id)
        for kill_id, dag_id, af_task_id, size, limit in store.kills(task_name, after):
            after = max(after, kill_id)
            if limit is None:
                continue
            key = airflow_key(dag_id, af_task_id) if dag_id and af_task_id else task_name
            self.note_kill(key, size if size is not None and size >= 0 else None, limit, at=when)
        self._after[task_name] = after

    def lookup(self, key: Hashable, input_size: int | None = None, cap: int | None = None) -> Learnt | None:
        """The learned spec of a Celery task name or an :func:`airflow_key` (for ``input_size`` when there
        is a size fit), and how it was found; ``None`` when nothing is learned for it."""
        rec = self._recs.get(key)
        kills = self._kills.get(key, ())
        if rec is None and not kills:
            return None
        answer = rec.sized(input_size) if rec is not None else None
        request, limit = (answer.request, answer.limit) if answer is not None else (0, 0)
        blind = input_size is None or answer is None or answer.how in ("size-blind", "above range")
        applied = 0
        for size, need, _ in kills:
            if blind or (size is not None and size <= input_size):  # type: ignore[operator]
                applied += 1
                limit = max(limit, limit_for(need))
        if rec is None:
            if not applied:
                return None
            request = limit  # known only from its kills: reserve what it is given
        if answer is not None and answer.how == "above range" and key not in self._warned:
            self._warned.add(key)
            fit = rec.by_size  # type: ignore[union-attr]
            assert fit is not None
            logger.warning(
                "oomless: %s: an input of %s is larger than any its history has seen (%s to %s); it gets the larger "
                "of the size-blind size and the extrapolation (request %s, limit %s), and so do larger ones "
                "(said once per task)", rec.task_name, format_size(input_size or 0),  # type: ignore[union-attr]
                format_size(fit.smallest), format_size(fit.largest), format_size(request), format_size(limit),
            )
        if cap is not None and limit > cap:
            limit = cap
        how = answer.how if answer is not None else "killed"
        return Learnt(Memory(request=min(request, limit), limit=limit), how, rec.samples if rec else 0, applied)

    def get(self, key: Hashable, input_size: int | None = None, cap: int | None = None) -> Memory | None:
        """The learned spec (see :meth:`lookup`), or ``None``."""
        found = self.lookup(key, input_size, cap)
        return None if found is None else found.memory

    def start(self, refresh: float = REFRESH) -> threading.Thread:
        """Load now and every ``refresh`` seconds in a daemon thread (a worker, which records into the
        store it learns from: a missing or empty one is its first start, said at INFO)."""
        from .store import StoreUnavailable

        def run() -> None:
            while True:
                try:
                    n = self.load()
                    logger.info("oomless: learned memory sizes for %d task names from the history", n)
                except StoreUnavailable as exc:
                    logger.info("oomless: nothing learned yet (%s); this worker records there and reads it "
                                "again in %.0f s", exc, refresh)
                except Exception as exc:  # the store is down: keep what was learned, try again later
                    logger.warning("oomless: could not read learned memory sizes from the history: %s", exc)
                time.sleep(refresh)

        thread = threading.Thread(target=run, name="oomless-learned", daemon=True)
        thread.start()
        return thread


def _key(rec: Recommendation) -> Hashable:
    return airflow_key(rec.dag_id, rec.af_task_id) if rec.dag_id and rec.af_task_id else rec.task_name


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
    from ..errors import InvalidMemorySpec
    from ..settings import history as history_setting

    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or not 0 <= input_size <= 2**60):
        raise InvalidMemorySpec(f"input_size={input_size!r} of oomless.learned() is not a number of bytes; give "
                                f"the input's size as an integer, e.g. os.path.getsize(path)")
    url = history_setting(history, "history= of oomless.learned()") if history is not None else None
    return LearnedMemory(input_size, Memory.coerce(default, what="default= of oomless.learned()"), url)


class _Client:
    """One history store as a client reads it: the recommendations (read again in a thread, the old ones
    served meanwhile) and a reader for new kills."""

    def __init__(self, url: str) -> None:
        from .store import open_reader

        self.url = url
        self.learned = Learned(lambda: open_reader(url))
        self.loaded = 0.0  # monotonic time of the last read's start
        self.loading = False
        self.failed: str | None = None
        self._reader: Any = None

    def refresh(self) -> None:
        if self.loading or (self.loaded and time.monotonic() - self.loaded < (RETRY if self.failed else REFRESH)):
            return
        self.loaded = time.monotonic()
        if self.learned.loaded_at is None and self.failed is None:
            self._load()  # the first read: its answer is wanted now
        else:
            self.loading = True
            threading.Thread(target=self._load, name="oomless-learned-read", daemon=True).start()

    def _load(self) -> None:
        try:
            n = self.learned.load()
        except Exception as exc:  # noqa: BLE001 - any store error: say it once, send the default
            if str(exc) != self.failed:
                logger.warning("oomless: learned memory sizes unavailable, sending the default: %s", exc)
            self.failed = str(exc)
            return
        finally:
            self.loading = False
        if self.failed:
            logger.warning("oomless: learned memory sizes read again from %s", redact(self.url))
        self.failed = None
        logger.info("oomless: learned memory sizes for %d tasks from %s", n, redact(self.url))

    def kills(self, task_name: str, now: bool = False) -> None:
        if self.learned.loaded_at is None:
            return
        from .store import open_reader

        try:
            if self._reader is None:
                self._reader = open_reader(self.url)
            self.learned.poll_kills(task_name, self._reader, now)
        except Exception as exc:  # noqa: BLE001 - a missed poll only delays what the next load reads
            logger.debug("oomless: could not read new memory kills from %s: %s", redact(self.url), exc)


_CLIENT: dict[str, _Client] = {}
_LOCK = threading.Lock()


def lookup_learned(
    url: str, key: Hashable, task_name: str, input_size: int | None = None, cap: int | None = None,
    name: str | None = None, retry: bool = False,
) -> tuple[Learnt | None, str]:
    """A client's (or the Airflow executor's) learned spec for ``key`` from the store at ``url``, read at
    most every :data:`REFRESH` seconds and checked for ``task_name``'s new memory kills every
    :data:`KILLS_EVERY` seconds, or at once for a ``retry`` (which may follow a kill); with it, or
    instead of it, a sentence saying why nothing is learned (``name``: the task, in that sentence)."""
    with _LOCK:
        client = _CLIENT.get(url)
        if client is None:
            client = _CLIENT[url] = _Client(url)
        client.refresh()
        client.kills(task_name, retry)
        found = client.learned.lookup(key, input_size, cap)
        failed = client.failed
    if found is not None:
        return found, found.describe(input_size, name)
    if failed:
        return None, f"nothing is learned: {failed}"
    return None, (f"nothing is learned for it yet: fewer than {MIN_SAMPLES} attempts in the last "
                  f"{WINDOW // 86400} days of {redact(url)}")


def resolve_learned(task_name: str, want: LearnedMemory, app_history: Any) -> Memory | None:
    """Client side: the concrete spec for ``want`` (see the module docstring for what is cached)."""
    from ..paths import history_url
    from ..settings import history

    url = want.history or history(app_history) or history_url()
    found, how = lookup_learned(url, task_name, task_name, want.input_size)
    if found is not None:
        logger.debug("oomless: %s gets %s, %s", task_name, found.memory, how)
        return found.memory
    return want.default
