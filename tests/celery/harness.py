"""Start and stop real governed Celery workers in subprocesses, for the tests.

A thin layer over :mod:`oomless.testing` (which starts, waits for and stops the
worker, killing its whole tree): the app is ``worker_app.py`` beside this file,
configured through ``OOMLESS_TEST_*`` environment variables; on cgroup v2 each
worker starts in a memory cgroup of its own; waits get :data:`SLACK` in the
cgroup-v2 guests.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from oomless import testing
from oomless.linux import kill
from oomless.linux.cgroup.files import pids, write
from oomless.linux.cgroup.host import detect

HERE = Path(__file__).parent


class Worker(testing.Worker):
    """A worker of ``worker_app`` on its own queue (see :func:`start_worker`)."""

    queue: str = ""
    ready: bool = False
    group: MemoryCgroup | None = None  # a cgroup v2 group made for this worker alone, removed by stop()

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        """Wait until the log holds ``needle``; fail the test if the worker exits first or time runs out."""
        try:
            return super().wait_for(needle, timeout)
        except testing.WorkerError as exc:
            raise AssertionError(str(exc)) from None

    def stop(self, timeout: float = 20, hurry: Callable[[], bool] | None = None) -> int:
        """Stop the worker and its whole tree (see :meth:`oomless.testing.Worker.stop`), then its group."""
        code = super().stop(timeout, hurry)
        if self.group is not None:
            self.group.remove()
            self.group = None
        return code


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it is dead, only not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 5) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to die; whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def wait_file(path: Path, timeout: float = 30, lines: int = 1) -> list[str]:
    """Wait until ``path`` has at least ``lines`` complete lines; return them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            # Writers here write each line whole (one write) or rename a finished file into place.
            got = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if len(got) >= lines:
                return got
        time.sleep(0.02)
    raise AssertionError(f"{path} did not get {lines} line(s) in {timeout} s")


#: This process's memory cgroup; on cgroup v2 (the guest of tests/v2vm/run) every worker gets a
#: delegated group of its own, as systemd's Delegate=yes gives a service.
HOST = detect()
V2 = HOST.version == 2 and HOST.usable

#: How much longer a wait may take in the cgroup-v2 guests (tests/v2vm/run sets OOMLESS_V2VM):
#: Python runs ~2.4x slower there on one CPU, page faults far slower in user-mode-linux, and CI
#: runs them beside CPU hogs.  Waits only: no test asserts a duration.
SLACK = 3.0 if os.environ.get("OOMLESS_V2VM") else 1.0


class MemoryCgroup:
    """A memory cgroup for one worker (cgroup v1: below the memory controller's root; v2: below this
    process's group), limited to ``limit`` bytes unless ``None``; :meth:`remove` kills what is left
    in it (and below) and removes it."""

    def __init__(self, limit: int | None) -> None:
        parent = HOST.path if V2 else "/sys/fs/cgroup/memory"
        assert parent is not None
        self.path = os.path.join(parent, f"oomless-test-{uuid.uuid4().hex[:8]}")
        os.mkdir(self.path)
        if limit is not None:
            with open(os.path.join(self.path, "memory.max" if V2 else "memory.limit_in_bytes"), "w") as fh:
                fh.write(str(limit))

    def set_limit(self, limit: int | None) -> None:
        """Change the group's limit (``None``: none), as an operator would at run time."""
        name = "memory.max" if V2 else "memory.limit_in_bytes"
        value = ("max" if V2 else "-1") if limit is None else str(limit)
        with open(os.path.join(self.path, name), "w") as fh:
            fh.write(value)

    def join(self) -> None:
        """Move the calling process into this group (a ``preexec_fn``)."""
        write(os.path.join(self.path, "cgroup.procs"), os.getpid())

    def oom_kills(self) -> int:
        """Kernel OOM kills in this group and every group below it."""
        if V2:  # memory.events counts the whole subtree
            with open(os.path.join(self.path, "memory.events")) as fh:
                return sum(int(line.split()[1]) for line in fh if line.startswith("oom_kill "))
        total = 0
        for folder, _, _ in os.walk(self.path):
            try:
                with open(os.path.join(folder, "memory.oom_control")) as fh:
                    total += sum(int(line.split()[1]) for line in fh if line.startswith("oom_kill "))
            except FileNotFoundError:
                pass
        return total

    def remove(self) -> None:
        deadline = time.monotonic() + 30
        while os.path.exists(self.path) and time.monotonic() < deadline:
            for folder in sorted((f for f, _, _ in os.walk(self.path)), key=len, reverse=True):
                # Members of a group made for one worker are that worker's.
                kill.kill_pids(pids(os.path.join(folder, "cgroup.procs")))
                try:
                    os.rmdir(folder)
                except OSError:
                    pass
            time.sleep(0.05)
        if os.path.exists(self.path):
            raise AssertionError(f"could not remove the test cgroup {self.path}")


def start_worker(
    tmp: Path,
    broker: str,
    backend: str,
    mode: str = "auto",
    concurrency: int = 2,
    extra: tuple[str, ...] = (),
    wait_ready: bool = True,
    conf: dict | None = None,
    queue: str | None = None,
    cgroup: str | None = None,
    node: str | None = None,
    wrap: tuple[str, ...] = (),
) -> Worker:
    """A governed worker subprocess; ``conf`` is merged into the app's config; ``queue``: share one;
    ``cgroup``: a memory cgroup folder the worker starts in (on cgroup v2, by default, one of its own);
    ``node``: its node name before ``@``
    (a restarted worker keeps its name); ``wrap``: a command the worker's command line is appended to."""
    queue = queue or f"oomless-test-{uuid.uuid4().hex[:8]}"
    env = dict(
        OOMLESS_TEST_BROKER=broker,
        OOMLESS_TEST_BACKEND=backend,
        OOMLESS_TEST_QUEUE=queue,
        OOMLESS_TEST_MODE=mode,
        # In the guests a new pool child can take longer than billiard's 4 s to say it is up
        # (seen: 8-13 children killed for it in one test beside CPU hogs), which only adds churn.
        OOMLESS_TEST_CONF=json.dumps({"worker_proc_alive_timeout": 4.0 * SLACK, **(conf or {})}),
    )
    node = node or f"{uuid.uuid4().hex[:6]}-{queue}"
    group = None
    if cgroup is None and V2:
        group = MemoryCgroup(None)
        cgroup = group.path
    worker = Worker.start(
        "worker_app", tmp / f"worker-{node}-{uuid.uuid4().hex[:4]}.log", concurrency=concurrency, args=extra,
        env=env, cwd=HERE, pythonpath=[HERE], node=node, cgroup=cgroup, wrap=wrap, wait_ready=False,
    )
    worker.queue, worker.group = queue, group
    if wait_ready:
        try:
            worker.wait_for("ready.", 30 * SLACK)  # a guest on a busy host imports slowly
        except AssertionError:
            worker.stop()
            raise
        worker.ready = True
    return worker
