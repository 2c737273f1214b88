"""Where an app's task results and large values go, judged from its configuration alone.

The result backend (kept where others can read it? expiring?), the serializers
(pickle is an opt-in with a risk), and the claim check or, without one, the
size limit on task messages.  Nothing is connected: a backend that is down is
judged the same as one that is up.  The measured costs behind the advice are in
docs/data.md.

Not here: the host, the budget and the enforcement mode (:mod:`.diagnose`), or
how the judgement is worded on a line (:mod:`.checks`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from ...urls import redact
from .facts import Offload, Results, Serializers

__all__ = ["RESULTS_FIX", "PICKLE_RISK", "judge_results", "judge_offload"]

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

#: Brokers on this machine: a claim store in a local directory serves them.
_LOCAL_HOSTS = (None, "", "localhost", "127.0.0.1", "::1")


def judge_results(app: Any) -> Results:
    """Where ``app``'s task results go, whether they expire, and which serializers carry them."""
    from celery.app.backends import by_url
    from kombu.serialization import registry

    conf = app.conf
    setting = conf.result_backend
    shown = "none" if not setting else (
        redact(setting) if isinstance(setting, str) else getattr(setting, "__name__", repr(setting)))
    serializers = _serializers(conf, registry)
    pickle_in = _pickle_in(conf, serializers)
    pickle = f"pickle is in {', '.join(pickle_in)}: {PICKLE_RISK}" if pickle_in else None
    try:
        cls: Any
        url: str | None
        cls, url = by_url(setting, app.loader) if not isinstance(setting, type) else (setting, None)
    except Exception as exc:  # noqa: BLE001  (an unknown alias or a missing driver: say so, judge the rest)
        return Results(backend=shown, kind=None, expires=None, expiry=None, storing=[], serializers=serializers,
                       problems=[f"result_backend {shown} cannot be loaded: {exc}"], pickle_in=pickle_in,
                       pickle=pickle)
    kind = ("disabled" if cls.__name__ == "DisabledBackend"
            else "rpc" if cls.__name__ == "RPCBackend"
            else "memory" if cls.__name__ == "CacheBackend" and (url or "").startswith("memory")
            else cls.__name__.removesuffix("Backend").lower())
    storing = [name for name in sorted(app.tasks)
               if not name.startswith("celery.") and not app.tasks[name].ignore_result]
    problems = _where_problems(app, kind, shown, storing)
    seconds, expiry, expiry_problem = _expiry(conf.result_expires, kind, cls, shown)
    problems += [expiry_problem] if expiry_problem else []
    return Results(backend=shown, kind=kind, expires=seconds, expiry=expiry, storing=storing,
                   serializers=serializers, problems=problems, pickle_in=pickle_in, pickle=pickle)


def _where_problems(app: Any, kind: str, shown: str, storing: list[str]) -> list[str]:
    """What is wrong with keeping results in a backend of ``kind`` while the tasks ``storing`` keep them."""
    # An app without tasks of its own (they are registered elsewhere) stores results unless told not to.
    stores = bool(storing) or (not [n for n in app.tasks if not n.startswith("celery.")]
                               and not app.conf.task_ignore_result)
    which = ("task " + storing[0] + " keeps its results (ignore_result=False)" if len(storing) == 1
             else f"{len(storing)} tasks keep their results (ignore_result=False, e.g. {storing[0]})" if storing
             else "tasks keep their results (task_ignore_result=False)")
    if kind == "rpc":
        return [
            f"result_backend {shown}: results travel back in the reply queue of the client that sent the task: "
            "they are lost when that client restarts, only that client can read them (once), and neither "
            f"Airflow nor Flower can see them; {RESULTS_FIX}"]
    if kind == "memory" and stores:
        return [
            f"result_backend {shown} keeps results in the memory of the process that stored them (a worker's "
            f"pool child) while {which}: no other process can read them and they vanish with the child; it is "
            f"meant for tests; {RESULTS_FIX}"]
    if kind == "disabled" and stores:
        return [
            f"no result_backend is set while {which}: results are dropped and AsyncResult.get() raises "
            f"'No result backend is configured'; set task_ignore_result = True if nobody reads results, or "
            f"{RESULTS_FIX}"]
    return []


def _expiry(expires: Any, kind: str, cls: Any, shown: str) -> tuple[float | None, str | None, str | None]:
    """``result_expires`` in seconds, what happens to old results, and the problem with it (if any)."""
    seconds = expires.total_seconds() if isinstance(expires, timedelta) else expires
    if kind in ("disabled", "rpc", "memory"):
        return seconds, None, None
    if not seconds:
        return seconds, f"results never expire (result_expires = {expires!r})", (
            f"result_expires = {expires!r}: results never expire, so every result stays in {shown} until "
            "someone deletes it and the store grows without bound; set result_expires (Celery's default "
            "is 1 day)")
    if not cls.supports_autoexpire:
        # Celery beat adds celery.backend_cleanup only for backends that do not expire results themselves.
        return seconds, (
            f"results older than {_duration(seconds)} (result_expires) are deleted only by the "
            "celery.backend_cleanup task, which celery beat runs daily at 4:00; without beat the table "
            "grows: run celery beat, or (Airflow runs no beat) "
            "airflow db clean --tables celery_taskmeta,celery_tasksetmeta"), None
    return seconds, f"results expire after {_duration(seconds)} (result_expires)", None


def judge_offload(cfg: Any, broker_url: Any) -> Offload:
    """The claim check of ``cfg`` (:func:`oomless.celery.offload.read_settings`'s answer) for this broker."""
    store = cfg.store
    problems = []
    host = urlsplit(broker_url or "").hostname if isinstance(broker_url, str) else None
    local = store is not None and store.local
    if store is not None and local and host not in _LOCAL_HOSTS:
        problems.append(
            f"the claim store is a local directory ({store.url}) but the broker is on {host}: workers and clients "
            f"on other machines cannot read it; set oomless_offload to a shared fsspec URL (s3://…, gs://…) or a "
            f"shared filesystem"
        )
    return Offload(
        store=store.url if store is not None else None,
        local=local,
        threshold=cfg.threshold,
        ttl=store.ttl if store is not None else None,
        limit=cfg.limit,
        broker=cfg.broker,
        problems=problems,
    )


def _serializers(conf: Any, registry: Any) -> Serializers:
    """The serializer names in use; content types (``application/x-python-serialize``) become kombu's names."""
    from ...celery.offload import unwrapped

    def name(value: str) -> str:
        # oomless wraps the serializers it checks sizes for (oomless+json, oomless-guard+pickle, …)
        return unwrapped(registry.type_to_name.get(value, value))

    accept = [name(v) for v in conf.accept_content or ()]
    result_accept = conf.result_accept_content
    return Serializers(
        task=name(conf.task_serializer),
        result=name(conf.result_serializer),
        accept=accept,
        result_accept=accept if result_accept is None else [name(v) for v in result_accept],
    )


def _pickle_in(conf: Any, found: Serializers) -> list[str]:
    """The settings that name pickle."""
    where = [f"{key}_serializer" for key, value in (("task", found.task), ("result", found.result))
             if value == "pickle"]
    where += ["accept_content"] if "pickle" in found.accept else []
    # result_accept_content defaults to accept_content: name it only when it is set on its own
    if conf.result_accept_content is not None and "pickle" in found.result_accept:
        where.append("result_accept_content")
    return where


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
    return f"{seconds:g} s"
