"""oomless errors: readable sentences, and numbers that survive Celery's JSON result backend.

The backend ships an exception as ``{exc_type, exc_module, exc_message=args}``
and rebuilds it as ``cls(*args)``; these tests replay exactly that.
"""

from __future__ import annotations

import json
import pickle

import pytest

from oomless import (
    EnforcementUnavailable,
    InfeasibleMemoryRequest,
    InvalidMemorySpec,
    MemoryLimitExceeded,
    OomlessError,
)

GiB = 2**30
MiB = 2**20
TASK_ID = "6f1c2b9e-3d4a-4f5b-8c7d-0e1f2a3b4c5d"


def _rebuilt_by_json_backend(exc: BaseException) -> BaseException:
    """What a Celery client gets back from the JSON result backend."""
    args = json.loads(json.dumps(exc.args))
    return type(exc)(*args)


# --- MemoryLimitExceeded -------------------------------------------------------


def _exceeded() -> MemoryLimitExceeded:
    return MemoryLimitExceeded("etl.load", TASK_ID, 2 * GiB, 2 * GiB + 512 * MiB, "cgroup")


def test_exceeded_message_names_task_limit_and_peak():
    text = str(_exceeded())
    assert "task etl.load[6f1c2b9e…]" in text
    assert "memory limit of 2.0 GiB" in text
    assert "peak 2.5 GiB" in text


def test_exceeded_message_names_the_enforcer_and_what_to_do():
    text = str(_exceeded())
    assert "killed by the cgroup enforcer" in text
    assert "Raise memory=" in text


def test_exceeded_message_without_mode_does_not_name_an_enforcer():
    text = str(MemoryLimitExceeded("etl.load", TASK_ID, GiB, GiB))
    assert "enforcer" not in text
    assert text.endswith("Raise memory= on the task or on this call if it really needs more.")


def test_exceeded_short_task_id_is_not_cut():
    assert "task t[abc]" in str(MemoryLimitExceeded("t", "abc", GiB, GiB))


def test_exceeded_attributes_are_read_from_args():
    exc = _exceeded()
    assert (exc.task_name, exc.task_id, exc.limit, exc.peak, exc.mode) == (
        "etl.load",
        TASK_ID,
        2 * GiB,
        2 * GiB + 512 * MiB,
        "cgroup",
    )


def test_exceeded_rebuilt_from_args_keeps_attributes_and_message():
    exc = _exceeded()
    again = type(exc)(*exc.args)
    assert (again.limit, again.peak, again.mode, str(again)) == (exc.limit, exc.peak, exc.mode, str(exc))


def test_exceeded_survives_the_json_result_backend():
    exc = _exceeded()
    again = _rebuilt_by_json_backend(exc)
    assert isinstance(again, MemoryLimitExceeded)
    assert (again.task_id, again.limit, again.peak, str(again)) == (exc.task_id, exc.limit, exc.peak, str(exc))


def test_exceeded_survives_pickle():
    exc = _exceeded()
    again = pickle.loads(pickle.dumps(exc))
    assert (again.limit, again.peak, str(again)) == (exc.limit, exc.peak, str(exc))


def test_exceeded_stores_limit_and_peak_as_plain_ints():
    exc = MemoryLimitExceeded("t", "id", 1024.0, True)  # type: ignore[arg-type]
    assert type(exc.limit) is int and type(exc.peak) is int


def test_exceeded_is_an_oomless_error():
    assert isinstance(_exceeded(), OomlessError)


# --- InfeasibleMemoryRequest ------------------------------------------------------


def _infeasible() -> InfeasibleMemoryRequest:
    return InfeasibleMemoryRequest("etl.load", TASK_ID, 64 * GiB, 20 * GiB)


def test_infeasible_message_names_the_limit_and_the_budget():
    text = str(_infeasible())
    assert "memory limit of 64.0 GiB" in text
    assert "whole budget of 20.0 GiB" in text


def test_infeasible_message_says_what_to_do():
    text = str(_infeasible())
    assert "Lower memory=" in text and "--memory-budget" in text


def test_infeasible_rebuilt_from_args_keeps_attributes():
    exc = _infeasible()
    again = type(exc)(*exc.args)
    assert (again.task_name, again.task_id, again.limit, again.budget) == ("etl.load", TASK_ID, 64 * GiB, 20 * GiB)


def test_infeasible_survives_the_json_result_backend():
    exc = _infeasible()
    again = _rebuilt_by_json_backend(exc)
    assert isinstance(again, InfeasibleMemoryRequest)
    assert (again.limit, again.budget, str(again)) == (exc.limit, exc.budget, str(exc))


# --- InvalidMemorySpec ---------------------------------------------------------------


def test_invalid_spec_str_is_its_message():
    assert str(InvalidMemorySpec("memory limit 'lots' is not a size")) == "memory limit 'lots' is not a size"


def test_invalid_spec_survives_the_json_result_backend():
    exc = InvalidMemorySpec("memory limit 'lots' is not a size")
    again = _rebuilt_by_json_backend(exc)
    assert isinstance(again, InvalidMemorySpec) and str(again) == str(exc)


def test_invalid_spec_is_both_a_value_error_and_an_oomless_error():
    exc = InvalidMemorySpec("x")
    assert isinstance(exc, ValueError) and isinstance(exc, OomlessError)


# --- EnforcementUnavailable -------------------------------------------------------------


def test_enforcement_unavailable_survives_the_json_result_backend():
    exc = EnforcementUnavailable("oomless_enforcement=cgroup cannot work: read-only")
    again = _rebuilt_by_json_backend(exc)
    assert isinstance(again, EnforcementUnavailable) and str(again) == str(exc)


@pytest.mark.parametrize(
    "cls", [InvalidMemorySpec, MemoryLimitExceeded, InfeasibleMemoryRequest, EnforcementUnavailable]
)
def test_every_error_derives_from_oomless_error(cls):
    assert issubclass(cls, OomlessError)
