"""``oomless doctor``: what this host offers a governed worker, the mode it would run, the budget.

Everything is seen from the process running ``doctor``: run it the way the
worker runs (same user, same container or systemd unit), or the cgroup it
inspects is not the worker's.

Exit status: 0 when a worker started with these settings would run; 2 when it
would refuse to start (the requested enforcement mode cannot work here, or the
configuration is invalid).  ``--json`` prints one JSON object either way.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..enforce.modes import MODES
from ..urls import redact
from .common import AppNotLoaded, load_app

__all__ = ["doctor", "diagnose"]

POOLS = ("prefork", "solo", "threads")

#: The allocation rate the overshoot example uses (a tight Python loop reaches ~1 GB/s).
EXAMPLE_RATE = 10**9


class _Invalid(Exception):
    """The configuration cannot be used; the message says why."""


def _load_app(spec: str) -> Any:
    try:
        return load_app(spec)
    except AppNotLoaded as exc:
        raise _Invalid(str(exc)) from exc


def diagnose(
    app_spec: str | None, enforcement: str | None, memory_budget: str | None, pool: str | None
) -> dict[str, Any]:
    """Everything ``doctor`` reports, as a JSON-safe dict; ``error`` is set when a worker would refuse to start."""
    import billiard
    import celery
    import kombu

    from ..celery.bootstep import task_spec
    from ..celery.config import load_settings
    from ..enforce.modes import choose_mode, watchdog_problem
    from ..errors import EnforcementUnavailable, InvalidMemorySpec
    from ..linux import cgroup, proc
    from ..units import format_size

    report: dict[str, Any] = {
        "ok": False,
        "error": None,
        "app": app_spec,
        "warnings": [],
        "versions": {
            "python": platform.python_version(),
            "celery": celery.__version__,
            "billiard": billiard.__version__,
            "kombu": kombu.__version__,
            "kernel": f"{platform.system()} {platform.release()}",
        },
    }
    machine = proc.mem_total()
    host = cgroup.detect()
    report["memory"] = {"machine": machine, "cgroup_limit": host.limit}
    report["cgroup"] = {
        "version": host.version,
        "path": host.path,
        "writable": host.writable,
        "reason": host.reason,
        "note": (
            "cgroup mode needs a writable memory cgroup: root on cgroup v1, or a cgroup v2 subtree delegated to "
            "the worker (systemd Delegate=yes, or a container given its own writable cgroup); containers "
            "usually see /sys/fs/cgroup read-only and get the watchdog"
        ),
    }
    report["cgroup"]["pressure"] = _group_pressure(host)
    problem = watchdog_problem()
    report["watchdog"] = {
        "works": problem is None, "problem": problem,
        # What the watchdog cannot see or stop (cgroup mode has none of these gaps); docs/guide.md §4 and §6.
        "blind_spots": [
            "a tmpfs file (/dev/shm, memfd) written with write() and closed between two looks, or written "
            "for the task by a process outside its tree",
            "a subprocess's first poll interval (what a freshly exec'd program holds in its first few ms)",
            "the kernel OOM killer on a loaded machine: its poll can come too late (a child the kernel "
            "kills is requeued as an eviction, a bounded number of times)",
        ],
    }

    app = None
    try:
        conf: Any = {}
        if app_spec is not None:
            app = _load_app(app_spec)
            conf = app.conf
        pool_name = pool or (str(conf.get("worker_pool") or "prefork") if app is not None else "prefork")
        isolating = _isolates(pool_name)
        report["pool"] = {"name": pool_name, "isolates_tasks": isolating}
        try:
            settings = load_settings(conf, host, memory_budget)
        except (ValueError, InvalidMemorySpec) as exc:
            raise _Invalid(f"invalid configuration: {exc}") from exc
        interval = settings.poll_interval
        report["watchdog"]["poll_interval"] = interval
        report["watchdog"]["overshoot"] = (
            f"the watchdog polls every {interval * 1000:g} ms, so a task can overshoot its limit by about "
            f"allocation rate × poll interval before it is killed (e.g. {format_size(int(EXAMPLE_RATE * interval))} "
            f"at 1 GB/s); cgroup mode does not overshoot"
        )
        report["budget"] = {
            "bytes": settings.budget.bytes, "source": settings.budget.source, "auto": settings.budget.auto,
            "ceiling": settings.budget.ceiling, "reserve": settings.budget.reserve,
        }
        if settings.budget.warning:
            report["warnings"].append(settings.budget.warning)
        report["default_memory"] = (
            None if settings.default_memory is None
            else {"request": settings.default_memory.request, "limit": settings.default_memory.limit}
        )
        requested = enforcement or settings.enforcement
        report["mode"] = {"requested": requested, "chosen": None, "reason": None, "warning": None}
        if app is not None:
            report["tasks"] = _tasks(app, settings.budget.bytes, task_spec)
            report["results"] = _results(app)
            report["warnings"].extend(report["results"]["problems"])
            report["offload"] = _offload(app)
            report["warnings"].extend(report["offload"]["problems"])
        try:
            choice = choose_mode(requested, host, pool_name, isolating)
        except EnforcementUnavailable as exc:
            raise _Invalid(str(exc)) from exc
        report["mode"].update(chosen=choice.mode, reason=choice.reason, warning=choice.warning)
        if choice.warning:
            report["warnings"].append(choice.warning)
        report["admission"] = _admission(settings, isolating, choice.mode)
        report["airflow"] = _airflow(choice.mode, host.version)
        report["observe"] = _observe(settings)
    except _Invalid as exc:
        report["error"] = str(exc)
        return report
    report["ok"] = True
    return report


def _admission(settings: Any, isolating: bool, mode: str) -> dict[str, Any]:
    """Whether tasks are packed by their requests, and with which bounds (see docs/guide.md §3)."""
    on = settings.admission and isolating
    why = (
        "oomless_admission=False" if not settings.admission
        else "the pool does not use Celery's slot semaphore (prefork only)" if not isolating
        else "a task starts when a slot is free and its request fits the budget left"
    )
    return {
        "on": on,
        "reason": why,
        "max_waiting": settings.max_waiting,
        "backfill_window": settings.backfill_window,
        "give_back_after": settings.give_back_after,
        "infeasible_queue": settings.infeasible_queue,
        # eviction needs the monitor thread of an enforcing mode
        "eviction": on and mode in ("cgroup", "watchdog"),
        "max_evictions": settings.max_evictions,
        "eviction_margin": settings.eviction_margin,
    }


def _observe(settings: Any) -> dict[str, Any]:
    """History, learned sizes and metrics: where they go, or how to turn them on (docs/history.md)."""
    history = None
    if settings.history is not None:
        history = redact(settings.history)
    return {
        "history": history,
        "learned": settings.learned,
        "metrics": None if settings.metrics_port is None else f"{settings.metrics_address}:{settings.metrics_port}",
    }


def _group_pressure(host: Any) -> str | None:
    """cgroup v2: which of the worker group's own pressure signals eviction reads (None: not v2)."""
    from ..units import format_size

    if host.version != 2 or host.path is None:
        return None
    try:
        with open(os.path.join(host.path, "memory.high")) as fh:
            high = fh.read().strip()
    except OSError:
        high = "max"
    where = ("" if high == "max" else
             f"; its memory.high is {format_size(int(high))}: past it the kernel throttles the whole worker")
    from ..linux.cgroup.reads import GroupSignals

    signals = GroupSignals(host.path)  # what the worker reads: a psi=0 kernel's unreadable file is no PSI
    psi = signals.has_psi
    signals.close()
    if psi:
        return ("eviction also reads this group's memory.events.local and PSI (memory.pressure): a task most over "
                "its request is evicted when the group is at its memory.high or memory.max and its tasks stall on "
                f"memory{where}")
    return ("eviction also reads this group's memory.events.local, but this kernel has no PSI (memory.pressure: "
            "CONFIG_PSI off or booted with psi=0): a stall at the group's memory.high evicts nothing, only an OOM "
            f"event of the group does{where}")


def _airflow(mode: str, cgroup_version: int | None) -> dict[str, Any] | None:
    """Whether Airflow tries run governed here, and with which caveat (None: Airflow is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = {name: version(name) for name in ("apache-airflow", "apache-airflow-providers-celery")}
    except PackageNotFoundError:
        return None
    if mode in ("cgroup", "watchdog"):
        how = f"a try over its limit loses its task runner and everything below it ({mode}"
        if mode == "cgroup" and cgroup_version == 2:
            how += ", cgroup v2: killed by oomless at memory.high, the kernel's limit a backstop above"
        how += "); its supervisor survives and Airflow fails or retries the try, with the reason in the try's log"
    else:
        how = "enforcement is off: tries are accounted, never killed"
    return {"versions": found, "enforcement": how}


#: Where results belong instead (the fix of every result-backend warning).
RESULTS_FIX = (
    "use Redis (result_backend = 'redis://host:6379/1') or a database (result_backend = "
    "'db+postgresql+psycopg://user@host/db'; for Airflow, [celery] result_backend on its metadata PostgreSQL) "
    "with result_expires set"
)

#: What every pickle warning says (the measured cost is in docs/data.md).
PICKLE_RISK = (
    "an explicit opt-in, and a risky one: decoding a pickle runs whatever code the message carries, so anyone who can "
    "write to the broker (or to the result backend, for the clients that read results) can run code in the "
    "workers; keep json, Celery's default, unless every producer and the broker are trusted; what pickle saves, "
    "measured in docs/data.md (Serializers and result backends): ~10 µs per message against json, and seconds "
    "only on payloads of tens of MiB, which should travel by reference, not in messages"
)


def _results(app: Any) -> dict[str, Any]:
    """Where task results go, whether they expire, and which serializers are used, judged from the configuration.

    Nothing is connected: a backend that is down is judged the same as one that is up.  See docs/data.md.
    """
    from datetime import timedelta

    from celery.app.backends import by_url
    from kombu.serialization import registry

    conf = app.conf
    setting = conf.result_backend
    problems: list[str] = []
    shown = "none" if not setting else (
        redact(setting) if isinstance(setting, str) else getattr(setting, "__name__", repr(setting)))
    try:
        cls: Any
        url: str | None
        cls, url = by_url(setting, app.loader) if not isinstance(setting, type) else (setting, None)
    except Exception as exc:  # noqa: BLE001  (an unknown alias or a missing driver: say so, judge the rest)
        return {"backend": shown, "kind": None, "expires": None, "expiry": None, "storing": [],
                "serializers": _serializers(conf, registry),
                "problems": [f"result_backend {shown} cannot be loaded: {exc}"]
                + _pickle_problems(conf, registry)}
    kind = ("disabled" if cls.__name__ == "DisabledBackend"
            else "rpc" if cls.__name__ == "RPCBackend"
            else "memory" if cls.__name__ == "CacheBackend" and (url or "").startswith("memory")
            else cls.__name__.removesuffix("Backend").lower())

    storing = [name for name in sorted(app.tasks)
               if not name.startswith("celery.") and not app.tasks[name].ignore_result]
    # An app without tasks of its own (they are registered elsewhere) stores results unless told not to.
    stores = bool(storing) or (not [n for n in app.tasks if not n.startswith("celery.")]
                               and not conf.task_ignore_result)
    which = ("task " + storing[0] + " keeps its results (ignore_result=False)" if len(storing) == 1
             else f"{len(storing)} tasks keep their results (ignore_result=False, e.g. {storing[0]})" if storing
             else "tasks keep their results (task_ignore_result=False)")

    if kind == "rpc":
        problems.append(
            f"result_backend {shown}: results travel back in the reply queue of the client that sent the task: "
            "they are lost when that client restarts, only that client can read them (once), and neither "
            f"Airflow nor Flower can see them; {RESULTS_FIX}")
    elif kind == "memory" and stores:
        problems.append(
            f"result_backend {shown} keeps results in the memory of the process that stored them (a worker's "
            f"pool child) while {which}: no other process can read them and they vanish with the child; it is "
            f"meant for tests; {RESULTS_FIX}")
    elif kind == "disabled" and stores:
        problems.append(
            f"no result_backend is set while {which}: results are dropped and AsyncResult.get() raises "
            f"'No result backend is configured'; set task_ignore_result = True if nobody reads results, or "
            f"{RESULTS_FIX}")

    expires = conf.result_expires
    seconds = expires.total_seconds() if isinstance(expires, timedelta) else expires
    expiry = None
    if kind not in ("disabled", "rpc", "memory"):
        if not seconds:
            expiry = f"results never expire (result_expires = {expires!r})"
            problems.append(
                f"result_expires = {expires!r}: results never expire, so every result stays in {shown} until "
                "someone deletes it and the store grows without bound; set result_expires (Celery's default "
                "is 1 day)")
        elif not cls.supports_autoexpire:
            # Celery beat adds celery.backend_cleanup only for backends that do not expire results themselves.
            expiry = (
                f"results older than {_duration(seconds)} (result_expires) are deleted only by the "
                "celery.backend_cleanup task, which celery beat runs daily at 4:00; without beat the table "
                "grows: run celery beat, or (Airflow runs no beat) "
                "airflow db clean --tables celery_taskmeta,celery_tasksetmeta")
        else:
            expiry = f"results expire after {_duration(seconds)} (result_expires)"
    problems.extend(_pickle_problems(conf, registry))
    return {"backend": shown, "kind": kind, "expires": seconds, "expiry": expiry, "storing": storing,
            "serializers": _serializers(conf, registry), "problems": problems}


def _offload(app: Any) -> dict[str, Any]:
    """The claim check (oomless_offload) or, without it, the size limit on task messages."""
    from urllib.parse import urlsplit

    from ..celery.offload import read_settings

    try:
        cfg = read_settings(app.conf)
    except (ValueError, ImportError) as exc:
        raise _Invalid(f"invalid configuration: {exc}") from exc
    store = cfg.store
    problems = []
    host = urlsplit(app.conf.broker_url or "").hostname if isinstance(app.conf.broker_url, str) else None
    local = store is not None and store.local
    if store is not None and local and host not in (None, "", "localhost", "127.0.0.1", "::1"):
        problems.append(
            f"the claim store is a local directory ({store.url}) but the broker is on {host}: workers and clients "
            f"on other machines cannot read it; set oomless_offload to a shared fsspec URL (s3://…, gs://…) or a "
            f"shared filesystem"
        )
    return {
        "store": store.url if store is not None else None,
        "local": local,
        "threshold": cfg.threshold,
        "ttl": store.ttl if store is not None else None,
        "limit": cfg.limit,
        "broker": cfg.broker,
        "problems": problems,
    }


def _serializers(conf: Any, registry: Any) -> dict[str, Any]:
    """The serializer names in use; content types (``application/x-python-serialize``) become kombu's names."""

    from ..celery.offload import unwrapped

    def name(value: str) -> str:
        # oomless wraps the serializers it checks sizes for (oomless+json, oomless-guard+pickle, …)
        return unwrapped(registry.type_to_name.get(value, value))

    accept = [name(v) for v in conf.accept_content or ()]
    result_accept = conf.result_accept_content
    return {
        "task": name(conf.task_serializer),
        "result": name(conf.result_serializer),
        "accept": accept,
        "result_accept": accept if result_accept is None else [name(v) for v in result_accept],
    }


def _pickle_problems(conf: Any, registry: Any) -> list[str]:
    found = _serializers(conf, registry)
    where = [f"{key}_serializer" for key in ("task", "result") if found[key] == "pickle"]
    where += ["accept_content"] if "pickle" in found["accept"] else []
    # result_accept_content defaults to accept_content: name it only when it is set on its own
    if conf.result_accept_content is not None and "pickle" in found["result_accept"]:
        where.append("result_accept_content")
    if not where:
        return []
    return [f"pickle is in {', '.join(where)}: {PICKLE_RISK}"]


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
    return f"{seconds:g} s"


def _isolates(pool_name: str) -> bool:
    """Whether the pool named ``pool_name`` runs each task in a child process of its own."""
    from celery.concurrency import get_implementation

    from ..celery.bootstep import isolating_pool

    try:
        cls = get_implementation(pool_name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isolating_pool(cls)[1]


def _tasks(app: Any, budget: int, task_spec: Any) -> list[dict[str, Any]]:
    from ..errors import InvalidMemorySpec

    found = []
    for name in sorted(app.tasks):
        if name.startswith("celery."):
            continue
        try:
            spec = task_spec(app.tasks[name])
        except InvalidMemorySpec as exc:
            raise _Invalid(f"invalid configuration: {exc}") from exc
        need = None if spec is None else max(spec.limit or 0, spec.request or 0)
        found.append({
            "name": name,
            "request": None if spec is None else spec.request,
            "limit": None if spec is None else spec.limit,
            "infeasible": bool(need and need > budget),
        })
    return found


@click.command()
@click.option("-A", "--app", "app_spec", metavar="MODULE:APP", help="Celery app whose oomless_* settings to use.")
@click.option(
    "--enforcement",
    type=click.Choice(MODES),
    default=None,
    help="Mode to check (default: the app's oomless_enforcement, else auto).",
)
@click.option(
    "--memory-budget", metavar="SIZE", default=None, help="Budget as the worker option would set it, e.g. 6GiB."
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default=None,
    help="Worker pool to check (default: the app's worker_pool, else prefork).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def doctor(app_spec: str | None, enforcement: str | None, memory_budget: str | None, pool: str | None,
           as_json: bool) -> None:
    """Say what this host supports, which enforcement mode a worker would run and why, and its budget.

    Exits 2 if a worker with these settings would refuse to start.
    """
    report = diagnose(app_spec, enforcement, memory_budget, pool)
    if as_json:
        click.echo(json.dumps(report, indent=None, sort_keys=False))
    else:
        _print(report)
    if not report["ok"]:
        sys.exit(2)


def _print(report: dict[str, Any]) -> None:
    from ..units import format_size

    out = Console(highlight=False)
    lines: list[tuple[str, str]] = []
    v = report["versions"]
    lines.append(("host", f"{v['kernel']}; Python {v['python']}, Celery {v['celery']}, billiard {v['billiard']}, "
                          f"kombu {v['kombu']}"))
    mem = report["memory"]
    limit = mem["cgroup_limit"]
    lines.append(("memory", f"machine {format_size(mem['machine'])}; "
                            f"this process's cgroup limit {'none' if limit is None else format_size(limit)}"))
    cg = report["cgroup"]
    if cg["version"] is None:
        where = "no memory cgroup"
    else:
        where = f"v{cg['version']} at {cg['path']}"
    lines.append(("cgroup", f"{where}: writable" if cg["writable"] else f"{where}: NOT usable: {cg['reason']}"))
    lines.append(("", cg["note"]))
    if cg.get("pressure"):
        lines.append(("pressure", cg["pressure"]))
    wd = report["watchdog"]
    lines.append(("watchdog", "works (/proc is readable)" if wd["works"] else f"cannot work: {wd['problem']}"))
    if "overshoot" in wd:
        lines.append(("", wd["overshoot"]))
    for blind in wd.get("blind_spots", []):
        lines.append(("", f"the watchdog cannot see or stop: {blind}"))
    if "pool" in report:
        pool = report["pool"]
        lines.append(("pool", pool["name"] + (" (each task runs in a pool child: limits are enforced per task)"
                                              if pool["isolates_tasks"] else
                                              " (runs tasks inside the worker process: limits cannot be enforced)")))
    if "mode" in report:
        mode = report["mode"]
        if mode["chosen"] is not None:
            lines.append(("mode", f"{mode['chosen']} (requested {mode['requested']}): {mode['reason']}"))
        else:
            lines.append(("mode", f"requested {mode['requested']}: cannot work here (see the error below)"))
    if "budget" in report:
        budget = report["budget"]
        if budget["auto"]:
            lines.append(("budget", f"at most {format_size(budget['bytes'])} ({budget['source']})"))
            lines.append(("", "the footprint (main process, every pool child, the rest of the worker's cgroup) is "
                              "measured while the worker runs: its log says 'oomless: budget … = …' with every "
                              "part, and `oomless top` / the oomless_footprint_bytes metric show it live"))
        else:
            lines.append(("budget", f"{format_size(budget['bytes'])} ({budget['source']})"))
    if "admission" in report:
        adm = report["admission"]
        if adm["on"]:
            lines.append(("admission", f"on: {adm['reason']}; at most {adm['max_waiting'] or 'pool size'} waiting "
                          f"that cannot fit; backfill window {adm['backfill_window']:g} s; give back after "
                          + (f"{adm['give_back_after']:g} s" if adm["give_back_after"] else "never")))
            lines.append(("", "infeasible requests " + (f"go to queue {adm['infeasible_queue']!r} (once)"
                                                          if adm["infeasible_queue"] else "fail at once")))
            lines.append(("eviction", f"on: the task most over its request is requeued (at most "
                          f"{adm['max_evictions']} times) when tasks outgrow the budget or less than "
                          f"{format_size(adm['eviction_margin'])} is available" if adm["eviction"]
                          else "off: needs an enforcing mode (cgroup or watchdog)"))
        else:
            lines.append(("admission", f"off: {adm['reason']}; tasks start by slot only, as in vanilla Celery"))
    if "observe" in report:
        obs = report["observe"]
        lines.append(("history", f"every attempt is recorded in {obs['history']}" + (
            "; tasks that declare no memory get their learned size" if obs["learned"] else "")
            if obs["history"] else "off: set oomless_history = 'default' (an SQLite file) or an SQLAlchemy URL to "
            "record every attempt for oomless recommend and oomless report (docs/history.md)"))
        lines.append(("metrics", f"Prometheus metrics on http://{obs['metrics']}/metrics" if obs["metrics"]
                      else "off: set oomless_metrics_port to serve Prometheus metrics (on 127.0.0.1)"))
    if report.get("airflow"):
        af = report["airflow"]
        lines.append(("airflow", ", ".join(f"{k} {v}" for k, v in af["versions"].items()) + "; see docs/airflow.md"))
        lines.append(("", af["enforcement"]))
    if "budget" in report:
        default = report["default_memory"]
        lines.append(("default", "tasks without memory= are accounted, not limited (oomless_default_memory unset)"
                      if default is None else
                      f"tasks without memory= get request {format_size(default['request'])}, "
                      f"limit {format_size(default['limit'])}"))
    if report.get("tasks") is not None:
        tasks = report["tasks"]
        declared = [t for t in tasks if t["limit"] is not None or t["request"] is not None]
        lines.append(("tasks", f"{len(tasks)} registered, {len(declared)} declare memory="))
        for t in declared:
            flag = "  INFEASIBLE: larger than the budget, the worker will refuse it" if t["infeasible"] else ""
            lines.append(("", f"{t['name']}: request {format_size(t['request'])}, "
                              f"limit {format_size(t['limit'])}{flag}"))

    if "results" in report:
        res = report["results"]
        if res["kind"] == "disabled":
            lines.append(("results", "none: result_backend is unset, results are not stored"))
        else:
            lines.append(("results", f"{res['backend']}" + (f" ({res['kind']})" if res["kind"] else "")
                          + (f": {res['expiry']}" if res["expiry"] else "")))
        ser = res["serializers"]
        lines.append(("messages", f"task {ser['task']}, result {ser['result']}; accepted: {', '.join(ser['accept'])}"
                      + ("" if ser["result_accept"] == ser["accept"]
                         else f"; results accepted: {', '.join(ser['result_accept'])}")
                      + " (measured costs: docs/data.md)"))
    if "offload" in report:
        off = report["offload"]
        if off["store"]:
            lines.append(("offload", f"on: arguments and results over {format_size(off['threshold'])} travel by "
                          f"reference through {off['store']} (arguments kept {off['ttl'] / 86400:g} days; results "
                          f"until forgotten or expired)"))
        else:
            lines.append(("offload", f"off: a task message over {format_size(off['limit'])} (what {off['broker']} "
                          f"practically carries; oomless_max_message_size) is refused before it is sent; set "
                          f"oomless_offload = True or a shared fsspec URL to send large values by reference "
                          f"(docs/data.md)"))

    if out.is_terminal:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for key, value in lines:
            grid.add_row(escape(key), escape(value))
        out.print(grid)
    else:
        # Plain lines for logs and pipes: one fact per line, never wrapped.
        for key, value in lines:
            out.print(escape(f"{key:<9} {value}"), soft_wrap=True)
    for warning in report["warnings"]:
        out.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if report["error"]:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(report['error'])}", soft_wrap=True)
