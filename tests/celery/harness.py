"""Start and stop real governed Celery workers in subprocesses."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from oomless.linux.cgroup.host import detect

HERE = Path(__file__).parent


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    env: dict
    queue: str
    ready: bool = field(default=False)
    node: str = ""  # the worker's node name up to "@" (what a task's request.hostname starts with)
    group: MemoryCgroup | None = None  # a cgroup v2 group made for this worker alone, removed by stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {needle!r}:\n{text[-4000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not in worker log after {timeout}s:\n{self.text()[-4000:]}")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Pool children lead their own process groups; make sure none outlived the worker.
        _kill_leftovers(self.env["OOMLESS_TEST_WORKER"])
        if self.group is not None:
            self.group.remove()
            self.group = None
        return self.proc.returncode


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


def _join(cgroup: str) -> None:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as fh:
        fh.write(str(os.getpid()))


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
        _join(self.path)

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
                try:
                    with open(os.path.join(folder, "cgroup.procs")) as fh:
                        for pid in fh.read().split():
                            try:
                                os.kill(int(pid), signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    os.rmdir(folder)
                except OSError:
                    pass
            time.sleep(0.05)
        if os.path.exists(self.path):
            raise AssertionError(f"could not remove the test cgroup {self.path}")


def _kill_leftovers(worker_id: str) -> None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"OOMLESS_TEST_WORKER={worker_id}".encode() in environ:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


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
        os.environ,
        OOMLESS_TEST_BROKER=broker,
        OOMLESS_TEST_BACKEND=backend,
        OOMLESS_TEST_QUEUE=queue,
        OOMLESS_TEST_WORKER=uuid.uuid4().hex,
        OOMLESS_TEST_MODE=mode,
        # In the guests a new pool child can take longer than billiard's 4 s to say it is up
        # (seen: 8-13 children killed for it in one test beside CPU hogs), which only adds churn.
        OOMLESS_TEST_CONF=json.dumps({"worker_proc_alive_timeout": 4.0 * SLACK, **(conf or {})}),
        PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    node = node or f"{uuid.uuid4().hex[:6]}-{queue}"
    log = tmp / f"worker-{node}-{uuid.uuid4().hex[:4]}.log"
    cmd = [
        *wrap, sys.executable, "-m", "celery", "-A", "worker_app", "worker",
        "-c", str(concurrency), "-l", "info", "-E", "-n", f"{node}@%h", "--without-gossip",
        "--without-mingle", *extra,
    ]
    group = None
    if cgroup is None and V2:
        group = MemoryCgroup(None)
        cgroup = group.path
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=HERE, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=None if cgroup is None else functools.partial(_join, cgroup),
        )
    worker = Worker(proc, log, env, queue, node=node, group=group)
    if wait_ready:
        worker.wait_for("ready.")
        worker.ready = True
    return worker
