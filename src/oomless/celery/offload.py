"""Claim check for Celery: large arguments and results travel by reference, and oversized messages are refused.

With ``oomless_offload`` set (``True`` for a local directory, or an fsspec URL
that the clients and workers share, e.g. ``"s3://bucket/celery-claims"``),
``oomless.install(app)`` wraps the app's task and result serializers in one
that keeps messages small:

* **encode**: the message is encoded as usual; when it is over
  ``oomless_offload_threshold`` (default 1 MiB), its largest top-level values
  (each task argument and keyword argument; the ``result`` of a result record)
  are written to the :class:`~oomless.data.claim.ClaimStore` and replaced by
  references until the message fits.  Small messages pay one length check.
* **decode**: references are fetched and verified (SHA-256) where the value is
  used: in the client, and in the *pool child* that runs the task.  A prefork
  worker's main process decodes every message it receives (Celery builds the
  request's ``args`` there) but leaves references as they are, so a 500 MiB
  argument never passes through the process that every task depends on, nor
  through the pipe to the child.

The wrapped serializers have their own content types
(``application/x-oomless+json`` for JSON): a worker without oomless refuses
such a message as content it does not accept, instead of running a task with
a reference in place of its data.  ``install`` adds them to
``accept_content`` and ``result_accept_content``.

Without ``oomless_offload``, the task serializer is wrapped under the *same*
content type, only to refuse a message over the broker's practical size
(``oomless_max_message_size``; defaults in :data:`PRACTICAL`) with
:class:`~oomless.errors.MessageTooLarge` before it is sent — not a closed
channel or a broken connection later.

Removal: values sent to tasks expire ``oomless_offload_ttl`` after they were
stored (default 7 days); a result's values go when its result is forgotten
(``AsyncResult.forget()``) or expires from the result backend.  Each worker
sweeps the store every ``oomless_offload_sweep_interval`` seconds (default
3600) in a thread of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any

from kombu import serialization

from ..data.claim import ClaimStore, default_url, is_ref
from ..errors import MessageTooLarge
from ..settings import read
from ..units import MiB, format_size, parse_duration
from . import compat

logger = logging.getLogger(__name__)

__all__ = ["configure", "read_settings", "unwrapped", "sweep", "PRACTICAL", "content_type", "Offload"]


#: What a broker practically carries in one message (the body, before the transport's own wrapping).
#: RabbitMQ 4 refuses messages over 16 MiB by default (``max_message_size``; 3.8–3.13 allowed 128 MiB).
#: Redis takes at most 512 MB per value and kombu base64-encodes the body inside a JSON envelope
#: (x 4/3), keeping a second copy for unacked messages: 128 MiB leaves room for both.  SQS carries
#: 256 KiB, also base64-encoded.
PRACTICAL = {"amqp": 16 * MiB, "redis": 128 * MiB, "sqs": 192 << 10}
_ALIASES = {"amqps": "amqp", "pyamqp": "amqp", "librabbitmq": "amqp", "rediss": "redis", "sentinel": "redis"}
_DEFAULT_LIMIT = 16 * MiB
#: Values smaller than this are never worth a trip to the store.
_MIN_OFFLOAD = 4 << 10


def content_type(inner: str) -> str:
    return f"application/x-oomless+{inner}"


def broker_kind(url: str | None) -> str:
    scheme = (url or "amqp://").split(";")[0].split("://", 1)[0].lower()
    scheme = scheme.split("+", 1)[0]
    return _ALIASES.get(scheme, scheme)


@dataclass
class Offload:
    """An app's settings; each wrapped serializer carries the ones it was registered with."""

    store: ClaimStore | None
    threshold: int
    limit: int
    broker: str


#: Whether decoding fetches references: False only in a prefork worker's main process.
resolve_here = True


# -- encoding ------------------------------------------------------------------------------------------------

def _is_body(obj: Any) -> bool:
    """Celery's task protocol 2 body: ``(args, kwargs, embed)``."""
    return (
        isinstance(obj, (list, tuple)) and len(obj) == 3 and isinstance(obj[0], (list, tuple))
        and isinstance(obj[1], dict) and (obj[2] is None or isinstance(obj[2], dict))
    )


def _slots(obj: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """A mutable copy of ``obj``'s top level, and the (container, key) places a value may be offloaded from."""
    if _is_body(obj):
        args, kwargs = list(obj[0]), dict(obj[1])
        return [args, kwargs, obj[2]], [(args, i) for i in range(len(args))] + [(kwargs, k) for k in kwargs]
    if isinstance(obj, dict):
        copy = dict(obj)
        return copy, [(copy, k) for k in copy]
    if isinstance(obj, (list, tuple)):
        items = list(obj)
        return items, [(items, i) for i in range(len(items))]
    return obj, []


def _has_ref(obj: Any) -> bool:
    """Whether ``obj`` holds a reference where :meth:`Codec.encode` puts them (checked without copying)."""
    if _is_body(obj):
        return any(map(is_ref, obj[0])) or any(map(is_ref, obj[1].values()))
    if isinstance(obj, dict):
        return any(map(is_ref, obj.values()))
    if isinstance(obj, (list, tuple)):
        return any(map(is_ref, obj))
    return False


class Codec:
    """A kombu serializer around ``inner`` (json, msgpack, yaml or pickle)."""

    def __init__(self, inner: str, cfg: Offload) -> None:
        self.inner = inner
        self.cfg = cfg
        # The inner codec's own functions: kombu has already checked the content type and decoded the text.
        self.inner_type, self.encoding, self._dumps, self._loads = compat.serializer_functions(inner)

    def encode(self, obj: Any) -> Any:
        payload = self._dumps(obj)
        cfg = self.cfg
        is_task = _is_body(obj)
        if cfg.store is not None and len(payload) > cfg.threshold:
            payload = self._dumps(self._offload(obj, len(payload), cfg))
        if is_task and len(payload) > cfg.limit:
            raise MessageTooLarge(len(payload), cfg.limit, cfg.broker)
        return payload

    def _offload(self, obj: Any, size: int, cfg: Offload) -> Any:
        assert cfg.store is not None
        copy, slots = _slots(obj)
        owner = None
        if isinstance(obj, dict) and "status" in obj and isinstance(obj.get("task_id"), str):
            owner = obj["task_id"]  # a result record: its values belong to that task's result
        sized = []
        for holder, key in slots:
            value = holder[key]
            if is_ref(value):
                continue
            encoded = self._dumps(value)
            if len(encoded) >= _MIN_OFFLOAD:
                sized.append((len(encoded), holder, key, encoded))
        sized.sort(key=lambda t: t[0], reverse=True)
        for n, holder, key, encoded in sized:
            if size <= cfg.threshold:
                break
            data = encoded.encode("utf-8") if isinstance(encoded, str) else encoded
            holder[key] = cfg.store.put(data, owner=owner)
            size -= n
        return copy

    # -- decoding --------------------------------------------------------------------------------------------

    def decode(self, payload: Any) -> Any:
        obj = self._loads(payload)
        cfg = self.cfg
        if not resolve_here or cfg.store is None or not _has_ref(obj):
            return obj
        copy, slots = _slots(obj)
        for holder, key in slots:
            if is_ref(holder[key]):
                holder[key] = self._fetch(cfg.store, holder[key])
        return copy

    def _fetch(self, store: ClaimStore, ref: dict[str, Any]) -> Any:
        data = store.get(ref)
        return self._loads(data.decode("utf-8") if self.encoding != "binary" else data)


def _register(inner: str, cfg: Offload) -> str:
    """Register the wrapper of ``inner`` with ``cfg``; returns its serializer name.

    Decoders are looked up by content type, so a process holds one claim store per
    inner serializer: the last app configured with ``oomless_offload`` sets it.
    """
    registry = serialization.registry
    inner = unwrapped(inner)
    if not compat.has_serializer(inner):
        raise ValueError(f"serializer {inner!r} is not registered with kombu (is its library installed?)")
    codec = Codec(inner, cfg)
    if cfg.store is not None:
        name = f"oomless+{inner}"
        registry.register(name, codec.encode, codec.decode, content_type(inner), codec.encoding)
    else:
        # The same content type: any consumer reads it as before; only the encoder checks the size.
        name = f"oomless-guard+{inner}"
        registry.register(name, codec.encode, None, codec.inner_type, codec.encoding)
        registry.type_to_name[codec.inner_type] = inner
    return name


def read_settings(conf: Any) -> Offload:
    """The ``oomless_offload*`` settings of a configuration, checked (nothing is registered or written)."""
    wanted = read(conf, "offload")
    kind = broker_kind(conf.broker_url if isinstance(conf.broker_url, str) else None)
    limit = read(conf, "max_message_size") or PRACTICAL.get(kind, _DEFAULT_LIMIT)
    threshold = read(conf, "offload_threshold")
    store = None
    if wanted:
        ttl = read(conf, "offload_ttl")
        store = ClaimStore(default_url() if wanted is True else str(wanted), ttl=ttl)
    return Offload(store, threshold, limit, kind)


def unwrapped(name: str) -> str:
    """The serializer an oomless wrapper name or content type stands for (``oomless+json`` -> ``json``)."""
    for prefix in ("oomless+", "oomless-guard+", "application/x-oomless+"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def configure(app: Any) -> Offload:
    """Apply the ``oomless_offload*`` settings of ``app`` (called by ``install`` once the app is configured)."""
    conf = app.conf
    cfg = read_settings(conf)
    if "auth" in (conf.task_serializer, conf.result_serializer):
        # Message signing (celery.security) checks that the serializer is 'auth' itself.
        logger.warning("oomless: task_serializer='auth' (signed messages): no size check and no claim check")
        app.oomless_offload = dataclasses.replace(cfg, store=None)
        return app.oomless_offload
    before = conf.task_serializer
    conf.task_serializer = _register(conf.task_serializer, cfg)
    if cfg.store is not None:
        conf.result_serializer = _register(conf.result_serializer, cfg)
        ours = [content_type(unwrapped(name)) for name in (conf.task_serializer, conf.result_serializer)]
        for key in ("accept_content", "result_accept_content"):
            accepted = list(conf.get(key) or conf.accept_content or ["json"])
            accepted += [t for t in dict.fromkeys(ours) if t not in accepted]
            conf[key] = accepted
    # Tasks bound before this (rare: the app was configured before install) copied the old name.
    for task in compat.bound_tasks(app):
        if getattr(task, "serializer", None) == before:
            task.serializer = conf.task_serializer
            compat.forget_exec_options(task)
    app.oomless_offload = cfg
    return cfg


def sweep(app: Any, grace: float = 600.0) -> dict[str, int]:
    """One pass over ``app``'s store: remove what has expired or was forgotten (see :meth:`ClaimStore.sweep`)."""
    cfg = getattr(app, "oomless_offload", None)
    if cfg is None or cfg.store is None:
        return {}
    from celery.backends.base import BaseKeyValueStoreBackend

    backend = app.backend
    result_gone = None
    if isinstance(backend, BaseKeyValueStoreBackend):
        def result_gone(task_id: str) -> bool:
            return backend.get(backend.get_key_for_task(task_id)) is None
    expires = app.conf.result_expires
    result_ttl = None if expires is None else parse_duration(expires, "result_expires", longest=float("inf"))
    return cfg.store.sweep(result_gone=result_gone, result_ttl=result_ttl or None, grace=grace)


class Sweeper(threading.Thread):
    """Sweeps the store every ``interval`` seconds, off the worker's event loop."""

    def __init__(self, app: Any, interval: float) -> None:
        super().__init__(name="oomless-claim-sweeper", daemon=True)
        self.app, self.interval = app, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                removed = sweep(self.app)
                if any(removed.values()):
                    logger.info("oomless: claim store swept: %s", removed)
            except Exception as exc:  # a store outage must not end the sweeper
                logger.warning("oomless: cannot sweep the claim store: %s", exc)


_sweeper: Sweeper | None = None


def on_worker_init(sender: Any = None, **_: Any) -> None:
    """In a prefork worker's main process, leave references unresolved (the pool child fetches them)."""
    global resolve_here
    from celery.concurrency import get_implementation

    from .governor import isolating_pool

    if sender is not None:
        resolve_here = not isolating_pool(get_implementation(sender.pool_cls))[1]


def on_process_init(**_: Any) -> None:
    global resolve_here
    resolve_here = True


def on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _sweeper
    app = getattr(sender, "app", None)
    cfg = getattr(app, "oomless_offload", None)
    if app is None or cfg is None or cfg.store is None or _sweeper is not None:
        return
    interval = read(app.conf, "offload_sweep_interval")
    _sweeper = Sweeper(app, interval)
    _sweeper.start()
    logger.info(
        "oomless: values over %s travel by reference through %s (kept %g days; swept every %g s)",
        format_size(cfg.threshold), cfg.store.url, cfg.store.ttl / 86400, interval,
    )


def on_worker_shutdown(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stopping.set()
