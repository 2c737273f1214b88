"""Every door in oomless.celery.compat still opens on the installed Celery, billiard and kombu.

Each test drives one function against the real library objects it touches (a real worker
controller's Pool step, a real request built from a real message, a real billiard job, kombu's
real registry), so an upgrade that moves one of them fails here, by name.  The governed-worker
tests then exercise the same paths end to end.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from billiard.einfo import ExceptionInfo
from billiard.pool import ApplyResult
from celery import Celery
from celery.app.task import Context
from celery.concurrency.prefork import TaskPool
from celery.worker import components
from celery.worker.request import Request, create_request_cls
from kombu.asynchronous.semaphore import LaxBoundedSemaphore

from oomless.celery import compat


@pytest.fixture
def app():
    app = Celery("compat", broker="memory://", backend="cache+memory://", set_as_current=False)

    @app.task(name="compat.add")
    def add(x, y):
        return x + y

    return app


def _message(app, task_id="t-1", **headers):
    """A real kombu message carrying a real task, as a worker receives it."""
    from kombu import Connection

    sent = app.amqp.as_task_v2(task_id, "compat.add", args=(1, 2))
    with Connection("memory://") as conn:
        queue = conn.SimpleQueue(f"compat-{task_id}")
        queue.put(sent.body, headers={**sent.headers, **headers}, serializer="json")
        message = queue.get(timeout=1)
        queue.close()
    return message


def _request(app, **headers):
    return Request(_message(app, **headers), app=app, task=app.tasks["compat.add"])


class _Worker:
    """The attributes of ``celery.worker.WorkController`` the Pool step's ``create`` reads."""

    def __init__(self, app):
        from celery.worker.worker import WorkController

        self.app = app
        self.concurrency = 2
        self.optimization = None
        self.use_eventloop = True
        self.pool_putlocks = True
        self.pool_cls = TaskPool
        self.pool_restarts = False
        self.max_tasks_per_child = self.max_memory_per_child = None
        self.time_limit = self.soft_time_limit = None
        self.worker_lost_wait = 10.0
        self.hostname = "compat@here"
        self.hub = None
        # The real methods: process_task is compared with _process_task_sem.
        self._process_task = WorkController._process_task.__get__(self)
        self._process_task_sem = WorkController._process_task_sem.__get__(self)

    def __eq__(self, other):  # bound methods compare their __self__
        return self is other

    __hash__ = object.__hash__


def test_the_pool_step_uses_a_slot_semaphore_that_can_be_replaced(app):
    w = _Worker(app)
    step = components.Pool(w)
    try:
        step.create(w)  # a real prefork TaskPool, not started (it forks on start)
    finally:
        # create() tells this process it is a worker, where result.get() would block: undo that
        from celery.result import _set_task_join_will_block

        _set_task_join_will_block(False)
    assert isinstance(w.semaphore, LaxBoundedSemaphore)
    assert compat.uses_slot_semaphore(w)

    taken = []

    class Gate(LaxBoundedSemaphore):
        def acquire(self, callback, *args, **kwargs):
            taken.append(args)
            return True

    gate = Gate(2)
    compat.replace_slot_semaphore(w, gate)
    assert w.semaphore is gate and w.pool.options["semaphore"] is gate
    w._process_task_sem("a request")  # Celery's own method now waits on the gate
    assert taken == [("a request",)]


def test_a_requests_context_is_a_task_context_with_its_headers(app):
    req = _request(app, oomless_memory={"limit": 1})
    context = compat.request_context(req)
    assert isinstance(context, Context)
    assert context.id == req.id == "t-1"
    assert req.request_dict["oomless_memory"] == {"limit": 1}


def test_a_request_not_sent_to_the_pool_has_no_job(app):
    assert compat.pool_job(_request(app)) is None


def test_a_billiard_job_is_accepted_and_failed_as_mark_as_worker_lost_does(app):
    failures = []
    job = ApplyResult({}, callback=None, error_callback=failures.append, correlation_id="t-1")
    req = _request(app)
    req._apply_result = __import__("weakref").ref(job)
    assert compat.pool_job(req) is job
    assert not compat.job_accepted(job)
    job._ack(0, 0.0, 4242, None)  # what the pool does on the child's ACK
    assert compat.job_accepted(job)
    try:
        raise MemoryError("x")
    except MemoryError:
        einfo = ExceptionInfo()
    compat.fail_job(job, einfo)
    assert job.ready() and not job.successful()
    assert failures == [einfo]


def test_celerys_generated_request_class_redefines_the_two_methods_oomless_wraps(app):
    wrapped = []

    def wrap(method):
        wrapped.append(method.__name__)
        return method

    class Base(Request):
        def __init_subclass__(cls, **kwargs):
            super().__init_subclass__(**kwargs)
            compat.wrap_generated_request_methods(cls, {"execute_using_pool": wrap, "on_success": wrap})

    pool = type("Pool", (), {"apply_async": staticmethod(lambda *a, **k: None)})()
    create_request_cls(Base, app.tasks["compat.add"], pool, "compat@here", None, app=app)
    assert sorted(wrapped) == ["execute_using_pool", "on_success"]


def test_bound_tasks_are_listed_without_finalizing_the_app(app):
    assert compat.bound_tasks(app) == [] and not app.finalized
    app.finalize()
    assert "compat.add" in {t.name for t in compat.bound_tasks(app)}


def test_a_sent_tasks_cached_options_are_forgotten(app):
    task = app.tasks["compat.add"]
    task.serializer = "json"
    assert task._get_exec_options()["serializer"] == "json"
    task.serializer = "yaml"
    compat.forget_exec_options(task)
    assert task._get_exec_options()["serializer"] == "yaml"


def test_task_options_are_checked_where_the_task_is_declared(app):
    seen = []

    def check(opts):
        seen.append(dict(opts))
        if opts.get("memory") == "lots":
            raise ValueError("'lots' is not a size")

    compat.check_task_options(app, check)

    @app.task(name="compat.ok", memory="1GiB")
    def ok():
        return 1

    with pytest.raises(ValueError, match="not a size"):
        app.task(name="compat.bad", memory="lots")(lambda: None)
    assert seen[0]["memory"] == "1GiB" and "compat.ok" in app.tasks


def test_a_wrapped_run_is_what_the_task_calls(app):
    task = app.tasks["compat.add"]
    compat.wrap_run(task, lambda run: lambda *a, **k: run(*a, **k) * 10)
    assert task.run(1, 2) == 30
    assert task.apply(args=(1, 2)).get() == 30  # Celery's tracer calls task.run


@pytest.mark.parametrize("name", ["json", "pickle"])
def test_kombus_own_codec_functions_round_trip(name):
    content_type, encoding, encode, decode = compat.serializer_functions(name)
    from kombu.serialization import registry

    assert registry.name_to_type[name] == content_type
    data = encode({"a": [1, 2]})
    if encoding == "utf-8" and isinstance(data, bytes):
        data = data.decode()
    assert decode(data) == {"a": [1, 2]}
    assert compat.has_serializer(name)
    assert not compat.has_serializer("no-such-serializer")


def test_a_field_added_to_the_event_state_is_kept_in_task_records():
    from celery.events.state import State

    compat.show_task_field("memory")
    compat.show_task_field("memory")  # twice: listed once
    from celery.events.state import Task

    assert Task._fields.count("memory") == 1
    state = State()
    state.event({"type": "task-received", "uuid": "t-1", "name": "x", "timestamp": 1.0, "clock": 1,
                 "hostname": "h", "local_received": 1.0})
    state.event({"type": "task-memory", "uuid": "t-1", "memory": "ok: peak 1.0 MiB", "timestamp": 2.0,
                 "clock": 2, "hostname": "h", "local_received": 2.0})
    assert dict(state.tasks["t-1"].as_dict())["memory"] == "ok: peak 1.0 MiB"


def test_celerys_tracer_writes_its_line_about_a_task_through_the_trace_logger_with_its_id(app):
    """What the pool child's memory filter relies on: the success line's record comes from
    compat.trace_logger() with the task's id among its dict args."""
    import logging

    seen = []

    class Catch(logging.Filter):
        def filter(self, record):
            seen.append(record)
            return False

    @app.task(name="t.answer", shared=False)
    def answer():
        return 42

    logger = compat.trace_logger()
    catch, level = Catch(), logger.level
    logger.addFilter(catch)
    logger.setLevel(logging.INFO)
    try:
        from celery.app.trace import build_tracer

        build_tracer("t.answer", answer, eager=False, app=app)("id-1", (), {}, {"id": "id-1"})
    finally:
        logger.removeFilter(catch)
        logger.setLevel(level)
    assert [(r.args["id"], r.getMessage().split(" succeeded")[0]) for r in seen] == [("id-1", "Task t.answer[id-1]")]


def test_every_door_names_the_versions_it_was_checked_against_and_has_a_test():
    doors = [name for name in compat.__all__ if name != "checked"]
    assert [name for name in doors if not getattr(getattr(compat, name), "__checked__", None)] == []
    tests = Path(__file__).read_text()
    assert [name for name in doors if f"compat.{name}(" not in tests] == []


def test_no_module_but_compat_reaches_into_celery_billiard_or_kombu():
    """The grep of issue 16: a private attribute read on anything but oomless's own objects."""
    src = Path(__file__).resolve().parents[2] / "src" / "oomless"
    own = re.compile(r"\b(self|cls)\._[a-z]")
    found = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "compat.py" and path.parent.name == "celery":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for match in re.finditer(r"([A-Za-z_][\w)\]]*)\._[a-z]\w*", code):
                text = match.group(0)
                if own.match(text) or text.endswith(("._replace", "._asdict")):  # namedtuple's public API
                    continue
                found.append(f"{path.relative_to(src)}:{number}: {text}")
    # Airflow's executor overrides Airflow's own _send_workloads_to_celery (oomless.airflow.executor).
    assert [f for f in found if "_send_workloads_to_celery" not in f] == []
