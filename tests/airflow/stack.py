"""A real Airflow 3 deployment on one machine, started from a test or a benchmark.

api-server, scheduler, dag-processor and one Celery worker, each a subprocess
in its own session, on SQLite and a Redis broker/result backend, with
``serve-logs`` bound to 127.0.0.1 (Airflow's own binds every interface).
:meth:`Stack.stop` kills every process any of them started (they all carry a
marker in their environment), even when the test failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from oomless.testing import free_port

__all__ = ["Stack", "free_port"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXAMPLE_DAGS = REPO / "examples" / "airflow" / "dags"


def _kill_marked(marker: str) -> list[int]:
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"OOMLESS_TEST_STACK={marker}".encode() in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


class Stack:
    """One Airflow deployment; ``oomless=False`` runs the stock CeleryExecutor and worker config."""

    def __init__(
        self,
        home: Path,
        redis_url: str,
        dags: Path = EXAMPLE_DAGS,
        oomless: bool = True,
        env: dict[str, str] | None = None,
        worker_args: tuple[str, ...] = (),
        worker_preexec: Any = None,
        slack: float = 1.0,
    ) -> None:
        self.home = home
        # how much longer a slow place (the cgroup v2 guest) gets: every wait below and every API call
        # take this many times the timeout they are given
        self.slack = slack
        self.marker = uuid.uuid4().hex
        self.port = free_port()
        self.log_port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.worker_args = worker_args
        self.worker_preexec = worker_preexec  # e.g. join a memory cgroup (benchmarks)
        db = redis_url.rstrip("/")
        index = int(uuid.uuid4().int % 8) + 8  # a Redis database of its own, flushed at start
        broker = f"{db}/{index}" if db.startswith("redis://") else db
        self.broker = broker
        bindir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OOMLESS_TEST_STACK": self.marker,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": (
                "oomless.airflow.executor.OomlessCeleryExecutor" if oomless else "CeleryExecutor"
            ),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stack_hostname.localhost",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
            "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CELERY__BROKER_URL": broker,
            # a key prefix of its own too: two suites on one machine (a developer's run beside CI) may
            # draw the same database, and would then take each other's tries off the "default" queue
            **({"AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{self.marker[:12]}:"}
               if broker.startswith("redis") else {}),
            "AIRFLOW__CELERY__RESULT_BACKEND": broker,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_port),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }
        if slack > 1:
            # A try's supervisor gives the execution API 5 s per call (Airflow's default), then
            # retries; a retried "start this try" finds the try already running and fails it
            # (400). In the one-CPU guest, with six tries importing Airflow at once, the first
            # call took 36 s, so every try failed and was retried until the run timed out.
            self.env["AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT"] = str(30 * slack)
        if oomless:
            self.env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] = "oomless.airflow.celery_config.CELERY_CONFIG"
        self.env.update(env or {})
        self._token: str | None = None

    # -- processes --------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def _spawn(self, name: str, cmd: list[str], preexec_fn: Any = None) -> None:
        log = open(self.home / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home,
            preexec_fn=preexec_fn,
        )
        log.close()

    def start(self) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.broker.startswith("redis://"):
            import redis

            redis.Redis.from_url(self.broker).flushdb()
        done = self.airflow("db", "migrate")
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        py = [sys.executable, "-m", "airflow"]
        self._spawn("api-server", [*py, "api-server", "--host", "127.0.0.1", "--port", str(self.port)])
        self._spawn("scheduler", [*py, "scheduler"])
        self._spawn("dag-processor", [*py, "dag-processor"])
        self.start_worker()
        self._spawn("serve-logs", [sys.executable, str(HERE / "serve_logs_local.py"), str(self.log_port)])
        self.wait_http(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", 120)
        return self

    def start_worker(self) -> None:
        self._spawn(
            "worker",
            [sys.executable, "-m", "airflow", "celery", "worker", "--skip-serve-logs", *self.worker_args],
            self.worker_preexec,
        )

    def check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.text(name)[-4000:]}")

    def text(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def wait_for(self, name: str, needle: str, timeout: float = 120) -> None:
        timeout *= self.slack
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text(name):
                return
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.text(name)[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{needle!r} not in the {name} log after {timeout} s:\n{self.text(name)[-4000:]}")

    def stop(self) -> list[int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left (pool children, task runners, serve-logs): killed by marker.
        left = _kill_marked(self.marker)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        return left

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)

    # -- REST API ---------------------------------------------------------------
    def wait_http(self, url: str, timeout: float) -> None:
        timeout *= self.slack
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                self.check_running()
                time.sleep(0.3)
        raise TimeoutError(f"{url} did not answer within {timeout} s")

    def token(self) -> str:
        if self._token is None:
            # The simple auth manager with all users admins hands out a token on GET.
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/auth/token", timeout=10) as resp:
                self._token = json.loads(resp.read())["access_token"]
        return self._token

    def api(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/v2{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json", "Accept": accept},
        )
        # In the cgroup v2 guest beside a busy host the DAG's allocating tasks starve the api-server
        # (seen: a GET of a DAG run unanswered for 30 s under two CPU hogs); waits there take SLACK.
        with urllib.request.urlopen(req, timeout=30 * self.slack) as resp:
            return json.loads(resp.read())

    def wait_dag(self, dag_id: str, timeout: float = 120) -> None:
        timeout *= self.slack
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api("GET", f"/dags/{dag_id}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            time.sleep(0.5)
        errors = self.api("GET", "/importErrors")
        raise TimeoutError(f"DAG {dag_id} not parsed within {timeout} s; import errors: {errors}")

    def trigger(self, dag_id: str) -> str:
        return self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        timeout *= self.slack
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(1)
        raise TimeoutError(f"run {run_id} of {dag_id} not finished within {timeout} s: {self.tis(dag_id, run_id)}")

    def tis(self, dag_id: str, run_id: str) -> dict[str, dict]:
        got = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in got["task_instances"]}

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        got = self.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries?map_index={map_index}"
        )
        return sorted(got["task_instances"], key=lambda t: t["try_number"])

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> list[str]:
        """The events of one try's log, as the UI shows them (through the REST API)."""
        got = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
            f"?full_content=true&map_index={map_index}",
        )
        content = got.get("content") or []
        return [c.get("event", "") if isinstance(c, dict) else str(c) for c in content]
