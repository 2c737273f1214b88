"""What a governed worker started here would get: host, settings, mode, budget, tasks, observability.

:func:`diagnose` gathers it all into a :class:`~.facts.Diagnosis` without
printing anything, the way the worker itself would: the same cgroup detection,
the same settings reader, the same mode choice.  Everything is seen from the
running process: run it the way the worker runs, or the cgroup it inspects is
not the worker's.

Not here: the judgement of result backends, serializers and the claim check
(:mod:`.backend`), the wording of each line (:mod:`.checks`), printing
(:func:`oomless.cli.doctor.render`).
"""

from __future__ import annotations

import os
import platform
from typing import Any

from ...urls import redact
from ..common import AppNotLoaded, load_app
from .backend import judge_offload, judge_results
from .checks import checks
from .facts import (
    AIRFLOW_APP,
    Admission,
    Airflow,
    Budget,
    Cgroup,
    DefaultMemory,
    Diagnosis,
    Memory,
    Mode,
    Observe,
    Pool,
    TaskMemory,
    Versions,
    Watchdog,
)

__all__ = ["diagnose", "EXAMPLE_RATE"]

#: The allocation rate the overshoot example uses (a tight Python loop reaches ~1 GB/s).
EXAMPLE_RATE = 10**9

_CGROUP_NOTE = (
    "cgroup mode needs a writable memory cgroup: root on cgroup v1, or a cgroup v2 subtree delegated to "
    "the worker (systemd Delegate=yes, or a container given its own writable cgroup); containers "
    "usually see /sys/fs/cgroup read-only and get the watchdog"
)

# What the watchdog cannot see or stop (cgroup mode has none of these gaps); docs/guide.md §4 and §6.
_BLIND_SPOTS = (
    "a tmpfs file (/dev/shm, memfd) written with write() and closed between two looks, or written "
    "for the task by a process outside its tree",
    "a subprocess's first poll interval (what a freshly exec'd program holds in its first few ms)",
    "the kernel OOM killer on a loaded machine: its poll can come too late (a child the kernel "
    "kills is requeued as an eviction, a bounded number of times)",
)


class _Invalid(Exception):
    """The configuration cannot be used; the message says why."""


AIRFLOW_CONFIG = "oomless.airflow.celery_config.CELERY_CONFIG"


def airflow_app() -> tuple[str | None, str | None]:
    """Without ``-A`` on a host where Airflow is configured: ``(AIRFLOW_APP, None)`` when its Celery
    workers load oomless's config, else ``(None, why doctor cannot read [oomless])``; ``(None, None)``
    where there is no Airflow (Airflow is imported only when its home or a variable says it is set up)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    configured = (
        "AIRFLOW_HOME" in os.environ or os.path.exists(os.path.join(home, "airflow.cfg"))
        or any(key.startswith("AIRFLOW__") for key in os.environ)
    )
    if not configured:
        return None, None
    try:
        from airflow.configuration import conf
    except ImportError:
        return None, None
    options = str(conf.get("celery", "celery_config_options", fallback="") or "")
    if options.strip() == AIRFLOW_CONFIG:
        return AIRFLOW_APP, None
    executor = str(conf.get("core", "executor", fallback="") or "")
    if "Oomless" in executor or any(key.startswith("AIRFLOW__OOMLESS__") for key in os.environ):
        return None, (f"Airflow's [oomless] is set, but its Celery workers do not load it: [celery] "
                      f"celery_config_options is {options or 'unset'!r}, not {AIRFLOW_CONFIG}")
    return None, None


def diagnose(
    app_spec: str | None, enforcement: str | None, memory_budget: str | None, pool: str | None
) -> Diagnosis:
    """Everything ``doctor`` reports; ``error`` is set when a worker with these settings would refuse to start.

    ``app_spec`` is ``-A``'s app; ``enforcement``, ``memory_budget`` and
    ``pool`` override what the app's configuration says, as the worker's
    options would.
    """
    from ...enforce.modes import watchdog_problem
    from ...linux import cgroup, proc

    host = cgroup.detect()
    problem = watchdog_problem()
    found = Diagnosis(
        app=app_spec,
        versions=_versions(),
        memory=Memory(machine=proc.mem_total(), cgroup_limit=host.limit),
        cgroup=_cgroup(host),
        watchdog=Watchdog(works=problem is None, problem=problem, blind_spots=list(_BLIND_SPOTS)),
    )
    if app_spec is None:
        app_spec, found.airflow_note = airflow_app()
        found.app = app_spec
    try:
        _worker(found, host, app_spec, enforcement, memory_budget, pool)
    except _Invalid as exc:
        found.error = str(exc)
    found.checks = checks(found)
    return found


def _versions() -> Versions:
    import billiard
    import celery
    import kombu

    return Versions(
        python=platform.python_version(),
        celery=celery.__version__,
        billiard=billiard.__version__,
        kombu=kombu.__version__,
        kernel=f"{platform.system()} {platform.release()}",
    )


def _cgroup(host: Any) -> Cgroup:
    """The cgroup facts, and on cgroup v2 which of the worker group's own pressure signals eviction reads."""
    from ...units import format_size

    facts = Cgroup(version=host.version, path=host.path, writable=host.writable, reason=host.reason,
                   note=_CGROUP_NOTE)
    if host.version != 2 or host.path is None:
        return facts
    try:
        with open(os.path.join(host.path, "memory.high")) as fh:
            high = fh.read().strip()
    except OSError:
        high = "max"
    where = ("" if high == "max" else
             f"; its memory.high is {format_size(int(high))}: past it the kernel throttles the whole worker")
    from ...linux.cgroup.reads import GroupSignals

    signals = GroupSignals(host.path)  # what the worker reads: a psi=0 kernel's unreadable file is no PSI
    psi = signals.has_psi
    signals.close()
    if psi:
        pressure = ("eviction also reads this group's memory.events.local and PSI (memory.pressure): a task most "
                    "over its request is evicted when the group is at its memory.high or memory.max and its tasks "
                    f"stall on memory{where}")
    else:
        pressure = ("eviction also reads this group's memory.events.local, but this kernel has no PSI "
                    "(memory.pressure: CONFIG_PSI off or booted with psi=0): a stall at the group's memory.high "
                    f"evicts nothing, only an OOM event of the group does{where}")
    return Cgroup(version=host.version, path=host.path, writable=host.writable, reason=host.reason,
                  note=_CGROUP_NOTE, pressure=pressure, psi=psi, memory_high=None if high == "max" else int(high))


def _worker(
    found: Diagnosis, host: Any, app_spec: str | None, enforcement: str | None, memory_budget: str | None,
    pool: str | None,
) -> None:
    """Fill in what depends on the app and the settings, in the order a worker meets them; stops at an _Invalid."""
    from ...celery.config import load_settings
    from ...celery.offload import read_settings
    from ...enforce.modes import choose_mode
    from ...errors import EnforcementUnavailable, InvalidMemorySpec
    from ...units import format_size

    app = None
    conf: Any = {}
    if app_spec is not None:
        try:
            app = load_app(app_spec)
        except AppNotLoaded as exc:
            raise _Invalid(str(exc)) from exc
        conf = app.conf
    pool_name = pool or (str(conf.get("worker_pool") or "prefork") if app is not None else "prefork")
    isolating = _isolates(pool_name)
    found.pool = Pool(name=pool_name, isolates_tasks=isolating)
    try:
        settings = load_settings(conf, host, memory_budget)
    except (ValueError, InvalidMemorySpec) as exc:
        raise _Invalid(f"invalid configuration: {exc}") from exc
    interval = settings.poll_interval
    found.watchdog.poll_interval = interval
    found.watchdog.overshoot = (
        f"the watchdog polls every {interval * 1000:g} ms, so a task can overshoot its limit by about "
        f"allocation rate × poll interval before it is killed (e.g. {format_size(int(EXAMPLE_RATE * interval))} "
        f"at 1 GB/s); cgroup mode does not overshoot"
    )
    budget = settings.budget
    found.budget = Budget(bytes=budget.bytes, source=budget.source, auto=budget.auto, ceiling=budget.ceiling,
                          reserve=budget.reserve, warning=budget.warning or None)
    default = settings.default_memory
    found.default_memory = None if default is None else DefaultMemory(request=default.request, limit=default.limit)
    found.mode = Mode(requested=enforcement or settings.enforcement)
    if app is not None:
        found.tasks = _tasks(app, budget.bytes)
        found.results = judge_results(app)
        try:
            offload = read_settings(app.conf)
        except (ValueError, ImportError) as exc:
            raise _Invalid(f"invalid configuration: {exc}") from exc
        found.offload = judge_offload(offload, app.conf.broker_url)
    try:
        choice = choose_mode(found.mode.requested, host, pool_name, isolating)
    except EnforcementUnavailable as exc:
        raise _Invalid(str(exc)) from exc
    found.mode.chosen, found.mode.reason, found.mode.warning = choice.mode, choice.reason, choice.warning or None
    found.admission = _admission(settings, isolating, choice.mode)
    found.airflow = _airflow(choice.mode, host.version, settings.history)
    learned_tasks, learned_problem = _learned(settings.history) if settings.learned else (None, None)
    found.observe = Observe(
        history=None if settings.history is None else redact(settings.history),
        learned=settings.learned,
        metrics=None if settings.metrics_port is None else f"{settings.metrics_address}:{settings.metrics_port}",
        learned_tasks=learned_tasks,
        learned_problem=learned_problem,
    )


def _learned(url: str | None) -> tuple[int | None, str | None]:
    """How many tasks the worker would learn a size for from ``url`` now, or why it would learn none."""
    from ...history.learned import Learned
    from ...history.store import open_reader

    if url is None:
        return None, "no oomless_history to learn from"
    try:
        return Learned(lambda: open_reader(url)).load(), None
    except Exception as exc:  # noqa: BLE001 - any store error is the finding
        return None, str(exc)


def _isolates(pool_name: str) -> bool:
    """Whether the pool named ``pool_name`` runs each task in a child process of its own."""
    from celery.concurrency import get_implementation

    from ...celery.bootstep import isolating_pool

    try:
        cls = get_implementation(pool_name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isolating_pool(cls)[1]


def _tasks(app: Any, budget: int) -> list[TaskMemory]:
    """Each registered task's declared memory, and whether it is larger than the budget."""
    from ...celery.bootstep import task_spec
    from ...errors import InvalidMemorySpec

    found = []
    for name in sorted(app.tasks):
        if name.startswith("celery."):
            continue
        try:
            spec = task_spec(app.tasks[name])
        except InvalidMemorySpec as exc:
            raise _Invalid(f"invalid configuration: {exc}") from exc
        need = None if spec is None else max(spec.limit or 0, spec.request or 0)
        found.append(TaskMemory(
            name=name,
            request=None if spec is None else spec.request,
            limit=None if spec is None else spec.limit,
            infeasible=bool(need and need > budget),
        ))
    return found


def _admission(settings: Any, isolating: bool, mode: str) -> Admission:
    """Whether tasks are packed by their requests, and with which bounds (see docs/guide.md §3)."""
    on = settings.admission and isolating
    why = (
        "oomless_admission=False" if not settings.admission
        else "the pool does not use Celery's slot semaphore (prefork only)" if not isolating
        else "a task starts when a slot is free and its request fits the budget left"
    )
    return Admission(
        on=on,
        reason=why,
        max_waiting=settings.max_waiting,
        backfill_window=settings.backfill_window,
        give_back_after=settings.give_back_after,
        infeasible_queue=settings.infeasible_queue,
        # eviction needs the monitor thread of an enforcing mode
        eviction=on and mode in ("cgroup", "watchdog"),
        max_evictions=settings.max_evictions,
        eviction_margin=settings.eviction_margin,
    )


def _airflow(mode: str, cgroup_version: int | None, history: str | None) -> Airflow | None:
    """Whether Airflow tries run governed here, with which caveat, and what a try costs at least (None:
    Airflow is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    from ...history.recommend import AIRFLOW_TRY_FLOOR
    from ...units import format_size

    try:
        found = {name: version(name) for name in ("apache-airflow", "apache-airflow-providers-celery")}
    except PackageNotFoundError:
        return None
    smallest, tries = None, 0
    if history is not None:
        try:
            from ...history.store import open_reader

            store = open_reader(history)
            try:
                smallest, tries = store.try_floor("cgroup")
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - the history line says what is wrong with the store
            pass
    floor = (
        f"an Airflow try is charged at least {format_size(smallest)} before its code runs: the smallest peak of "
        f"{tries} tries that ended well in cgroup mode in the history" if smallest is not None else
        f"an Airflow try is charged about {format_size(AIRFLOW_TRY_FLOOR)} before its code runs in cgroup mode "
        f"(its task runner; Airflow 3.3 measured 57 MiB){'' if history else ': set history to measure yours'}"
    ) + "; no memory limit below that lets a try start, and oomless warns of one"
    if mode in ("cgroup", "watchdog"):
        how = f"a try over its limit loses its task runner and everything below it ({mode}"
        if mode == "cgroup" and cgroup_version == 2:
            how += ", cgroup v2: killed by oomless at memory.high, the kernel's limit a backstop above"
        how += "); its supervisor survives and Airflow fails or retries the try, with the reason in the try's log"
    else:
        how = "enforcement is off: tries are accounted, never killed"
    return Airflow(versions=found, enforcement=how, floor=floor, floor_bytes=smallest or AIRFLOW_TRY_FLOOR)
