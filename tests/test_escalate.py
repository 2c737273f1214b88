"""Escalation maths (oomless.Escalate): more memory each attempt, capped, always ends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomless import Escalate, InvalidMemorySpec, Memory

MiB, GiB = 2**20, 2**30


def ladder(policy: Escalate, first: Memory) -> list[int]:
    """The limits of every attempt, as a task memory-killed every time would get them."""
    spec, attempt, limits = first, 1, [first.limit]
    while (spec := policy.after(spec, attempt)) is not None:  # type: ignore[assignment]
        attempt += 1
        limits.append(spec.limit)
    return limits


def test_the_issue_example_doubles_from_1_gib_and_makes_three_attempts():
    assert ladder(Escalate(factor=2, max="8GiB", attempts=3), Memory.coerce("1GiB")) == [GiB, 2 * GiB, 4 * GiB]


def test_the_cap_stops_the_ladder_when_the_next_limit_would_not_grow():
    assert ladder(Escalate(factor=2, max="3GiB", attempts=5), Memory.coerce("1GiB")) == [GiB, 2 * GiB, 3 * GiB]


def test_request_and_limit_both_grow_and_the_request_never_passes_the_limit():
    nxt = Escalate(factor=3, max="2GiB", attempts=3).after(Memory(request="512MiB", limit="1GiB"), 1)
    assert nxt == Memory(request=1536 * MiB, limit=2 * GiB)


def test_a_spec_without_a_limit_is_not_escalated():
    assert Escalate().after(Memory(request="1GiB"), 1) is None


@given(
    st.floats(1.01, 10),
    st.integers(1, 64 * GiB),
    st.integers(1, 10),
    st.integers(1, 64 * GiB),
)
def test_every_ladder_grows_strictly_stays_capped_and_ends(factor, cap, attempts, first):
    policy = Escalate(factor=factor, max=cap, attempts=attempts)
    limits = ladder(policy, Memory(limit=first))
    assert 1 <= len(limits) <= attempts
    assert all(b > a for a, b in zip(limits, limits[1:], strict=False))
    assert all(lim <= max(cap, first) for lim in limits)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"factor": 1}, "larger than 1"),
        ({"factor": "x"}, "not a number"),
        ({"attempts": 0}, "whole number >= 1"),
        ({"max": "lots"}, "Escalate(max=...)"),
    ],
)
def test_a_bad_policy_is_refused_where_it_is_written(kwargs, words):
    with pytest.raises(InvalidMemorySpec, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        Escalate(**kwargs)
