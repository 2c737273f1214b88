"""The no-op app of bench/overhead.py; OOMLESS_BENCH_GOVERNED=1 installs oomless."""

import os

import redis
from celery import Celery

BROKER = os.environ["OOMLESS_BENCH_BROKER"]
app = Celery("noop", broker=BROKER)
app.conf.update(
    task_ignore_result=True, task_default_queue=os.environ["OOMLESS_BENCH_QUEUE"],
    # Celery's defaults unless a benchmark sets them (Airflow's: acks_late, prefetch 1)
    worker_prefetch_multiplier=int(os.environ.get("OOMLESS_BENCH_PREFETCH", "4")),
    task_acks_late=os.environ.get("OOMLESS_BENCH_ACKS_LATE") == "1",
)
governed = os.environ.get("OOMLESS_BENCH_GOVERNED") == "1"
if governed:
    import oomless

    oomless.install(app)
    app.conf.oomless_enforcement = os.environ.get("OOMLESS_BENCH_MODE", "auto")
    app.conf.oomless_admission = os.environ.get("OOMLESS_BENCH_ADMISSION", "1") == "1"
    app.conf.oomless_history = os.environ.get("OOMLESS_BENCH_HISTORY")  # bench/history.py
    app.conf.oomless_metrics_port = os.environ.get("OOMLESS_BENCH_METRICS_PORT")

_counter = None


def _redis():
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(BROKER.replace("redis+socket://", "unix://"))
    return _counter


# OOMLESS_BENCH_DECLARE=0: the tasks declare no memory (the worker's default applies, none by default)
opts = {"memory": "64MiB"} if governed and os.environ.get("OOMLESS_BENCH_DECLARE", "1") == "1" else {}


@app.task(name="noop.count", **opts)
def count(key):
    """Count itself done (in the pool child: the child is not the bottleneck)."""
    _redis().incr(key)


@app.task(name="noop.sleep", **opts)
def sleep(seconds):
    import time

    time.sleep(seconds)


# bench/profile_steps.py: cProfile the worker's main thread (from ready to shutdown) and each pool
# child (from its start to its exit), each dumped to OOMLESS_BENCH_PROFILE/<role>-<pid>.prof with the
# thread's CPU seconds over the same span (to scale the profile's inflated times back to real ones).
_PROFILE = os.environ.get("OOMLESS_BENCH_PROFILE")
if _PROFILE:
    import cProfile
    import time as _time

    from celery import signals

    _prof: dict = {}

    def _begin(role):
        # CPU time, not wall time: the main thread idles in epoll, and a loaded machine must not count.
        _prof.update(role=role, p=cProfile.Profile(_time.thread_time), cpu=_time.thread_time())
        _prof["p"].enable()

    def _end(**_):
        if "p" not in _prof:
            return
        _prof["p"].disable()
        cpu = _time.thread_time() - _prof["cpu"]
        path = f"{_PROFILE}/{_prof['role']}-{os.getpid()}"
        _prof["p"].dump_stats(path + ".prof")
        with open(path + ".cpu", "w") as fh:
            fh.write(f"{cpu}\n")
        _prof.clear()

    signals.worker_ready.connect(lambda **_: _begin("main"), weak=False)
    signals.worker_process_init.connect(lambda **_: _begin("child"), weak=False)
    signals.worker_shutdown.connect(_end, weak=False)
    signals.worker_process_shutdown.connect(_end, weak=False)
