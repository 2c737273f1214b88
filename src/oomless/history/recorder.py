"""Write attempts to the history store off the worker's hot path.

:meth:`Recorder.record` appends to an in-memory buffer and returns: it never
touches the database, never blocks and never raises.  A daemon thread
flushes the buffer in batches, every ``interval`` seconds or as soon as
``batch`` rows wait.  While the store is unreachable the rows stay in the
buffer (at most ``max_buffer``) and the thread retries with a growing pause;
the worker logs one warning when the store goes away and one line when it
comes back.  Only when the buffer is full are the oldest rows dropped, and
they are counted and reported.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .attempt import Attempt

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger(__name__)

__all__ = ["Recorder"]


class Recorder:
    """A bounded buffer of attempts and the thread that writes them to a :class:`Store`."""

    def __init__(
        self,
        store: Callable[[], Store] | Store,  # a factory: the store is opened by the thread
        interval: float = 1.0,
        batch: int = 500,
        max_buffer: int = 100_000,
        max_pause: float = 30.0,
    ) -> None:
        self._factory: Callable[[], Any] = store if callable(store) else (lambda: store)
        self._store: Store | None = None
        self.interval, self.batch, self.max_buffer, self.max_pause = interval, batch, max_buffer, max_pause
        self._buffer: deque[Attempt] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self.written = 0
        self.dropped = 0
        self._down = False  # the store failed its last write; said once until it recovers
        self._thread = threading.Thread(target=self._run, name="oomless-history", daemon=True)
        self._thread.start()

    def record(self, attempt: Attempt) -> None:
        """Queue one attempt (any thread; O(1); never raises)."""
        buffer = self._buffer
        if len(buffer) >= self.max_buffer:
            buffer.popleft()
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "oomless: the history buffer is full (%d attempts): dropping the oldest until the store "
                    "takes writes again", self.max_buffer,
                )
        buffer.append(attempt)
        if len(buffer) >= self.batch:
            self._wake.set()

    def pending(self) -> int:
        return len(self._buffer)

    def _run(self) -> None:
        pause = self.interval
        while True:
            self._wake.wait(pause)
            self._wake.clear()
            ok = self._flush()
            if self._stopping:
                return  # flushed once more at shutdown; what the store refused is reported by close()
            pause = self.interval if ok else min(self.max_pause, max(pause * 2, 1.0))

    def _flush(self) -> bool:
        """Write what is buffered; ``False`` when the store failed (the rows stay buffered)."""
        while self._buffer:
            rows = [self._buffer[i] for i in range(min(self.batch, len(self._buffer)))]
            try:
                if self._store is None:
                    self._store = self._factory()
                self._store.add(rows)
            except Exception as exc:  # any database error: keep the rows, say it once
                if not self._down:
                    self._down = True
                    logger.warning(
                        "oomless: the history store is unavailable (%s); keeping up to %d attempts in memory "
                        "and retrying", exc, self.max_buffer,
                    )
                return False
            # record() may have dropped some of these meanwhile (buffer full): pop by identity.
            for row in rows:
                if self._buffer and self._buffer[0] is row:
                    self._buffer.popleft()
            self.written += len(rows)
            if self._down:
                self._down = False
                logger.warning("oomless: the history store takes writes again; %d attempts waiting", len(self._buffer))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (for at most ``timeout`` seconds) and stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._buffer:
            logger.warning("oomless: %d attempts were not written to the history store", len(self._buffer))
        if self._store is not None:
            self._store.close()
