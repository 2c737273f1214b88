"""The pool child's half: join the slot at birth, arm and disarm around each task.

Runs in billiard pool children only (``worker_process_init``, ``task_prerun``,
``task_postrun``); in the main process (eager tasks, the solo pool) these
handlers do nothing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import logging
import os
from collections.abc import Callable
from typing import Any

from billiard.process import current_process

from ..errors import MemoryLimitExceeded
from ..linux import proc
from ..spec import Memory
from . import compat, events, governor
from .republish import INPUT_SIZE
from .request import SPEC_KEY

logger = logging.getLogger(__name__)

__all__ = [
    "guard", "CHILD_OOM_SCORE_ADJ", "SUBPROCESSES", "input_size", "on_process_init", "on_task_prerun",
    "on_task_postrun",
]

#: ``memory_scope`` of a task whose own process survives a kill: only its
#: subprocesses die (Airflow's supervisor runs the task in a child process and
#: reports the try's failure itself).
SUBPROCESSES = "subprocesses"

#: oom_score_adj of pool children: if the kernel ever has to kill inside the
#: worker's cgroup, it picks a task (a pool child or its subprocess), not the
#: worker main process.
CHILD_OOM_SCORE_ADJ = 500

_slot: int | None = None
_spec = Memory()
_running: str | None = None  # the id of the task this child runs (between prerun and postrun)
_peak: tuple[str, int] | None = None  # (task id, peak) measured for Celery's line about it
_input_size: int | None = None  # what the running task said it reads (input_size())
_trimmed_at = 0  # this child's RSS after its last malloc_trim (or at birth)
_untrimmed = 0  # tasks since this child last read its RSS for the trim
#: RSS a task may leave its pool child above that before the C heap is trimmed
TRIM_AFTER = 4 * 2**20
#: A task that peaked below TRIM_AFTER cannot have left that much more behind, so its end does not
#: read the child's RSS; one such end in TRIM_EVERY does, for what small tasks leave, bit by bit.
TRIM_EVERY = 16
#: Largest input size accepted (1 EiB): anything above is a bug in the caller, not a size.
_MAX_INPUT = 2**60


def input_size(n_bytes: int) -> None:
    """Tell oomless how many bytes of input the running task processes.

    Call it inside a task (any time before it returns).  The history records it
    beside the task's peak, and ``oomless recommend`` fits peak against input
    size once enough sizes are recorded.  The caller may give the same hint with
    ``apply_async(..., input_size=n)``; a value set here wins.  Recorded for
    tasks that end by themselves in a prefork pool child; a task killed for
    memory keeps only the caller's hint.
    """
    global _input_size
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or not 0 <= n_bytes <= _MAX_INPUT:
        raise ValueError(f"oomless.input_size() takes a number of bytes (an int from 0 to 2**60), not {n_bytes!r}")
    _input_size = n_bytes


def _header_size(task: Any) -> int | None:
    value = task.request.get(INPUT_SIZE)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INPUT:
        return None  # broker headers are untrusted: anything else is ignored
    return value


def guard(task: Any) -> None:
    """Make a refusal at the task's own limit fail the task as :class:`MemoryLimitExceeded`.

    At a cgroup v1 limit the kernel pauses a page fault, which the governor
    then turns into a kill; but an allocation inside a system call (a
    ``write()`` to /dev/shm, a ``mmap`` with ``MAP_POPULATE``) is refused
    with ``ENOMEM``, and the task sees ``OSError`` or ``MemoryError`` first.
    Wraps the task's ``run`` (the instance attribute Celery's tracer calls).
    """
    if getattr(task.run, "oomless_guarded", False):
        return

    def wrap(run: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(run)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return run(*args, **kwargs)
            except (MemoryError, OSError) as exc:
                if _slot is None or (isinstance(exc, OSError) and exc.errno != errno.ENOMEM):
                    raise
                gov = governor.current
                found = gov.enforcer.refused_at_limit(_slot) if gov is not None else None
                if found is None:
                    raise
                limit, peak = found
                raise MemoryLimitExceeded(task.name, task.request.id, limit, peak, gov.mode) from exc  # type: ignore[union-attr]

        guarded.oomless_guarded = True  # type: ignore[attr-defined]
        return guarded

    compat.wrap_run(task, wrap)


def share_with_children() -> None:
    """In the main process, just before the pool forks: make the heap one the children share.

    * Python's cyclic GC writes to the header of every object it scans, so each
      child would copy most of the worker's heap on its first collections (about
      20 MiB a child here): objects frozen (``gc.freeze()``) are never scanned.
    * Celery's child start-up sets the parent-death signal through billiard, which,
      whenever cffi is installed (Airflow's dependencies bring it), parses a C
      declaration with pycparser; the first parse in a process builds the parser,
      about 3.5 MiB in every child.  Built once here, the children share it.
    """
    from billiard.util import get_pdeathsig

    with contextlib.suppress(OSError):  # not Linux: no child sets the signal either
        get_pdeathsig()
    gc.collect()
    gc.freeze()


class TaskLine(logging.Filter):
    """Puts the running task's memory on Celery's own line about it, a pool child's one line per
    task: ``Task etl.load[…] succeeded in 1.2s: 42 (oomless: peak 96.0 MiB, limit 256.0 MiB,
    request 256.0 MiB [cgroup])``; also on its "raised", "retry" and "ignored" lines.

    A filter on Celery's ``celery.app.trace`` logger (:func:`.compat.trace_logger`): it sees only
    records the logger's level lets through, so with the worker at ``-l warning`` a task that
    succeeds gets no line, as in Celery.
    The peak is measured when the line is made, after the task's code returned, and is the one
    the task's end reports (history, events).  A second line per task cost a pool child about as
    much as all of oomless's other per-task work.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if _running is not None and isinstance(args, dict) and args.get("id") == _running:
            try:
                text = events.figures(_task_peak(_running), _spec, governor.current.mode)  # type: ignore[union-attr]
                record.msg, record.args = f"{record.msg} (oomless: %(oomless)s)", {**args, "oomless": text}
            except Exception:  # noqa: BLE001 - Celery's line about its task must never fail for it
                logger.debug("oomless: cannot add the memory to Celery's line", exc_info=True)
        return True


_TASK_LINE = TaskLine()


def _task_peak(task_id: str) -> int:
    global _peak
    if _peak is None or _peak[0] != task_id:
        gov = governor.current
        assert gov is not None and _slot is not None
        _peak = (task_id, gov.enforcer.task_peak(_slot, proc.self_pid()))
    return _peak[1]


def on_process_init(**_: Any) -> None:
    global _slot, _trimmed_at
    gov = governor.current
    if gov is None:
        return
    index = getattr(current_process(), "index", None)
    pid = os.getpid()
    try:
        # Only ever raised: a score already higher (a Kubernetes BestEffort pod: 1000) stays, and
        # lowering one would need CAP_SYS_RESOURCE.
        if proc.oom_score_adj() < CHILD_OOM_SCORE_ADJ:
            proc.set_oom_score_adj(CHILD_OOM_SCORE_ADJ)
    except OSError as exc:
        logger.warning("oomless: pool child %d could not raise its oom_score_adj: %s", pid, exc)
    try:
        # Lead a process group of our own, so the watchdog can also reach
        # subprocesses orphaned when their parent died (they keep the group).
        os.setpgid(0, 0)
    except OSError as exc:
        logger.warning("oomless: pool child %d could not lead a process group: %s", pid, exc)
    if index is None or index >= gov.enforcer.table.size:
        logger.error("oomless: pool child %d has slot index %r outside the table; it runs unenforced", pid, index)
        return
    gov.enforcer.child_init(index, pid)
    _slot = index
    _trimmed_at = proc.rss(pid)
    trace = compat.trace_logger()
    if _TASK_LINE not in trace.filters:
        trace.addFilter(_TASK_LINE)


def _trim(after: int, rss: Callable[[], int], peak: int) -> None:
    """Give the heap's free memory back once this child sits ``after`` bytes above its last trim.

    What glibc keeps after a large task stays resident in the child: it would
    count in the slot's baseline and the worker's footprint (so in no task's
    request and against the budget) for as long as the child lives.  A read of
    ``/proc/self/statm`` after a task that peaked at ``after`` or more (and after
    one in :data:`TRIM_EVERY` others); the trim itself takes about 1 ms for 20 MiB.
    """
    global _trimmed_at, _untrimmed
    _untrimmed += 1
    if peak < after and _untrimmed < TRIM_EVERY:
        return
    _untrimmed = 0
    try:
        now = rss()
        if now - _trimmed_at < after:
            _trimmed_at = min(_trimmed_at, now)
            return
        proc.malloc_trim()
        _trimmed_at = rss()
    except OSError:
        pass


def on_task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    global _spec, _input_size, _running
    _input_size = None
    if _slot is None or task is None or task_id is None:
        return
    _running = task_id
    gov = governor.current
    assert gov is not None
    raw = task.request.get(SPEC_KEY)
    _spec = _spec_of(raw[0], raw[1]) if raw else _NO_SPEC
    gov.enforcer.task_start(_slot, proc.self_pid(), task_id, _spec, getattr(task, "memory_scope", None) == SUBPROCESSES)


_NO_SPEC = Memory()


#: The :class:`Memory` the main process resolved for a task (two sizes it checked), built once per
#: pair in this child.
_spec_of = functools.lru_cache(maxsize=256)(Memory)


def on_task_postrun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    global _running, _peak
    if _slot is None or task_id is None:
        return
    gov = governor.current
    assert gov is not None
    size = _input_size if _input_size is not None else (_header_size(task) if task is not None else None)
    pid = proc.self_pid()
    # The task's line was Celery's, from here (TaskLine), not from the busy main process.
    early = _peak[1] if _peak is not None and _peak[0] == task_id else None
    _running = _peak = None
    peak = gov.enforcer.task_end(_slot, pid, task_id, size, early)
    name = getattr(task, "name", "?")
    killed = gov.enforcer.clear_leftovers(_slot, pid)
    if gov.settings.malloc_trim:
        _trim(TRIM_AFTER, gov.enforcer.own.rss, peak)
    if killed:
        logger.warning(
            "oomless: %s[%s] left running when it returned: killed its processes %s, so they neither hold "
            "memory no task is charged for nor run beside the next task (oomless_leftovers='keep' keeps them)",
            name, task_id, killed,
        )
