"""The fault soak's short profile (issue 14, item 4): ``bench/soak.py --profile short``.

A governed worker and vanilla Celery, each alone in a 3 GiB memory cgroup with
Airflow's settings, under the same seeded workload and faults (pool children
and the main process killed, a warm restart, the broker killed and restarted,
runaways of every kind, malformed headers, infeasible requests, the history
store down).  What the soak measures of vanilla is reported, not asserted; for
oomless every target holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_short_soak_loses_nothing_leaves_nothing_and_names_every_failure(tmp_path):
    # About 2.5 minutes: oomless finishes in ~40 s, vanilla runs to the 100 s cap (its runaways loop).
    done = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--profile", "short"],
        cwd=BENCH, env=dict(os.environ, OOMLESS_BENCH_OUT=str(tmp_path)), capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCH soak "))
    runs = json.loads(line[len("BENCH soak "):])
    oomless = runs["oomless"]
    assert {k: oomless[k] for k in (
        "lost", "unnamed_failures", "kernel_oom_kills", "worker_deaths_not_injected", "orphans",
        "leftover_cgroups", "oomless_tracebacks",
    )} == {
        "lost": 0, "unnamed_failures": 0, "kernel_oom_kills": 0, "worker_deaths_not_injected": 0,
        "orphans": 0, "leftover_cgroups": 0, "oomless_tracebacks": 0,
    }, done.stdout[-6000:]
    # A well-behaved task may fail only for a reason that names itself (a result that could not be
    # stored while the broker was down is Celery's ConnectionError, on both engines).  Reported, not
    # asserted: a message the SIGKILLed main process had prefetched and never started waits in Redis for
    # the visibility timeout and the next worker start (kombu restores unacked messages only then), which
    # the short run may not reach ("never_started"; vanilla has the same gap).
    assert not set(oomless["well_not_ok_outcomes"]) & {"STARTED", "FAILURE", "WorkerLostError"}
    assert set(oomless["runaways"]) == {"thread", "bgthread", "subprocess", "daemon", "shm", "shmmap", "forkbomb"}
    assert all(v.startswith("MemoryLimitExceeded") for v in oomless["runaways"].values()), oomless["runaways"]
    assert oomless["malformed"] == ["InvalidMemorySpec"]
    assert oomless["infeasible"] == ["InfeasibleMemoryRequest"]
    assert "vanilla" in runs  # measured in the same run, reported beside oomless
