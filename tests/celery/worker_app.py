"""The Celery app the integration tests run in real worker subprocesses.

Configured from environment variables so that the worker subprocess and the
test process build the same app: OOMLESS_TEST_BROKER, OOMLESS_TEST_BACKEND,
OOMLESS_TEST_QUEUE, OOMLESS_TEST_MODE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time

from celery import Celery

import oomless
from oomless.celery.plugin import Plugin

MiB = 2**20


class EndsSeen(Plugin):
    """Logs, as each governed task ends, whether the admission gate still holds its slot."""

    def setup(self, app, governor) -> None:
        self.governor = governor

    def ended(self, req, outcome, report) -> None:
        gate = self.governor.gate
        held = gate is not None and req in gate.adm.running
        logging.getLogger(__name__).warning("t: %s ended %s, slot %s", req.id, outcome, "held" if held else "free")


def make_app(broker: str, backend: str, queue: str, mode: str = "auto", conf: dict | None = None) -> Celery:
    app = Celery("t", broker=broker, backend=backend)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_expires=600,
        broker_connection_retry_on_startup=True,
        oomless_enforcement=mode,
    )
    app.conf.update(conf if conf is not None else json.loads(os.environ.get("OOMLESS_TEST_CONF", "{}")))
    oomless.install(app)

    @app.task(name="t.hog", memory="256MiB")
    def hog(mb: int, marker: str | None = None) -> int:
        """Allocate ``mb`` MiB in 8 MiB steps (touching every page); append to ``marker`` first."""
        if marker:
            with open(marker, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        chunks = [bytearray(8 * MiB) for _ in range(mb // 8)]
        return len(chunks) * 8

    @app.task(name="t.sub_hog", memory="256MiB")
    def sub_hog(mb: int, pidfile: str, hold: float = 30) -> int:
        """Run a subprocess that allocates ``mb`` MiB and holds it; it writes its pid to ``pidfile`` first."""
        code = (
            f"import os, time; open({pidfile!r}, 'w').write(str(os.getpid())); "
            f"x = [bytearray(8 << 20) for _ in range({mb // 8})]; time.sleep({hold})"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        return mb

    @app.task(name="t.spawns")
    def spawns(mb: int, count: int) -> int:
        """Hold ``mb`` MiB and run ``count`` short programs one after the other (Python's subprocess
        starts each with vfork)."""
        data = [bytearray(8 * MiB) for _ in range(mb // 8)]
        for _ in range(count):
            subprocess.run(["true"], check=True)
        del data
        return count

    @app.task(name="t.spared", memory="256MiB", memory_scope="subprocesses")
    def spared(mb: int, fork: bool = False) -> dict:
        """Like an Airflow supervisor: run the work (``mb`` MiB) in a child process, survive its kill,
        and report how it ended.  ``fork``: a fork without exec (as Airflow's task runner), else exec."""
        if fork:
            pid = os.fork()
            if pid == 0:
                try:
                    x = [bytearray(8 * MiB) for _ in range(mb // 8)]
                    time.sleep(0.2)
                    del x
                finally:
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        else:
            code = subprocess.run(
                [sys.executable, "-c", f"x = [bytearray(8 << 20) for _ in range({mb // 8})]"]
            ).returncode
        return {"returncode": code, "pid": os.getpid()}

    @app.task(name="t.sleeper", memory="64MiB")
    def sleeper(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @app.task(name="t.hold", bind=True)
    def hold(self, seconds: float, mb: int = 0) -> dict:
        """Hold ``mb`` MiB for ``seconds``; say when it ran and where."""
        start = time.time()
        data = [bytearray(8 * MiB) for _ in range(mb // 8)]
        time.sleep(seconds)
        del data
        return {"start": start, "end": time.time(), "pid": os.getpid(), "worker": self.request.hostname}

    @app.task(name="t.grow", bind=True)
    def grow(self, mb: int, seconds: float, hold: float = 0.0, mark: str | None = None,
             after: str | None = None) -> dict:
        """Grow to ``mb`` MiB evenly over ``seconds``, then hold it ``hold`` seconds.

        ``mark``: a file created as the task starts.  ``after``: hold only once that file exists
        (at most 60 s), so two tasks overlap however late a loaded machine starts the second.
        """
        start, data = time.time(), []
        if mark is not None:
            open(mark, "w").close()
        for _ in range(mb // 32):
            data.append(bytearray(32 * MiB))
            time.sleep(seconds / max(1, mb // 32))
        deadline = time.time() + 60
        while after is not None and not os.path.exists(after) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(hold)
        return {"start": start, "end": time.time(), "pid": os.getpid(), "worker": self.request.hostname}

    @app.task(
        name="t.escalating",
        memory="128MiB",
        memory_retry=oomless.Escalate(factor=2, max="1GiB", attempts=3),
    )
    def escalating(mb: int) -> int:
        """Allocate ``mb`` MiB: more than the first limit, so it needs escalation."""
        chunks = [bytearray(8 * MiB) for _ in range(mb // 8)]
        return len(chunks) * 8

    @app.task(name="t.sized", memory="1GiB")
    def sized(mb: int, per_mb: int = 2, hold: float = 0.0, report: bool = True) -> int:
        """Read ``mb`` MiB of "input" (say so with oomless.input_size) and hold ``per_mb`` × that."""
        if report:
            oomless.input_size(mb * MiB)
        data = [bytearray(MiB) for _ in range(mb * per_mb)]
        time.sleep(hold)
        return len(data)

    @app.task(name="t.daemon_hog", memory="256MiB")
    def daemon_hog(mb: int, pidfile: str, hold: float = 30.0, wait: bool = True) -> int:
        """Start a daemon (double fork, ``setsid``) that writes its pid to ``pidfile``, then holds ``mb`` MiB
        for ``hold`` s; the intermediate parent exits at once.  ``wait``: the task waits ``hold`` s too."""
        code = (
            "import os, time\n"
            "if os.fork(): os._exit(0)\n"
            "os.setsid()\n"
            "if os.fork(): os._exit(0)\n"
            f"open({pidfile!r} + '.tmp', 'w').write(str(os.getpid())); os.rename({pidfile!r} + '.tmp', {pidfile!r})\n"
            f"x = [bytearray(8 << 20) for _ in range({mb // 8})]\n"
            f"time.sleep({hold})\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        deadline = time.monotonic() + 30  # the daemon is up (it wrote its pid) before the task goes on
        while not os.path.exists(pidfile) and time.monotonic() < deadline:
            time.sleep(0.01)
        if wait:
            time.sleep(hold)
        return mb

    @app.task(name="t.shm_write", memory="256MiB")
    def shm_write(mb: int, path: str, hold: float = 0.0, keep: bool = False) -> int:
        """Write ``mb`` MiB to the tmpfs file ``path`` with write() (never mapped), hold it ``hold`` s open;
        remove it unless ``keep``."""
        try:
            with open(path, "wb") as fh:
                for _ in range(mb // 8):
                    fh.write(b"\1" * (8 * MiB))
                    fh.flush()
                time.sleep(hold)
        finally:
            if not keep and os.path.exists(path):
                os.unlink(path)
        return mb

    @app.task(name="t.free_then_hog", memory="256MiB")
    def free_then_hog(path: str, mb: int, hold: float = 1.0) -> int:
        """Delete ``path`` (an earlier task's leftover), then allocate ``mb`` MiB and hold it ``hold`` s."""
        if os.path.exists(path):
            os.unlink(path)
        chunks = [bytearray(8 * MiB) for _ in range(mb // 8)]
        time.sleep(hold)
        return len(chunks) * 8

    @app.task(name="t.sub_hold", bind=True)
    def sub_hold(self, pidlog: str, hold: float = 30.0, new_session: bool = False) -> int:
        """Run a subprocess that appends its pid to ``pidlog`` and sleeps ``hold`` s (``new_session``: setsid)."""
        code = f"import os, time; open({pidlog!r}, 'a').write(f'{{os.getpid()}}\\n'); time.sleep({hold})"
        subprocess.run([sys.executable, "-c", code], check=True, start_new_session=new_session)
        return os.getpid()

    @app.task(name="t.fail", memory="256MiB")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="t.whoami")
    def whoami() -> dict:
        with open("/proc/self/oom_score_adj") as fh:
            adj = int(fh.read())
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {"pid": os.getpid(), "ppid": os.getppid(), "oom_score_adj": adj, "rss": rss}

    @app.task(name="t.heap_churn", memory="256MiB")
    def heap_churn(mb: int) -> int:
        """Free ``mb`` MiB that glibc keeps resident: freeing an mmapped block of mb + 1 MiB raises
        its mmap threshold, so the next block of mb MiB comes from the heap and stays after ``del``."""
        big = bytearray((mb + 1) * 2**20)
        del big
        heap = bytearray(mb * 2**20)
        del heap
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @app.task(name="t.digest", memory="1GiB")
    def digest(data: str, label: str = "") -> dict:
        """What arrived: the length and SHA-256 of ``data`` (a claim check must deliver it whole)."""
        return {"len": len(data), "sha": hashlib.sha256(data.encode()).hexdigest(), "label": label}

    @app.task(name="t.lengths", memory="1GiB")
    def lengths(items: list) -> list:
        """A chord's callback: the length of each result it was given."""
        return [len(x) for x in items]

    @app.task(name="t.blob", memory="1GiB")
    def blob(n: int, fill: str = "r") -> str:
        """A result of ``n`` characters."""
        return fill * n

    return app


app = make_app(
    os.environ.get("OOMLESS_TEST_BROKER", "redis://127.0.0.1:6379/0"),
    os.environ.get("OOMLESS_TEST_BACKEND", "redis://127.0.0.1:6379/1"),
    os.environ.get("OOMLESS_TEST_QUEUE", "celery"),
    os.environ.get("OOMLESS_TEST_MODE", "auto"),
)
