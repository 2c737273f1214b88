"""doctor's lines: one :class:`~.facts.Check` per fact, worded from a :class:`~.facts.Diagnosis`.

Each check has the name shown at the start of its line, a state (``ok``,
``warn``, ``fail``), the sentence, the lines under it, and the figures the
sentence is about.  The order of :func:`checks` is the order of the report.

Not here: gathering the facts (:mod:`.diagnose`, :mod:`.backend`) or printing
the lines (:func:`oomless.cli.doctor.render`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

from ...units import format_size
from .facts import AIRFLOW_APP, Check, Diagnosis, State

__all__ = ["checks"]

_FOOTPRINT = (
    "the footprint (main process, every pool child, the rest of the worker's cgroup) is measured while the worker "
    "runs: its log says 'oomless: budget … = …' with every part, and `oomless top` / the oomless_footprint_bytes "
    "metric show it live"
)


def checks(found: Diagnosis) -> list[Check]:
    """The lines of doctor's report on ``found``, in the order they are shown."""
    return list(_host(found)) + list(_worker(found)) + list(_app(found))


def _warn_if(problem: object) -> State:
    return "warn" if problem else "ok"


def _host(found: Diagnosis) -> Iterator[Check]:
    """What this host offers: versions, memory, cgroup, PSI, watchdog."""
    v = found.versions
    yield Check("host", "ok", f"{v.kernel}; Python {v.python}, Celery {v.celery}, billiard {v.billiard}, "
                              f"kombu {v.kombu}", figures=asdict(v))
    mem = found.memory
    limit = mem.cgroup_limit
    yield Check("memory", "ok", f"machine {format_size(mem.machine)}; "
                                f"this process's cgroup limit {'none' if limit is None else format_size(limit)}",
                figures=asdict(mem))
    cg = found.cgroup
    where = "no memory cgroup" if cg.version is None else f"v{cg.version} at {cg.path}"
    yield Check("cgroup", _warn_if(not cg.writable),
                f"{where}: writable" if cg.writable else f"{where}: NOT usable: {cg.reason}", notes=(cg.note,),
                figures={"version": cg.version, "path": cg.path, "writable": cg.writable})
    if cg.pressure:
        yield Check("pressure", _warn_if(not cg.psi), cg.pressure,
                    figures={"psi": cg.psi, "memory_high": cg.memory_high})
    wd = found.watchdog
    notes = ([wd.overshoot] if wd.overshoot else []) + [
        f"the watchdog cannot see or stop: {blind}" for blind in wd.blind_spots]
    yield Check("watchdog", _warn_if(not wd.works),
                "works (/proc is readable)" if wd.works else f"cannot work: {wd.problem}", notes=tuple(notes),
                figures={"works": wd.works, "poll_interval": wd.poll_interval})


def _worker(found: Diagnosis) -> Iterator[Check]:
    """What a worker with these settings would run: pool, mode, budget, admission, eviction, observability."""
    if found.app == AIRFLOW_APP:
        yield Check("app", "ok", "Airflow's Celery worker: settings from [oomless] (airflow.cfg and "
                                 "AIRFLOW__OOMLESS__* variables), as `airflow celery worker` reads them",
                    notes=(f"the same as -A {AIRFLOW_APP}",), figures={"app": found.app})
    elif found.airflow_note is not None:
        yield Check("app", "warn", f"{found.airflow_note}; these figures ignore [oomless]",
                    figures={"app": None})
    if found.pool is not None:
        pool = found.pool
        yield Check("pool", _warn_if(not pool.isolates_tasks), pool.name + (
            " (each task runs in a pool child: limits are enforced per task)" if pool.isolates_tasks
            else " (runs tasks inside the worker process: limits cannot be enforced)"), figures=asdict(pool))
    if found.mode is not None:
        mode = found.mode
        if mode.chosen is not None:
            yield Check("mode", _warn_if(mode.warning), f"{mode.chosen} (requested {mode.requested}): {mode.reason}",
                        figures={"requested": mode.requested, "chosen": mode.chosen})
        else:
            # not chosen: the diagnosis stopped at an error first
            yield Check("mode", "fail", f"requested {mode.requested}: cannot work here (see the error below)",
                        figures={"requested": mode.requested, "chosen": None})
    if found.budget is not None:
        budget = found.budget
        said = f"{format_size(budget.bytes)} ({budget.source})"
        yield Check("budget", _warn_if(budget.warning), f"at most {said}" if budget.auto else said,
                    notes=(_FOOTPRINT,) if budget.auto else (),
                    figures={"bytes": budget.bytes, "auto": budget.auto, "ceiling": budget.ceiling,
                             "reserve": budget.reserve})
    if found.admission is not None:
        yield from _admission(found)
    if found.observe is not None:
        obs = found.observe
        yield Check("history", "ok", f"every attempt is recorded in {obs.history}" if obs.history else (
            "off: set oomless_history = 'default' (an SQLite file) or an SQLAlchemy URL to record every attempt "
            "for oomless recommend and oomless report (docs/history.md)"),
            figures={"url": obs.history, "learned": obs.learned})
        if obs.learned:
            from ...history.learned import MIN_SAMPLES, WINDOW

            window = f"the last {WINDOW // 86400} days"
            problem = obs.learned_problem or f"no task has {MIN_SAMPLES} samples in {window}"
            yield Check("learned", "ok" if obs.learned_tasks else "warn", (
                f"tasks that declare no memory get their learned size: {obs.learned_tasks} task(s) have one in "
                f"{obs.history} ({window}, at least {MIN_SAMPLES} samples each)" if obs.learned_tasks else
                f"oomless_learned is on, but no task has a learned size yet: {problem}; tasks run with their "
                f"declared or default memory until one has"),
                figures={"url": obs.history, "tasks": obs.learned_tasks, "problem": obs.learned_problem})
        yield Check("metrics", "ok", f"Prometheus metrics on http://{obs.metrics}/metrics" if obs.metrics
                    else "off: set oomless_metrics_port to serve Prometheus metrics (on 127.0.0.1)",
                    figures={"address": obs.metrics})
    if found.airflow is not None:
        af = found.airflow
        yield Check("airflow", "ok", ", ".join(f"{k} {v}" for k, v in af.versions.items()) + "; see docs/airflow.md",
                    notes=(af.enforcement, af.floor), figures={**af.versions, "try_floor": af.floor_bytes})


def _admission(found: Diagnosis) -> Iterator[Check]:
    adm = found.admission
    assert adm is not None
    figures = {"on": adm.on, "max_waiting": adm.max_waiting, "backfill_window": adm.backfill_window,
               "give_back_after": adm.give_back_after, "infeasible_queue": adm.infeasible_queue}
    if not adm.on:
        yield Check("admission", "ok", f"off: {adm.reason}; tasks start by slot only, as in vanilla Celery",
                    figures=figures)
        return
    give_back = f"{adm.give_back_after:g} s" if adm.give_back_after else "never"
    yield Check("admission", "ok", f"on: {adm.reason}; at most {adm.max_waiting or 'pool size'} waiting that cannot "
                                   f"fit; backfill window {adm.backfill_window:g} s; give back after {give_back}",
                notes=("infeasible requests " + (f"go to queue {adm.infeasible_queue!r} (once)"
                                                 if adm.infeasible_queue else "fail at once"),),
                figures=figures)
    yield Check("eviction", "ok", f"on: the task most over its request is requeued (at most {adm.max_evictions} "
                                  f"times) when tasks outgrow the budget or less than "
                                  f"{format_size(adm.eviction_margin)} is available" if adm.eviction
                else "off: needs an enforcing mode (cgroup or watchdog)",
                figures={"on": adm.eviction, "max_evictions": adm.max_evictions,
                         "eviction_margin": adm.eviction_margin})


def _app(found: Diagnosis) -> Iterator[Check]:
    """What the app declares: default memory, its tasks, results, serializers, the claim check."""
    if found.budget is not None:
        default = found.default_memory
        yield Check("default", "ok", "tasks without memory= are accounted, not limited (oomless_default_memory unset)"
                    if default is None else f"tasks without memory= get request {format_size(default.request)}, "
                                            f"limit {format_size(default.limit)}",
                    figures={} if default is None else asdict(default))
    if found.tasks is not None:
        declared = [t for t in found.tasks if t.limit is not None or t.request is not None]
        infeasible = [t.name for t in declared if t.infeasible]
        yield Check("tasks", _warn_if(infeasible), f"{len(found.tasks)} registered, {len(declared)} declare memory=",
                    notes=tuple(f"{t.name}: request {format_size(t.request)}, limit {format_size(t.limit)}"
                                + ("  INFEASIBLE: larger than the budget, the worker will refuse it"
                                   if t.infeasible else "") for t in declared),
                    figures={"registered": len(found.tasks), "declared": len(declared), "infeasible": infeasible})
    if found.results is not None:
        res = found.results
        figures = {"backend": res.backend, "kind": res.kind, "expires": res.expires}
        if res.kind == "disabled":
            yield Check("results", _warn_if(res.problems), "none: result_backend is unset, results are not stored",
                        figures=figures)
        else:
            yield Check("results", _warn_if(res.problems), res.backend + (f" ({res.kind})" if res.kind else "")
                        + (f": {res.expiry}" if res.expiry else ""), figures=figures)
        ser = res.serializers
        yield Check("messages", _warn_if(res.pickle),
                    f"task {ser.task}, result {ser.result}; accepted: {', '.join(ser.accept)}"
                    + ("" if ser.result_accept == ser.accept else f"; results accepted: {', '.join(ser.result_accept)}")
                    + " (measured costs: docs/data.md)", figures={**asdict(ser), "pickle_in": res.pickle_in})
    if found.offload is not None:
        off = found.offload
        figures = {"store": off.store, "threshold": off.threshold, "ttl": off.ttl, "limit": off.limit,
                   "broker": off.broker}
        if off.store:
            yield Check("offload", _warn_if(off.problems), f"on: arguments and results over "
                        f"{format_size(off.threshold)} travel by reference through {off.store} (arguments kept "
                        f"{(off.ttl or 0) / 86400:g} days; results until forgotten or expired)", figures=figures)
        else:
            yield Check("offload", _warn_if(off.problems), f"off: a task message over {format_size(off.limit)} (what "
                        f"{off.broker} practically carries; oomless_max_message_size) is refused before it is sent; "
                        f"set oomless_offload = True or a shared fsspec URL to send large values by reference "
                        f"(docs/data.md)", figures=figures)
