"""bench/inplace.py's probe: loaded by every Python process of a worker started with this folder on
``PYTHONPATH`` and ``OOMLESS_INPLACE_OUT`` set (never otherwise: it does nothing without it).

It wraps the functions named in ``OOMLESS_INPLACE_WRAP`` (``module:Class.method`` or
``module:function``, comma-separated) and adds up, per process, the thread CPU each spends
*exclusive* of the other wrapped functions it calls. A task counts once in the pool child (Celery's
``fast_trace_task``) and once in the main process (Celery's ``Request.__init__``); every 1,000th the
process writes ``(tasks, thread CPU since its first task, {step: ns})`` to
``$OOMLESS_INPLACE_OUT.<role>.<pid>``.  Each wrapper costs two ``clock_gettime`` calls (about
1 µs here), charged to the function it wraps.
"""

import os
import time

if os.environ.get("OOMLESS_INPLACE_OUT"):
    import importlib
    import logging
    import sys

    _OUT = os.environ["OOMLESS_INPLACE_OUT"]
    _GOVERNED = os.environ.get("OOMLESS_BENCH_GOVERNED") == "1"
    _now = time.thread_time_ns
    _spent: dict = {}
    _stack: list = []
    _count = [0, None]  # tasks, thread CPU at the first

    def _timed(name, fn):
        def timed(*args, **kwargs):
            start = _now()
            _stack.append(0)
            try:
                return fn(*args, **kwargs)
            finally:
                took = _now() - start
                _spent[name] = _spent.get(name, 0) + took - _stack.pop()
                if _stack:
                    _stack[-1] += took
        return timed

    def _task(role):
        if _count[1] is None:
            _count[1] = _now()
        _count[0] += 1
        if _count[0] % 1000 == 0:
            with open(f"{_OUT}.{role}.{os.getpid()}", "w") as fh:
                fh.write(repr((_count[0], _now() - _count[1], _spent)))

    def _counting(role, fn):
        def counting(*args, **kwargs):
            _task(role)
            return fn(*args, **kwargs)
        return counting

    try:
        import celery.app.trace as _trace

        _fast_trace_task = _trace.fast_trace_task

        def probe_fast_trace_task(*args, **kwargs):
            # A module-level function: the main process pickles it by name for the pool child.
            _task("child")
            return _fast_trace_task(*args, **kwargs)

        _trace.fast_trace_task = probe_fast_trace_task  # before celery.worker.request imports it

        import celery.worker.request as _request

        _request.Request.__init__ = _counting("main", _request.Request.__init__)
        for spec in filter(None, os.environ.get("OOMLESS_INPLACE_WRAP", "").split(",")):
            module, attr = spec.split(":")
            if module.startswith("oomless") and not _GOVERNED:
                continue
            importlib.import_module(module)
            owner, *path = [sys.modules[module], *attr.split(".")]
            for part in path[:-1]:
                owner = getattr(owner, part)
            setattr(owner, path[-1], _timed(attr, getattr(owner, path[-1])))
        logging.Logger.handle = _timed("logging", logging.Logger.handle)
    except Exception:  # noqa: BLE001 - a probe must say why it is not measuring, and nothing else
        import traceback

        with open(f"{_OUT}.error", "w") as fh:
            fh.write(traceback.format_exc())
