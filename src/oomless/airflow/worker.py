"""The Airflow side of a governed Celery worker (a :class:`~oomless.celery.plugin.Plugin`).

* ``execute_workload`` runs with ``memory_scope="subprocesses"``: on a breach
  oomless kills the try's task runner and everything below it (a
  BashOperator's ``bash`` and its children too), never the supervisor in the
  pool child.  The supervisor sees its runner die and ends the try through
  Airflow's normal path (``up_for_retry`` or ``failed``), with no zombie
  ``running`` state and no heartbeat timeout; the Celery worker and the other
  tries on it keep running.
* Right before the kill (monitor thread) one line goes into that try's log
  file, the file Airflow's supervisor writes and ``serve-logs`` serves: why,
  the limit, the peak, and what the next try gets.
* Right after it (from the event loop, or when the try ends if the kill
  notice comes later), the kill is recorded for the executor (:mod:`.tries`),
  which escalates the next try's memory.
* A try refused before it ran (its memory can never fit this worker, or its
  declaration is malformed) gets its reason in its log file as well, and is
  failed at once through the API server, with no retry (:mod:`.refusal`).

Broker messages are untrusted: the log path comes from the workload (what the
supervisor itself uses) and must stay inside ``[logging] base_log_folder``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import outcomes
from ..celery.child import SUBPROCESSES
from ..celery.governor import Governor
from ..celery.plugin import Plugin
from ..enforce.reports import KillReport
from ..units import format_size
from . import messages
from .metrics import TryMetrics
from .refusal import fail_refused_try
from .spec import AIRFLOW_HEADER, TASK, TRY_FLOOR, TryInfo, below_floor
from .tries import record_kill

logger = logging.getLogger(__name__)

__all__ = ["AirflowPlugin", "TASK"]


@dataclass(frozen=True)
class _Try:
    ids: tuple[str, str, str, int]  # dag_id, run_id, task_id, map_index
    try_number: int
    log_file: str | None
    info: TryInfo | None


def _write_line(path: str, text: str, level: str = "error") -> None:
    """Append one structured line, in the JSON form Airflow's supervisor writes, to a try's log."""
    line = json.dumps(
        {"timestamp": datetime.now(timezone.utc).isoformat(), "level": level, "event": text, "logger": "oomless"}
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


class AirflowPlugin(Plugin):
    """Follows the tries that run on a governed Airflow Celery worker."""

    def __init__(self) -> None:
        self._tries: OrderedDict[str, _Try] = OrderedDict()
        self._recorded: set[str] = set()  # tasks whose kill is recorded (until they end)
        self._backend: Any = None
        self._base: str | None = None
        self._metrics: TryMetrics | None = None
        self._mode: str | None = None
        #: the smallest peak of a try that ended well here: what a try costs on this worker at least
        self._floor: int | None = None

    def setup(self, app: Any, governor: Governor) -> None:
        task = app.tasks.get(TASK)
        if task is None:
            logger.warning("oomless: this worker has no %s task; is it an Airflow Celery worker?", TASK)
            return
        task.memory_scope = SUBPROCESSES
        self._mode = governor.mode
        self._backend = app.backend
        self._metrics = TryMetrics.from_airflow()
        try:
            from airflow.configuration import conf

            self._base = os.path.realpath(conf.get("logging", "base_log_folder"))
        except Exception as exc:
            logger.warning("oomless: no Airflow base_log_folder (%s); kills are not written to task logs", exc)

    # -- main thread ------------------------------------------------------------
    def _parse(self, req: Any) -> _Try | None:
        if req.name != TASK:
            return None
        try:
            workload = json.loads(req.args[0])
            ti = workload["ti"]
            ids = (str(ti["dag_id"]), str(ti["run_id"]), str(ti["task_id"]), int(ti.get("map_index", -1)))
            try_number = int(ti["try_number"])
            log_path = workload.get("log_path")
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            logger.warning("oomless: %s[%s] carries no Airflow workload I understand (%s)", req.name, req.id, exc)
            return None
        info = TryInfo.from_header(req.request_dict.get(AIRFLOW_HEADER))
        return _Try(ids, try_number, self._log_file(log_path), info)

    def _log_file(self, log_path: Any) -> str | None:
        if self._base is None or not isinstance(log_path, str) or not log_path:
            return None
        path = os.path.realpath(os.path.join(self._base, log_path))
        if not path.startswith(self._base + os.sep):
            logger.warning("oomless: log path %r leaves base_log_folder %s; not writing to it", log_path, self._base)
            return None
        return path

    def received(self, req: Any) -> None:
        found = self._parse(req)
        if found is not None:
            self._tries[req.id] = found
            while len(self._tries) > 10_000:  # messages that never ended here (given back, re-routed)
                self._tries.popitem(last=False)
            if found.info is not None and found.info.source is not None:
                self._say(found, messages.learned(found.info.source), "info")
            low = below_floor(req.oomless_spec.limit, self.floor)
            if low is not None:
                self._say(found, f"oomless: {low}.", "warning")

    @property
    def floor(self) -> int:
        """What a try costs here at least: the smallest peak of one that ended well, else (cgroup mode)
        Airflow's measured :data:`~.spec.TRY_FLOOR` (the watchdog, which measures less, waits for one)."""
        if self._floor is not None:
            return self._floor
        return TRY_FLOOR if self._mode == "cgroup" else 0

    def _say(self, found: _Try, text: str, level: str = "error") -> None:
        """One line into the try's log file (created as the supervisor would, when it is not there yet)."""
        if found.log_file is None:
            return
        try:
            from airflow.sdk.log import init_log_file

            init_log_file(os.path.relpath(found.log_file, self._base))
            _write_line(found.log_file, text, level)
        except Exception as err:
            logger.warning("oomless: could not write to the log of %s try %d: %s", found.ids, found.try_number, err)

    def refused(self, req: Any, exc: BaseException) -> None:
        found = self._tries.pop(req.id, None) or self._parse(req)
        if found is None:
            return
        # Failed at once through the API server (no retry, its log served), see .refusal.
        final = fail_refused_try(json.loads(req.args[0]), f"{'/'.join(map(str, found.ids))} try {found.try_number}")
        self._say(found, messages.infeasible(exc, final))  # the try never started: no file yet

    def attempt_fields(self, req: Any) -> dict[str, Any]:
        # A try refused before it started (infeasible) was never received: read its ids from the message.
        found = self._tries.get(req.id) or self._parse(req)
        if found is None:
            return {}
        dag_id, run_id, task_id, map_index = found.ids
        return {"dag_id": dag_id, "run_id": run_id, "af_task_id": task_id, "map_index": map_index,
                "try_number": found.try_number}

    def measured(self, req: Any, outcome: str, peak: int | None) -> None:
        found = self._tries.get(req.id)
        if found is not None and outcome == outcomes.OK and peak:
            self._floor = peak if self._floor is None else min(self._floor, peak)
        if self._metrics is not None and found is not None:
            spec = req.oomless_spec
            self._metrics.ended(found.ids[0], found.ids[2], outcome, peak, spec.request, spec.limit)

    def metric_labels(self, req: Any) -> dict[str, str]:
        found = self._tries.get(req.id)
        if found is None:
            return {}
        dag_id, _, task_id, _ = found.ids  # never the run id or map index: one series per task
        return {"dag_id": dag_id, "task_id": task_id}

    def ended(self, req: Any, outcome: str, report: KillReport | None) -> None:
        found = self._tries.pop(req.id, None)
        if report is not None and found is not None and req.id not in self._recorded:
            self._record(req.id, found, report)  # the kill notice came too late to do it
        self._recorded.discard(req.id)

    # -- monitor thread ---------------------------------------------------------
    def before_kill(self, report: KillReport) -> None:
        found = self._tries.get(report.task_id)
        if found is None or found.log_file is None or not report.spared:
            return
        if report.reason == "evicted":
            text = messages.evicted(found.info, report.peak, report.request, report.detail)
        else:
            text = messages.killed(found.info, report.limit, report.peak)
        try:
            _write_line(found.log_file, text)
        except OSError as exc:
            logger.warning("oomless: could not write to the log of %s try %d: %s", found.ids, found.try_number, exc)

    # -- event loop -------------------------------------------------------------
    def killed(self, req: Any, report: KillReport) -> None:
        found = self._tries.get(req.id)
        if found is not None:
            self._record(req.id, found, report)

    def _record(self, task_id: str, found: _Try, report: KillReport) -> None:
        """Record a memory kill for the executor, once, as soon as the event loop hears of it."""
        if report.reason != "limit" or not report.spared or self._backend is None:
            return
        self._recorded.add(task_id)
        try:
            record_kill(self._backend, found.ids, found.try_number, report.limit, report.peak)
        except Exception as exc:
            logger.error(
                "oomless: could not record the memory kill of %s try %d (%s); its next try will not escalate",
                found.ids, found.try_number, exc,
            )
        else:
            logger.warning(
                "oomless: Airflow task %s try %d killed at its memory limit of %s (peak %s); recorded for "
                "the escalation of its next try",
                "/".join(map(str, found.ids)), found.try_number, format_size(report.limit), format_size(report.peak),
            )
