"""What each task's memory was, as the worker reported it: its ``task-memory`` events, collected in a thread.

A governed worker started with task events on (``-E``, the harness's default)
ends every task with one ``task-memory`` event carrying its ``outcome``,
``peak``, ``limit``, ``request`` (bytes) and the enforcement ``mode``
(see :mod:`oomless.celery.events`).  :class:`MemoryEvents` listens on the
app's broker and keeps the last one of each task as a :class:`TaskMemory`, so
a test asserts on numbers, not on the worker's log text.

Not here: starting the worker (:mod:`.worker`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..celery.events import EVENT

__all__ = ["MemoryEvents", "TaskMemory"]


@dataclass(frozen=True)
class TaskMemory:
    """One task's ``task-memory`` event: how it ended and what it used (bytes; ``None``: not known)."""

    task_id: str
    outcome: str
    peak: int | None
    limit: int | None
    request: int | None
    mode: str
    #: The same figures in words: ``ok: peak 64.0 MiB, limit 256.0 MiB, request 256.0 MiB [cgroup]``.
    memory: str


class MemoryEvents:
    """The ``task-memory`` events of the workers on ``app``'s broker, by task id; a context manager.

    Start it once a worker is ready and before sending the tasks to watch
    (events are broadcast: one sent before the listener is subscribed is lost).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        #: The last event of each task, by task id.
        self.tasks: dict[str, TaskMemory] = {}
        #: Why the listening thread ended early, if it did.
        self.error: BaseException | None = None
        self._heard = threading.Event()
        self._arrived = threading.Condition()
        self._lock = threading.Lock()
        self._stopping = False
        self._receiver: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> MemoryEvents:
        """Listen in a daemon thread, and return once an event from a worker proves the subscription live.

        Workers are asked for a heartbeat event until one arrives; raises
        :class:`TimeoutError` if none does within ``timeout`` s (no worker
        runs, or none sends events: start it with ``-E``).
        """
        self._thread = threading.Thread(target=self._listen, name="oomless-memory-events", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._heard.is_set():
            if self.error is not None or time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"no event from any worker within {timeout:.0f} s ({self.error or 'no error'}): is one running, "
                    "with task events on (-E)?"
                )
            # A heartbeat event in answer proves the whole path: worker, broker, our subscription.
            self.app.control.broadcast("heartbeat")
            self._heard.wait(0.25)
        return self

    def _listen(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                with self._lock:  # stop() may have come first
                    if self._stopping:
                        return
                    self._receiver = receiver
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception as exc:  # the broker went away: say so through ``error``, not a thread traceback
            self.error = exc

    def _on_event(self, event: dict[str, Any]) -> None:
        self._heard.set()
        if event.get("type") != EVENT:
            return
        found = TaskMemory(
            task_id=event["uuid"],
            outcome=event.get("outcome", ""),
            peak=event.get("peak"),
            limit=event.get("limit"),
            request=event.get("request"),
            mode=event.get("mode", ""),
            memory=event.get("memory", ""),
        )
        with self._arrived:
            self.tasks[found.task_id] = found
            self._arrived.notify_all()

    def wait(self, task_ids: Iterable[str], timeout: float = 10.0) -> dict[str, TaskMemory]:
        """The events of ``task_ids``, waiting up to ``timeout`` s for the missing ones; those that came."""
        wanted = set(task_ids)
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not wanted <= set(self.tasks):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
            return {task_id: self.tasks[task_id] for task_id in wanted if task_id in self.tasks}

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening (the thread notices within a second) and wait for the thread to end."""
        with self._lock:
            self._stopping = True
            if self._receiver is not None:
                self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> MemoryEvents:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
