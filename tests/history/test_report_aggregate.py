"""The report's numbers (``oomless.history.report.aggregate``), from timeline rows made up in the test:
no store, no plotly, no browser."""

from __future__ import annotations

import pytest

from oomless.history.report.aggregate import (
    MAX_BUCKETS,
    MAX_MARKERS,
    MAX_STACKED,
    OTHER,
    Grid,
    TooManyBuckets,
    aggregate,
    choose_grid,
)

MiB = 2**20


def row(name="t.a", outcome="ok", started=0.0, duration=10.0, request=None, limit=None, peak=MiB, host="w1",
        task_id="id", dag_id=None, af_task_id=None):
    """One row as :meth:`Store.timeline` yields it."""
    return (name, outcome, started, duration, request, limit, peak, host, task_id, dag_id, af_task_id)


GRID = Grid(0.0, 10.0, 10)  # ten buckets of 10 s from the epoch


def data_of(rows):
    ticks: list[int] = []
    data = aggregate(rows, GRID, ticks.append)
    assert ticks[-1] == len(rows)
    return data


def test_an_attempt_counts_its_whole_peak_in_every_bucket_it_ran_in_and_not_in_the_one_it_ended_at():
    data = data_of([row(started=5.0, duration=25.0, peak=3 * MiB)])  # runs in [5, 30): buckets 0, 1, 2
    (memory,) = data.memory
    assert memory.worker == "w1" and memory.names == ["t.a"]
    assert memory.values == [[3 * MiB] * 3 + [0.0] * 7]
    assert data.byte_seconds == {"t.a": 3 * MiB * 25.0}


def test_without_a_peak_an_attempt_counts_with_its_request_and_a_refused_one_not_at_all():
    data = data_of([row(peak=None, request=2 * MiB), row(outcome="infeasible", duration=None, peak=None,
                                                          request=MiB)])
    assert data.memory[0].values[0][0] == 2 * MiB
    assert data.outcomes == {"ok": 1, "infeasible": 1} and data.attempts == 2


def test_task_names_beyond_the_stacked_ones_are_summed_as_other():
    rows = [row(name=f"t.{i:02d}", peak=(i + 1) * MiB) for i in range(MAX_STACKED + 2)]
    (memory,) = data_of(rows).memory
    assert memory.names[:2] == [f"t.{MAX_STACKED + 1:02d}", f"t.{MAX_STACKED:02d}"]  # most byte-seconds first
    assert memory.names[-1] == OTHER and len(memory.names) == MAX_STACKED + 1
    assert memory.values[-1][0] == (1 + 2) * MiB  # the two smallest


def test_an_airflow_attempt_is_named_after_its_dag_and_task():
    data = data_of([row(name="execute_workload", dag_id="etl", af_task_id="load")])
    assert data.memory[0].names == ["etl.load"] and [p.name for p in data.peaks] == ["etl.load"]


def test_peaks_per_task_name_give_mean_request_p95_max_and_waste():
    rows = [row(peak=p * MiB, request=100 * MiB) for p in range(1, 101)]
    rows.append(row(outcome="failed", peak=MiB, request=100 * MiB))  # a task that raised still used memory
    (peaks,) = data_of(rows).peaks
    assert peaks.measured == 101 and peaks.max_peak == 100 * MiB and peaks.mean_request == 100 * MiB
    assert peaks.p95_peak == pytest.approx(95 * MiB, rel=0.004)
    assert peaks.waste == sum(100 - p for p in [*range(1, 101), 1]) * MiB // 101


def test_only_the_newest_markers_are_kept_oldest_first_and_the_rest_counted():
    rows = [row(outcome="memory-killed", started=float(i % 100), task_id=f"k{i}") for i in range(MAX_MARKERS + 7)]
    data = data_of(rows)
    assert len(data.marks) == MAX_MARKERS and data.marks_left_out == 7
    starts = [m.started for m in data.marks]
    assert starts == sorted(starts) and starts[0] == 0.0  # only seven of the (many) oldest are left out
    assert data.peaks == [] and data.marks[0].outcome == "memory-killed" and data.marks[0].worker == "w1"


def test_rows_outside_the_grid_are_clamped_into_it():
    data = data_of([row(started=-50.0, duration=5.0), row(started=500.0, duration=5.0)])
    values = data.memory[0].values[0]
    assert values[0] == MiB and values[-1] == MiB


def test_an_automatic_bucket_is_a_round_width_and_an_explicit_one_may_not_give_too_many():
    grid = choose_grid(1000.0, 1000.0 + 7 * 86400, None)
    assert grid.width == 1800.0 and grid.start % 1800.0 == 0
    assert choose_grid(1000.0, 1100.0, 7.0).width == 7.0
    with pytest.raises(TooManyBuckets, match=f"more than {MAX_BUCKETS:,}: use a bucket of at least 303 s"):
        choose_grid(0.0, 7 * 86400, 1.0)
