"""``OomlessCeleryExecutor``: the CeleryExecutor that carries each try's memory to the worker.

Airflow 3 does not send ``executor_config`` to Celery workers (the
``ExecuteTask`` workload excludes it).  This subclass reads the ``oomless``
part when the scheduler queues a try, works out that try's memory (escalated
after memory-killed tries, see :mod:`oomless.airflow.tries`), and puts it in
two message headers when the try is published:

* ``oomless_memory``: the spec the governed worker admits and enforces;
* ``oomless_airflow``: try number, ``max_tries`` and the declaration, so that
  the worker can say in the try's log what the next try gets.

Tries without an ``oomless`` key are sent exactly as the CeleryExecutor sends
them.  A malformed declaration is refused when its DAG is parsed (the cluster
policy of :mod:`oomless.airflow.policy`); one that gets past a DAG processor
without oomless travels with the scheduler's reason in the ``oomless_invalid``
header, and the worker fails that try with that
:class:`~oomless.errors.InvalidMemorySpec`, in the try's log too.

Touch points in the provider (checked against apache-airflow 3.3.2 and
apache-airflow-providers-celery 3.26.0): ``queue_workload`` and
``_send_workloads_to_celery``.  Tries with a spec are published from the
scheduler process itself (the provider's own path for a single workload),
where the ``before_task_publish`` receiver below can add the headers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

from airflow.executors.workloads import ExecuteTask
from airflow.providers.celery.executors.celery_executor import CeleryExecutor
from celery import signals

from ..errors import InvalidMemorySpec
from ..spec import HEADER, INVALID_HEADER, LEARNED_HEADER, Memory
from ..units import format_size
from .provider import SECTION
from .spec import AIRFLOW_HEADER, KEY, TASK, TaskMemory, TryInfo
from .tries import count_memory_killed

logger = logging.getLogger(__name__)

__all__ = ["OomlessCeleryExecutor"]

#: (task instance id, try number) -> headers for the message about to be published.
_pending: dict[tuple[str, int], dict[str, Any]] = {}
_lock = threading.Lock()


def _ti_of(body: Any) -> tuple[str, int] | None:
    """(task instance id, try number) of an ``execute_workload`` message body (protocol 2)."""
    try:
        ti = json.loads(body[0][0])["ti"]
        return str(ti["id"]), int(ti["try_number"])
    except (TypeError, ValueError, KeyError, IndexError):
        return None


@signals.before_task_publish.connect(weak=False)
def _add_headers(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    if not _pending or sender != "execute_workload" or headers is None:
        return
    key = _ti_of(body)
    if key is None:
        return
    with _lock:
        extra = _pending.pop(key, None)
    if extra:
        headers.update(extra)


def _spec_words(spec: Memory) -> str:
    if spec.limit is None and spec.request is None:
        return "no memory spec (the worker's default)"
    return f"memory request {format_size(spec.request or 0)}, limit {format_size(spec.limit or 0)}"


def _fallback(base: Memory) -> str:
    return "it runs with the default= of memory('auto')" if base.limit is not None or base.request is not None \
        else "it runs with the worker's default memory"


class OomlessCeleryExecutor(CeleryExecutor):
    """The CeleryExecutor, plus each try's ``executor_config={"oomless": ...}`` in the message, and with
    ``[oomless] learned = True`` the learned size of tries that declare none."""

    _learned_conf: tuple[bool, str | None] | None = None

    def queue_workload(self, workload: Any, session: Any) -> None:
        super().queue_workload(workload, session)
        if isinstance(workload, ExecuteTask):
            try:
                self._plan(workload, session)
            except Exception:  # never stop the scheduler over one try's memory
                logger.exception("oomless: could not work out the memory of %s; it runs without", workload.ti.key)

    def _plan(self, workload: ExecuteTask, session: Any) -> None:
        ti = workload.ti
        config = ti.executor_config
        ours = isinstance(config, dict) and KEY in config
        learn_all, history = self._learning()
        if not ours and not learn_all:
            return
        key = (str(ti.id), int(ti.try_number))
        declared: TaskMemory | None = None
        if ours:
            try:
                declared = TaskMemory.from_config(config)
            except InvalidMemorySpec as exc:
                # Checked at parse time by oomless's cluster policy (oomless.airflow.policy); a DAG
                # processor without oomless lets it through, and the worker fails the try with this.
                logger.error("oomless: %s (task %s); the worker will fail this try", exc, ti.key)
                with _lock:
                    _pending[key] = {INVALID_HEADER: f"task {ti.dag_id}.{ti.task_id}: {exc}"}
                return
        source, learned = None, False
        if declared is None or declared.auto:
            declared, source, learned = self._learn(ti, declared, history)
        ids = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        killed = 0
        if declared.escalate is not None and ti.try_number > 1:
            killed = count_memory_killed(self.celery_app.backend, ids, ti.try_number)
        spec = declared.for_try(killed)
        if source is not None:
            source = f"{_spec_words(spec)}: {source}"
            logger.info("oomless: %s try %d runs with %s", ti.key, ti.try_number, source)
        info = TryInfo(ti.try_number, self._max_tries(ti, session), killed, declared, source)
        if killed:
            logger.info(
                "oomless: %s try %d gets %s after %d memory-killed tr%s (declared %s)",
                ti.key, ti.try_number, spec, killed, "y" if killed == 1 else "ies", declared.base,
            )
        headers: dict[str, Any] = {AIRFLOW_HEADER: info.to_header()}
        if spec.request is not None or spec.limit is not None:
            headers[HEADER] = spec.to_header()
            if learned:
                headers[LEARNED_HEADER] = 1  # a worker too small for it caps it instead of refusing the try
        with _lock:
            _pending[key] = headers
            while len(_pending) > 100_000:  # tries queued but never published (revoked, or the scheduler stopped)
                _pending.pop(next(iter(_pending)))

    def _learning(self) -> tuple[bool, str | None]:
        """``[oomless] learned`` and the history URL it learns from (read once; a bad value is one ERROR
        line, and no learning, never a failed try)."""
        if self._learned_conf is None:
            learn_all, url = False, None
            try:
                from airflow.configuration import conf

                from ..settings import history

                learn_all = conf.getboolean(SECTION, "learned", fallback=False)
                url = history(conf.get(SECTION, "history", fallback=None), f"[{SECTION}] history")
            except Exception as exc:  # noqa: BLE001 - the scheduler must go on
                logger.error("oomless: %s; no try is sized from the history", exc)
            if learn_all and url is None:
                logger.error("oomless: [%s] learned = True needs [%s] history, the store it learns from; tasks "
                             "run with their declared memory", SECTION, SECTION)
            self._learned_conf = (learn_all and url is not None, url)
        return self._learned_conf

    @staticmethod
    def _learn(ti: Any, declared: TaskMemory | None, history: str | None) -> tuple[TaskMemory, str, bool]:
        """The learned size of ``ti``'s DAG task as declared memory, a clause saying where it came from, and
        whether anything was learned."""
        from ..history.learned import airflow_key, lookup_learned

        escalate, cap = (declared.escalate, declared.max) if declared is not None else (None, None)
        fallback = declared.base if declared is not None else Memory()
        if history is None:
            return TaskMemory(fallback, escalate, cap, auto=True), (
                f'memory("auto") has no history to learn from: set [{SECTION}] history; {_fallback(fallback)}'), False
        found, how = lookup_learned(history, airflow_key(ti.dag_id, ti.task_id), TASK, cap=cap,
                                    name=f"{ti.dag_id}.{ti.task_id}", retry=ti.try_number > 1)
        if found is None:
            return TaskMemory(fallback, escalate, cap, auto=True), f"{how}; {_fallback(fallback)}", False
        return TaskMemory(found.memory, escalate, cap, auto=True), how, True

    @staticmethod
    def _max_tries(ti: Any, session: Any) -> int:
        from airflow.models.taskinstance import TaskInstance
        from sqlalchemy import select

        value = session.scalar(select(TaskInstance.max_tries).where(TaskInstance.id == ti.id))
        return int(value) if value is not None else 0

    def _send_workloads_to_celery(self, workload_tuples_to_send: Sequence[Any]) -> Any:
        if not _pending:
            return super()._send_workloads_to_celery(workload_tuples_to_send)
        from airflow.providers.celery.executors.celery_executor_utils import send_workload_to_executor

        ours: list[Any] = []
        others: list[Any] = []
        for item in workload_tuples_to_send:
            ti = getattr(item[1], "ti", None)
            (ours if ti is not None and (str(ti.id), int(ti.try_number)) in _pending else others).append(item)
        # Ours are published here, in the scheduler process, where _add_headers runs; the
        # provider may publish the others from a process pool, as it does without oomless.
        sent = [send_workload_to_executor(item) for item in ours]
        if others:
            sent += list(super()._send_workloads_to_celery(others))
        return sent
