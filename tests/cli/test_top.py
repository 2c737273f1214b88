"""`oomless top` shows the governed workers of an app live: budget, running tasks with live memory, waiting tasks.

The tests run the real command (`python -m oomless.cli top`) against a real
governed worker (watchdog mode, 1 GiB budget) on a real Redis: in a tmux
terminal for the live view, in a subprocess for `--once`.  One test draws a
frame with `render` from a hand-written reply, to pin the colour of a task
near its limit, which a real task cannot hold steadily.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from oomless.cli.top import render

from ..celery.harness import HERE, Worker, start_worker
from ..celery.worker_app import make_app

MiB = 2**20
TMUX = "/usr/bin/tmux"


def nodename(worker: Worker) -> str:
    """The worker's full node name (``<node>@<host>``), from its "ready." log line."""
    found = re.search(rf"({re.escape(worker.node)}@\S+) ready\.", worker.text())
    assert found, f"no 'ready.' line for {worker.node} in:\n{worker.text()[-2000:]}"
    return found.group(1)


def top(worker: Worker, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``oomless top -A worker_app …`` where the worker runs, with its environment: the same app."""
    return subprocess.run(
        [sys.executable, "-m", "oomless.cli", "top", "-A", "worker_app", *args],
        capture_output=True, text=True, timeout=timeout, cwd=HERE, env=worker.env,
    )


def start_running_and_waiting(tmp_path: Path, redis_url: str):
    """A governed worker running one t.hold of 200 MiB (request 600 MiB) with a second one waiting for room."""
    worker = start_worker(tmp_path, redis_url, redis_url, mode="watchdog", extra=("--memory-budget", "1GiB"))
    app = make_app(redis_url, redis_url, worker.queue, "watchdog")
    big = app.tasks["t.hold"].apply_async([60, 200], memory="600MiB")
    worker.wait_for(f"t.hold[{big.id}] received")
    second = app.tasks["t.hold"].apply_async([1, 0], memory="600MiB")  # cannot fit beside the first
    worker.wait_for(f"t.hold[{second.id}] waits")
    return worker, app, big, second


def stop(worker: Worker, app, big) -> None:
    # The held task would keep a warm shutdown waiting for a minute.
    app.control.revoke(big.id, terminate=True, signal="SIGKILL")
    worker.stop()
    app.close()


def wait_until(what: str, probe: Callable[[], str], ok: Callable[[str], bool], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = probe()
        if ok(seen):
            return seen
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen within {timeout} s; last seen:\n{seen}")


def mib(size: str) -> float:
    value, unit = size.split()
    return float(value) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


def test_top_shows_the_worker_its_budget_a_running_task_with_live_memory_and_a_waiting_task(tmp_path, redis_url):
    worker, app, big, second = start_running_and_waiting(tmp_path, redis_url)
    node = nodename(worker)
    session = f"oomless-top-{uuid.uuid4().hex[:8]}"
    # A tmux server of our own (its socket in tmp_path): nobody else's sessions, our environment.
    tmux = [TMUX, "-S", str(tmp_path / "tmux.sock")]
    rc_file, err_file = tmp_path / "top.rc", tmp_path / "top.err"
    exports = "".join(
        f"export {key}={shlex.quote(value)}\n"
        for key, value in worker.env.items() if key.startswith("OOMLESS_TEST_") or key == "PYTHONPATH"
    )
    script = tmp_path / "top.sh"
    # The shell traps SIGINT so that Ctrl-C ends only top and the shell lives on to write top's exit status
    # (a trap, unlike ignoring the signal, leaves SIGINT at its default in top).
    script.write_text(
        f"trap true INT\n{exports}cd {shlex.quote(str(HERE))}\n"
        f"{shlex.quote(sys.executable)} -m oomless.cli top -A worker_app --interval 0.5 -d {shlex.quote(node)} "
        f"2>{shlex.quote(str(err_file))}\n"
        f"echo $? > {shlex.quote(str(rc_file))}\n"
    )
    # The running row: id prefix, name, used, request, limit, % of limit, runtime.
    row = re.compile(
        rf"{big.id[:8]}\s+t\.hold\s+(?P<used>[\d.]+ [KMG]iB)\s+600\.0 MiB\s+600\.0 MiB\s+\d+%\s+(?P<runtime>\S+ ?s)"
    )

    def screen() -> str:
        return subprocess.run(tmux + ["capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def holding(text: str) -> bool:
        found = row.search(text)
        return found is not None and mib(found["used"]) >= 150  # it allocated its 200 MiB

    try:
        subprocess.run(
            tmux + ["new-session", "-d", "-s", session, "-x", "160", "-y", "50", f"sh {shlex.quote(str(script))}"],
            check=True, env=worker.env,
        )
        first = wait_until("the running task holding its memory", screen, holding)
        assert node in first
        assert "watchdog · 2 slots · admission on" in first
        assert re.search(r"reserved .*600\.0 MiB of 1\.0 GiB \(59%\)", first), first
        assert re.search(r"used .* of 1\.0 GiB", first), first
        used = mib(row.search(first)["used"])
        assert 150 <= used <= 300, first
        assert re.search(rf"{second.id[:8]}\s+t\.hold\s+600\.0 MiB\s+[\d.]+ s\s+no room", first), first
        assert "1 worker answered (1 governed)" in first
        # Live: a later frame shows the task's runtime moving on.
        runtime = row.search(first)["runtime"]
        wait_until("a refreshed frame", screen, lambda text: (m := row.search(text)) is not None
                   and m["runtime"] != runtime)

        subprocess.run(tmux + ["send-keys", "-t", session, "C-c"], check=True)
        wait_until("top's exit status", lambda: rc_file.read_text() if rc_file.exists() else "", bool, timeout=30)
        assert rc_file.read_text().strip() == "0", err_file.read_text()
        assert "Traceback" not in err_file.read_text(), err_file.read_text()
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
        stop(worker, app, big)


def test_top_once_json_prints_the_workers_status(tmp_path, redis_url):
    worker, app, big, second = start_running_and_waiting(tmp_path, redis_url)
    try:
        node = nodename(worker)
        result = top(worker, "--once", "--json")
        assert result.returncode == 0, result.stderr
        # Other workers on this broker may answer too: find ours.
        bodies = {name: body for reply in json.loads(result.stdout) for name, body in reply.items()}
        status = bodies[node]
        assert (status["governed"], status["hostname"], status["mode"]) == (True, node, "watchdog")
        assert (status["budget"], status["reserved"], status["slots"]) == (1024 * MiB, 600 * MiB, 2)
        assert [(t["id"], t["name"], t["limit"]) for t in status["running"]] == [(big.id, "t.hold", 600 * MiB)]
        assert [(t["id"], t["request"], t["fits"]) for t in status["waiting"]] == [(second.id, 600 * MiB, False)]
    finally:
        stop(worker, app, big)


def test_top_once_says_nobody_answered_and_exits_non_zero(redis_url):
    # Redis database 15: no worker of any test listens there.
    broker = f"{redis_url}/15" if redis_url.startswith("redis://") else f"{redis_url}?virtual_host=15"
    result = subprocess.run(
        [sys.executable, "-m", "oomless.cli", "top", "-b", broker, "--once"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="400"),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert f"no governed worker answered within 1.0 s on {broker}." in text
    assert "0 workers answered (0 governed)" in text


def test_a_task_above_90_percent_of_its_limit_is_drawn_in_red():
    def frame(used: int) -> str:
        status = {
            "governed": True, "hostname": "w1@host", "pid": 1, "mode": "watchdog", "budget": 1024 * MiB,
            "reserved": 100 * MiB, "used": used, "slots": 2, "admission": True, "counts": {"ok": 1},
            "running": [{"id": "abcdef0123", "name": "etl.load", "slot": 0, "pid": 2, "request": 100 * MiB,
                         "limit": 100 * MiB, "used": used, "runtime": 3.0}],
            "waiting": [], "at": 0.0,
        }
        out = io.StringIO()
        console = Console(file=out, width=160, force_terminal=True, color_system="standard")
        console.print(render([{"w1@host": status}], source="redis://x", timeout=1.0))
        return out.getvalue()

    red_share = re.compile(r"\x1b\[[0-9;]*31m\s*(\d+)%")
    assert red_share.search(frame(95 * MiB))[1] == "95"
    assert red_share.search(frame(80 * MiB)) is None
