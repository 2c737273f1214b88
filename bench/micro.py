"""Isolated costs of the per-task steps a governed worker adds, in CPU µs per call (thread time,
so a loaded machine inflates them less than wall time; compare figures of one run with each other).

    .venv/bin/python bench/micro.py [--calls 20000]

* pool child, the task's log line: Celery's own success line alone, with oomless's memory on it
  (the filter), and oomless's former second line;
* pool child, the peak: getrusage against VmHWM from a kept-open status;
* watchdog monitor, one running slot with two subprocesses: a look for new members and tmpfs
  files, the members' RSS, and reading a process's children by path against a kept-open file;
* cgroup mode (where slot groups can be made here): a task start's baseline with and without
  reading the slot's memory.stat.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import emit, versions

MiB = 2**20


def per_call(fn: Callable[[], object], calls: int) -> float:
    """Thread CPU µs per call of ``fn``, the best of three runs."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - start) / calls * 1e6)
    return round(best, 2)


def log_lines(calls: int) -> dict:
    from celery import Celery
    from celery.app.trace import LOG_SUCCESS, info

    import oomless.celery.governor as governor
    from oomless.celery import child, compat
    from oomless.celery.events import log_finished
    from oomless.spec import Memory

    log = Path(tempfile.mkdtemp()) / "worker.log"
    Celery("micro").log.setup(loglevel=logging.INFO, logfile=str(log))
    spec = Memory(64 * MiB, 64 * MiB)
    context = {"id": "6f1c", "name": "noop.count", "return_value": "None", "runtime": 0.001, "args": "()",
               "kwargs": "{}"}

    class Gov:  # what the filter reads of the governor
        mode = "cgroup"

    saved = governor.current
    governor.current, child._running, child._spec = Gov(), "6f1c", spec  # type: ignore[assignment]
    child._peak = ("6f1c", 50 * MiB)
    trace = compat.trace_logger()
    try:
        alone = per_call(lambda: info(LOG_SUCCESS, context), calls)
        second = per_call(lambda: log_finished("noop.count", "6f1c", "ok", 50 * MiB, spec, "cgroup"), calls)
        trace.addFilter(child._TASK_LINE)
        with_memory = per_call(lambda: info(LOG_SUCCESS, context), calls)
    finally:
        trace.removeFilter(child._TASK_LINE)
        governor.current, child._running, child._peak = saved, None, None
    print(f"pool child's log: Celery's line {alone} µs; with the memory on it {with_memory} µs; "
          f"the former second line {second} µs")
    return {"celery_line_us": alone, "celery_line_with_memory_us": with_memory, "second_line_us": second}


def peaks(calls: int) -> dict:
    from oomless.linux import proc

    own = proc.OwnMemory()
    own.reset_peak()
    fast, slow = per_call(own.peak, calls), per_call(own.hwm, calls)
    print(f"peak: getrusage {fast} µs; VmHWM from status {slow} µs")
    return {"peak_getrusage_us": fast, "peak_status_us": slow}


def monitor(calls: int) -> dict:
    from oomless.enforce.readers import Readers
    from oomless.enforce.slots import SlotState
    from oomless.enforce.tree import Tree
    from oomless.linux import proc

    code = "import subprocess, time; k = [subprocess.Popen(['sleep', '60']) for _ in range(2)]; time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(proc.children(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        state = SlotState(1, parent.pid, True, "t", None, None, proc.rss(parent.pid), 0, 0)
        tree = Tree(state, Readers(), proc.tmpfs_devices())
        reader = proc.ChildrenReader(parent.pid)
        out = {
            "discover_us": per_call(lambda: tree.discover(False), calls),
            "usage_us": per_call(tree.usage, calls),
            "children_by_path_us": per_call(lambda: proc.children(parent.pid), calls),
            "children_kept_open_us": per_call(reader.read, calls),
        }
        tree.close()
        reader.close()
    finally:
        parent.kill()
        parent.wait()
    print(f"watchdog, a slot with 2 subprocesses: look for new members {out['discover_us']} µs, their RSS "
          f"{out['usage_us']} µs; children by path {out['children_by_path_us']} µs, kept open "
          f"{out['children_kept_open_us']} µs")
    return out


def cgroup_baseline(calls: int) -> dict:
    from oomless.enforce.cgroup import CgroupEnforcer
    from oomless.enforce.slots import SlotTable
    from oomless.linux.cgroup.host import detect

    host = detect()
    if not host.usable:
        print(f"cgroup: skipped ({host.reason})")
        return {}
    enforcer = CgroupEnforcer(SlotTable(2), host)
    enforcer.groups.create(2)
    try:
        me = os.getpid()
        cached = per_call(lambda: enforcer.measure_baseline(1, me), calls)
        stat = per_call(lambda: enforcer.groups.usage_shmem(1), calls)
    finally:
        enforcer.groups.remove(kill=True)
    print(f"cgroup: a task start's baseline {cached} µs (memory.stat read every 16 starts); "
          f"usage with memory.stat {stat} µs")
    return {"baseline_us": cached, "usage_with_stat_us": stat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    emit("micro", {**log_lines(args.calls), **peaks(args.calls), **monitor(args.calls),
                   **cgroup_baseline(args.calls), "versions": versions()})


if __name__ == "__main__":
    main()
