"""Property tests of the pure admission logic (oomless.admission), driven by a simulated clock."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomless.admission import Admission, Infeasible

MiB = 2**20

task = st.tuples(
    st.floats(0, 10, allow_nan=False),  # arrival time (dense: a stream of arrivals)
    st.integers(0, 12),  # request, in units of budget/8 (some infeasible)
    st.floats(0.1, 5, allow_nan=False),  # duration
)


def simulate(slots: int, window: float, tasks: list[tuple[float, int, float]], budget: int = 8 * MiB):
    """Run ``tasks`` through an Admission; check the invariants after every event.

    Returns (arrival, request, duration, start or None, ahead at arrival, infeasible) per task.
    """
    adm = Admission(budget, slots, backfill_window=window)
    unit = budget // 8
    events: list[tuple[float, int, int, int]] = []  # (time, kind 0=finish 1=arrive, seq, task index)
    for i, (at, _, _) in enumerate(tasks):
        heapq.heappush(events, (at, 1, i, i))
    start: dict[int, float] = {}
    ahead: dict[int, int] = {}
    infeasible: set[int] = set()
    seq = len(tasks)
    while events:
        now, kind, _, i = heapq.heappop(events)
        if kind == 1:
            ahead[i] = len(adm.waiting)
            try:
                # kind: tasks of a size share a duration estimate, which is often wrong here
                started = adm.submit(i, tasks[i][1] * unit, now, kind=tasks[i][1])
            except Infeasible:
                infeasible.add(i)
                started = []
        else:
            started = adm.finish(i, now)
        for j in started:
            start[j] = now
            seq += 1
            heapq.heappush(events, (now + tasks[j][2], 0, seq, j))
        # invariants after every event
        assert adm.reserved == sum(adm.running.values()) <= adm.budget
        assert 0 <= adm.free_slots and len(adm.running) <= adm.slots
        assert adm.cannot_fit() == [w for w in adm.waiting if w.request > adm.free]
    return [
        (at, req * unit, dur, start.get(i), ahead.get(i, 0), i in infeasible)
        for i, (at, req, dur) in enumerate(tasks)
    ]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.floats(0, 10, allow_nan=False), st.lists(task, max_size=100))
def test_running_requests_never_exceed_the_budget_and_every_feasible_task_starts_within_the_bound(
    slots, window, tasks
):
    longest = max((d for _, _, d in tasks), default=0)
    for at, request, _, started, ahead, infeasible in simulate(slots, window, tasks):
        if request > 8 * MiB:
            assert infeasible, "a request larger than the budget must be rejected"
            continue
        assert not infeasible
        assert started is not None, "a feasible task never started"
        # Backfill may delay a task by at most the window; then the tasks ahead of
        # it, and it, start at least one per longest-duration.
        assert started - at <= window + (ahead + 1) * longest + 1e-9


def test_a_large_task_is_not_starved_by_a_stream_of_small_ones():
    """Small tasks arrive faster than they finish; the large one still starts once the window passed."""
    budget, window = 8 * MiB, 3.0
    adm = Admission(budget, slots=4, backfill_window=window)
    now, running, large_started = 0.0, [], None
    adm.submit("s0", 2 * MiB, now)
    running.append(("s0", 1.0))
    assert adm.submit("large", 7 * MiB, now) == []  # does not fit next to s0
    for n in range(1, 200):
        now = n * 0.25
        for key, end in [r for r in running if r[1] <= now]:
            running.remove((key, end))
            if "large" in adm.finish(key, now):
                large_started = now
        if large_started is not None:
            break
        for key in adm.submit(f"s{n}", 2 * MiB, now):
            running.append((key, now + 1.0))  # each small task runs 1 s
    assert large_started is not None
    # it waited the window, then at most one small-task duration for memory to drain
    assert window <= large_started <= window + 1.0 + 0.25


def test_without_a_window_backfill_alone_would_starve_it():
    """The same stream with an endless window: the large task never starts (why the bound exists)."""
    adm = Admission(8 * MiB, slots=4, backfill_window=float("inf"))
    adm.submit("s0", 2 * MiB, 0.0)
    adm.submit("large", 7 * MiB, 0.0)
    running = [("s0", 1.0)]
    for n in range(1, 200):
        now = n * 0.25
        for key, end in [r for r in running if r[1] <= now]:
            running.remove((key, end))
            assert "large" not in adm.finish(key, now)
        for key in adm.submit(f"s{n}", 2 * MiB, now):
            running.append((key, now + 1.0))
    assert [w.key for w in adm.waiting] == ["large"]


def test_waiting_tasks_start_in_priority_then_arrival_order():
    adm = Admission(8 * MiB, slots=1)
    assert adm.submit("first", MiB, 0.0) == ["first"]
    for key, prio in [("c", 5), ("a", 1), ("b", 1), ("d", 9)]:
        assert adm.submit(key, MiB, 0.1, priority=prio) == []
    order = []
    key = "first"
    for t in range(1, 6):
        started = adm.finish(key, t)
        if not started:
            break
        (key,) = started
        order.append(key)
    assert order == ["a", "b", "c", "d"]


def test_a_task_that_waited_the_window_on_other_workers_goes_before_a_newer_arrival_here():
    adm = Admission(8 * MiB, slots=4, backfill_window=10)
    assert adm.submit("running", 8 * MiB, 0.0) == ["running"]
    assert adm.submit("large", 7 * MiB, 0.0) == []
    assert adm.submit("handed_back", 2 * MiB, 1.0, waited=20.0) == []  # arrived later, waited longer
    # both due at 11 s; the one that waited longest goes first, and large no longer fits beside it
    assert adm.finish("running", 11.0) == ["handed_back"]


def test_a_smaller_task_backfills_while_a_larger_one_cannot_fit():
    adm = Admission(8 * MiB, slots=4, backfill_window=10)
    assert adm.submit("big1", 5 * MiB, 0.0) == ["big1"]
    assert adm.submit("big2", 5 * MiB, 0.0) == []
    assert adm.submit("small", 2 * MiB, 0.0) == ["small"]  # fits in the 3 MiB left
    assert adm.blocked() == 1 and adm.free == MiB


def test_with_durations_known_only_tasks_that_end_before_the_reservation_or_fit_beside_it_backfill():
    adm = Admission(8 * MiB, slots=8, backfill_window=100)
    for kind, took in (("short", 1.0), ("long", 10.0), ("big", 5.0)):  # durations seen earlier
        adm.submit(kind, MiB, 0.0, kind=kind)
        adm.finish(kind, took)
    assert adm.estimates == {"short": 1.0, "long": 10.0, "big": 5.0}
    now = 20.0
    assert adm.submit("big1", 5 * MiB, now, kind="big") == ["big1"]  # ends at 25
    assert adm.submit("big2", 6 * MiB, now, kind="big") == []  # reserved for 25, 2 MiB spare then
    assert adm.submit("long", 3 * MiB, now, kind="long") == []  # would still run at 25 and not fit beside
    assert adm.submit("unknown", 3 * MiB, now, kind="new") == []  # no estimate: cannot promise to end in time
    assert adm.submit("short", 3 * MiB, now, kind="short") == ["short"]  # ends at 21: passes
    assert adm.finish("short", 21.0) == []
    assert adm.submit("small", 2 * MiB, 21.0, kind="long") == ["small"]  # runs past 25, but fits beside big2


def test_a_task_waiting_longer_than_the_window_stops_backfill_behind_it():
    adm = Admission(8 * MiB, slots=4, backfill_window=10)
    adm.submit("big1", 5 * MiB, 0.0)
    adm.submit("big2", 5 * MiB, 0.0)
    assert adm.submit("small", 2 * MiB, 10.0) == []  # big2 has waited 10 s: a barrier
    assert adm.finish("big1", 11.0) == ["big2", "small"]


def test_the_age_of_a_handed_back_task_counts_toward_the_window():
    adm = Admission(8 * MiB, slots=4, backfill_window=10)
    adm.submit("big1", 5 * MiB, 0.0)
    adm.submit("big2", 5 * MiB, 0.0, waited=10.0)  # waited 10 s on another worker already
    assert adm.submit("small", 2 * MiB, 0.0) == []


def test_overdue_names_only_tasks_that_cannot_fit_and_waited_long_enough_here():
    adm = Admission(8 * MiB, slots=1, backfill_window=100, give_back_after=5)
    adm.submit("running", 6 * MiB, 0.0)
    adm.submit("fits-but-no-slot", MiB, 0.0)
    adm.submit("too-big", 4 * MiB, 0.0, waited=30.0)
    adm.submit("too-big-late", 4 * MiB, 3.0)
    assert adm.overdue(4.9) == []
    assert [w.key for w in adm.overdue(5.0)] == ["too-big"]
    assert adm.forget("too-big")
    assert [w.key for w in adm.waiting] == ["fits-but-no-slot", "too-big-late"]


def test_a_request_larger_than_the_budget_is_infeasible():
    with pytest.raises(Infeasible):
        Admission(8 * MiB, 2).submit("x", 8 * MiB + 1, 0.0)


def test_forget_drops_a_waiting_task():
    adm = Admission(8 * MiB, slots=1)
    adm.submit("a", MiB, 0.0)
    adm.submit("b", MiB, 0.0)
    assert adm.forget("b") and not adm.forget("b")
    assert adm.finish("a", 1.0) == []


def test_resize_follows_the_pool():
    adm = Admission(8 * MiB, slots=1)
    adm.submit("a", MiB, 0.0)
    adm.submit("b", MiB, 0.0)
    assert adm.resize(2, 1.0) == ["b"]
    adm.resize(1, 2.0)
    assert adm.free_slots == -1  # both still run; no new start until two finish
    assert adm.finish("a", 3.0) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "finish", "forget", "budget"]), st.integers(0, 10)),
                max_size=60))
def test_cannot_fit_and_the_turn_order_are_what_a_full_scan_gives_after_any_sequence_of_events(ops):
    """cannot_fit() skips its scan while a bound on the waiting requests fits, and drain() skips the
    sort while nothing is due: both must agree with the plain definitions after any events."""
    adm = Admission(8 * MiB, 2, backfill_window=5.0)
    now = 0.0
    keys = 0
    for op, n in ops:
        now += 0.5 * n
        if op == "submit":
            keys += 1
            if n * MiB <= adm.capacity:  # larger: Infeasible, tested above
                adm.submit(keys, n * MiB, now, priority=n % 3)
        elif op == "finish" and adm.running:
            adm.finish(sorted(adm.running)[n % len(adm.running)], now)
        elif op == "forget" and adm.waiting:
            adm.forget(adm.waiting[n % len(adm.waiting)].key)
        elif op == "budget":
            adm.set_budget((n + 1) * MiB, now)
        assert adm.cannot_fit() == [w for w in adm.waiting if w.request > adm.free]
        due = [w for w in adm.waiting if now - w.since >= adm.backfill_window]
        expected = sorted(adm.waiting, key=lambda w: (w.order[0], 0, w.since, w.order[1]) if w in due
                          else (w.order[0], 1, 0.0, w.order[1]))
        assert adm._turns(now) == expected
