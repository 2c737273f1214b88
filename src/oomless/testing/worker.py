"""A real Celery worker in a subprocess: started, waited for, and stopped with its whole process tree.

:meth:`Worker.start` (also :func:`start_worker`) runs ``celery -A <app> worker``
in a session of its own, its output in a log file that is kept on disk, and
waits until the worker says it is ready.  :meth:`Worker.stop` asks for a warm
shutdown (SIGTERM), and if that does not end it in time, kills the worker's
whole tree; then it kills whatever the worker left behind, found by a marker
every process of this worker inherits in its environment (pool children and
their subprocesses lead process groups or sessions of their own, and are
reparented when the worker dies), and removes slot cgroups a killed worker
could not remove itself.  Every kill goes through :mod:`oomless.linux.kill`:
a PID is signalled only while it provably names the process meant.

Whether the worker is governed is up to its app (``oomless.install(app)``);
the harness starts a vanilla Celery app just as well.

Not here: a broker to start it against (:mod:`.broker`); the peaks and
outcomes its tasks report (:mod:`.events`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ..linux import kill, proc
from ..linux.cgroup import detect, slot_groups, stale_groups
from ..linux.cgroup.files import write

__all__ = ["Worker", "WorkerError", "start_worker", "MARKER_ENV"]

#: Environment variable carrying a worker's marker: every process the worker starts
#: (pool children, their subprocesses, even ones that called ``setsid``) inherits it,
#: which is how leftovers are found after they changed process group or were reparented.
MARKER_ENV = "OOMLESS_TESTING_WORKER"

#: Options every worker gets: no gossip or mingle with other workers on the same broker
#: (workers of concurrent tests stay strangers, and start faster).
QUIET = ("--without-gossip", "--without-mingle")

W = TypeVar("W", bound="Worker")


class WorkerError(RuntimeError):
    """The worker exited, or its log did not say what was waited for; the message ends with the log's tail."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Worker:
    """A Celery worker subprocess started by :meth:`start`; a context manager that stops it on exit.

    ``proc`` is its :class:`subprocess.Popen`, ``log`` the file its output goes
    to, ``env`` the whole environment it was started with (to start a
    companion, such as Flower, that builds the same app), ``node`` its node
    name before ``@``.  :meth:`stop` adds a line to ``notes`` for everything
    out of the ordinary it had to do.
    """

    def __init__(
        self, popen: subprocess.Popen[bytes], log: Path, env: dict[str, str], node: str, cgroup: str | None = None
    ) -> None:
        self.proc = popen
        self.log = log
        self.env = env
        self.node = node
        #: The memory cgroup folder the worker was started in, if one was given.
        self.cgroup = cgroup
        #: Taken while the worker is our unreaped child, so its PID cannot name another process yet.
        self.start_time = proc.start_time(popen.pid)
        self.notes: list[str] = []

    @classmethod
    def start(
        cls: type[W],
        app: str,
        log: Path | str,
        *,
        broker: str | None = None,
        backend: str | None = None,
        concurrency: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        pythonpath: Sequence[Path | str] = (),
        node: str | None = None,
        events: bool = True,
        cgroup: str | None = None,
        wrap: Sequence[str] = (),
        wait_ready: bool = True,
        ready_timeout: float = 30.0,
    ) -> W:
        """Start ``celery -A app worker`` in a subprocess, its output in ``log``; by default, wait until ready.

        ``broker``/``backend``: URLs given to ``celery -b``/``--result-backend``
        (they win over the app's config); ``None`` leaves the app's own.
        ``args``: more worker options (``--memory-budget 2GiB``, ``-Q q``,
        ``-P solo``), after the harness's own (``-l info``, ``-n``, no gossip or
        mingle), so they can override them.  ``env``: added to this process's
        environment.  ``cwd``/``pythonpath``: where the app module is imported
        from.  ``node``: the node name before ``@`` (default: a fresh one).
        ``events``: send task events (``-E``), which :class:`~oomless.testing.MemoryEvents`
        reads.  ``cgroup``: a memory cgroup folder the worker starts in.
        ``wrap``: a command the worker's command line is appended to (such as
        ``unshare …``; it must ``exec`` it, so that the PID stays the worker's).
        ``wait_ready``: wait up to ``ready_timeout`` s for Celery's ``ready.``
        line (:meth:`wait_ready`); raises :class:`WorkerError` if it does not come.
        """
        log = Path(log)
        marker = uuid.uuid4().hex
        node = node or f"oomless-testing-{marker[:8]}"
        full_env = dict(os.environ, **(env or {}))
        full_env[MARKER_ENV] = marker
        # Print from a task reaches the log as it happens, not when a buffer fills.
        full_env["PYTHONUNBUFFERED"] = "1"
        if pythonpath:
            full_env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), full_env.get("PYTHONPATH", "")])
        cmd = [*wrap, sys.executable, "-m", "celery", "-A", app]
        if broker is not None:
            cmd += ["-b", broker]
        if backend is not None:
            cmd += ["--result-backend", backend]
        cmd += ["worker", "-l", "info", "-n", f"{node}@%h", *QUIET]
        if concurrency is not None:
            cmd += ["-c", str(concurrency)]
        if events:
            cmd.append("-E")
        cmd += args
        with open(log, "w") as fh:
            # A session of its own: a Ctrl-C in the terminal reaches the caller, which
            # then stops the worker in order, not the worker directly.
            popen = subprocess.Popen(
                cmd, cwd=cwd, env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=None if cgroup is None else _joining(cgroup),
            )
        worker = cls(popen, log, full_env, node, cgroup)
        if wait_ready:
            try:
                worker.wait_ready(ready_timeout)
            except BaseException:
                worker.stop(0)
                raise
        return worker

    @property
    def pid(self) -> int:
        """The worker's main process."""
        return self.proc.pid

    @property
    def marker(self) -> bytes:
        """``NAME=value`` in the environment of every process of this worker."""
        return f"{MARKER_ENV}={self.env[MARKER_ENV]}".encode()

    def text(self) -> str:
        """The worker's log so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, needle: str, timeout: float = 30.0) -> str:
        """Wait until the log holds ``needle``; return the log.  Raises :class:`WorkerError` if the worker
        exits first or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                raise WorkerError(
                    f"the worker exited with code {self.proc.returncode} before its log said {needle!r}; "
                    f"it ends:\n{_tail(text)}"
                )
            time.sleep(0.05)
        raise WorkerError(f"{needle!r} not in the worker's log after {timeout:.0f} s; it ends:\n{_tail(self.text())}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for Celery's ``<node> ready.`` line: the worker consumes from its queues."""
        self.wait_for(" ready.", timeout)

    def stop(self, timeout: float = 20.0, hurry: Callable[[], bool] | None = None) -> int:
        """Stop the worker and everything it started; return its exit code.

        A warm shutdown first (SIGTERM: running tasks finish, slot cgroups are
        removed), for up to ``timeout`` s or until ``hurry()`` says to stop
        waiting; then its whole tree is killed.  Then any process still carrying
        this worker's marker is killed, and slot cgroups it left are removed.
        Safe to call again, and on a worker that already exited.
        """
        code = self.proc.poll()
        if code is None:
            self.proc.terminate()
            deadline = time.monotonic() + timeout
            while code is None and time.monotonic() < deadline and not (hurry and hurry()):
                time.sleep(0.05)
                code = self.proc.poll()
            if code is None:
                why = "told not to wait" if hurry and hurry() else f"it did not stop {timeout:.0f} s after SIGTERM"
                self.notes.append(f"the worker was SIGKILLed: {why}")
                kill.kill_tree(self.pid, self.start_time)
                code = self.proc.wait(10)
        elif code != 0:
            self.notes.append(f"the worker had already exited with code {code}")
        marker = self.marker
        leftovers = kill.kill_matching(lambda pid: proc.environ_has(pid, marker))
        if leftovers:
            self.notes.append(f"killed {len(leftovers)} processes the worker left behind: {leftovers}")
        self._remove_stale_cgroups()
        return code

    def _remove_stale_cgroups(self) -> None:
        """Slot cgroups of this worker, if it died before removing them."""
        host = detect()
        parent = self.cgroup or host.path
        if parent is None or not host.writable or self.start_time is None:
            return
        name = f"oomless-{self.pid}-{self.start_time}"
        for stale in stale_groups(parent):
            if os.path.basename(stale) == name:
                slot_groups(host.version, stale).remove(kill=True)
                self.notes.append(f"removed slot cgroups {stale} the worker left behind")

    def __enter__(self: W) -> W:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _joining(folder: str) -> Callable[[], None]:
    """A ``preexec_fn`` moving the new process into the cgroup ``folder`` before it execs."""
    procs = os.path.join(folder, "cgroup.procs")

    def join() -> None:
        write(procs, os.getpid())

    return join


start_worker = Worker.start
