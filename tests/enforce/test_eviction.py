"""When the worker is under memory pressure, and which task to evict (oomless.enforce.eviction, pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oomless.enforce.eviction import Use, choose_victim, group_pressure, pressure

MiB = 2**20

uses = st.lists(
    st.builds(Use, key=st.integers(), request=st.integers(0, 10**9), used=st.integers(0, 2 * 10**9),
              started=st.floats(0, 100, allow_nan=False)),
    max_size=20,
)


@given(uses)
def test_the_victim_is_the_task_most_over_its_request(tasks):
    victim = choose_victim(tasks)
    if not tasks:
        assert victim is None
        return
    assert victim is not None
    assert all(victim.over >= t.over for t in tasks)


def test_the_newest_task_is_evicted_on_a_tie():
    old, new = Use("old", MiB, 3 * MiB, started=1.0), Use("new", MiB, 3 * MiB, started=2.0)
    assert choose_victim([old, new]) is new
    assert choose_victim([new, old]) is new


def test_pressure_names_the_numbers():
    assert pressure(5 * MiB, 8 * MiB) is None
    assert pressure(9 * MiB, 8 * MiB) == "its tasks use 9.0 MiB, 1.0 MiB more than the budget of 8.0 MiB"
    assert pressure(1, 8 * MiB, available=50 * MiB, margin=100 * MiB) == (
        "only 50.0 MiB is available to the worker, less than the eviction margin of 100.0 MiB"
    )
    assert pressure(1, 8 * MiB, available=150 * MiB, margin=100 * MiB) is None


# --- cgroup v2: the worker group's own pressure signals (group_pressure) ------------------------


def test_group_pressure_says_when_the_kernel_found_the_worker_group_out_of_memory():
    assert "out of memory (2 time(s)" in group_pressure({"oom": 2}, None, None)


def test_group_pressure_at_the_groups_limit_counts_only_with_stalls():
    # Reclaim at memory.max is routine for page cache: pressure only while tasks stall on it.
    assert group_pressure({"max": 3}, None, None) is None
    assert group_pressure({"max": 3}, 2.0, 0.0) is None
    assert "memory.max and its tasks stall on memory 25.0 %" in group_pressure({"max": 3}, 25.0, 1.0)
    assert "all its tasks stall on memory 6.0 %" in group_pressure({"high": 1}, 10.0, 6.0)


def test_group_pressure_ignores_stalls_without_an_event_of_the_group_itself():
    # A task throttled at its own slot's memory.high stalls, but the worker group hit no limit.
    assert group_pressure({}, 90.0, 90.0) is None
