"""Put a received task message back on the broker, changed only in its oomless headers.

Used when a message must run again or elsewhere without counting as a failed
attempt: given back after waiting too long, requeued after an eviction,
retried with more memory, re-routed to a queue of bigger workers.  The copy
keeps the task id, body, content type and priority, so the caller's
``AsyncResult`` keeps working; the original is acknowledged only after the
copy was published (at-least-once, as Celery's own retries).

Broker headers are untrusted input: :func:`header_int` and
:func:`header_float` read the counters this module writes, and treat anything
else as absent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.state import task_ready

logger = logging.getLogger(__name__)

__all__ = [
    "republish", "ready_messages", "header_int", "header_float",
    "WAITED", "EVICTIONS", "ATTEMPT", "TRIED", "REROUTED", "INPUT_SIZE",
]

#: Seconds the message already waited for memory on workers that gave it back.
WAITED = "oomless_waited"
#: Times it was evicted for node memory pressure.
EVICTIONS = "oomless_evictions"
#: Its attempt number under an escalation policy (1: the first).
ATTEMPT = "oomless_attempt"
#: Limits (bytes) of its earlier memory-killed attempts.
TRIED = "oomless_tried"
#: Present once it was re-routed because it was infeasible.
REROUTED = "oomless_rerouted"
#: The input size (bytes) the caller gave with ``apply_async(..., input_size=n)``, for the history.
INPUT_SIZE = "oomless_input_size"


def header_int(req: Any, name: str, default: int = 0, high: int = 10**6) -> int:
    value = req.request_dict.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        return default
    return value


def header_float(req: Any, name: str, default: float = 0.0, high: float = 10**7) -> float:
    value = req.request_dict.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        return default
    return float(value)


def republish(req: Any, headers: dict[str, Any], queue: str | None = None, event: str | None = None) -> None:
    """Publish a copy of ``req``'s message with ``headers`` merged in, then acknowledge the original.

    ``queue``: publish to that queue instead of where the message came from.
    ``event``: a Celery task event to send (e.g. ``task-rejected``).  Raises
    when the copy cannot be published; the original is then left unacknowledged.
    """
    message = req.message
    app = req.task.app
    props = message.properties or {}
    if queue is not None:
        target = app.amqp.queues[queue]  # created when task_create_missing_queues (the default)
        exchange, routing_key, declare = target.exchange, target.routing_key, [target]
    else:
        info = message.delivery_info or {}
        exchange, routing_key, declare = info.get("exchange") or "", info.get("routing_key"), []
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange=exchange,
            routing_key=routing_key,
            headers={**(message.headers or {}), **headers},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            priority=props.get("priority"),
            correlation_id=props.get("correlation_id"),
            reply_to=props.get("reply_to"),
            delivery_mode=props.get("delivery_mode"),
            declare=declare,
            retry=True,
        )
    req.acknowledge()
    task_ready(req)
    if event is not None:
        req.send_event(event, requeue=True)


def ready_messages(req: Any) -> int | None:
    """How many messages wait undelivered in the queue ``req`` came from (a passive declare on the
    broker), or ``None`` when that queue is not known or the broker does not say."""
    queue = _source_queue(req)
    if queue is None:
        return None
    try:
        with req.task.app.producer_or_acquire() as producer:
            # A channel of its own (RabbitMQ closes the one a failed passive declare was sent on),
            # and no exception through the pool's context: it would close the pooled connection.
            channel = producer.connection.channel()
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except Exception:  # a missing queue, a broker that refuses: unknown
                return None
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
    except Exception:  # no connection to the broker
        return None


def _source_queue(req: Any) -> str | None:
    """The name of the queue of this worker that ``req``'s exchange and routing key lead to."""
    info = req.delivery_info or {}
    exchange, routing_key = info.get("exchange") or "", info.get("routing_key")
    if not isinstance(routing_key, str):
        return None
    queues = req.task.app.amqp.queues
    for queue in queues.consume_from.values() if queues.consume_from else queues.values():
        name = getattr(queue.exchange, "name", "") or ""
        if queue.routing_key == routing_key and name == exchange:
            return str(queue.name)
    return routing_key if exchange == "" else None  # the default exchange routes by queue name
