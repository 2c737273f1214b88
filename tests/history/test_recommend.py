"""The recommender's arithmetic: p95 × 1.15 for the request, max × 1.2 for the limit, a floor,
the OOM bump for memory-killed attempts, and the fit of peak against input size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomless.history.recommend import FLOOR, quantile, recommend, recommend_all

MiB = 2**20


def row(name="etl.load", outcome="ok", peak=None, request=None, limit=None, size=None, t=0.0, dag=None, task=None):
    return (name, dag, task, outcome, peak, request, limit, size, t)


def test_request_is_the_95th_percentile_plus_15_percent_and_limit_the_max_plus_20_percent():
    rows = [row(peak=(i + 1) * 10 * MiB, request=512 * MiB, limit=1024 * MiB) for i in range(100)]  # 10..1000 MiB
    r = recommend(rows, "etl.load")
    p95 = quantile(sorted((i + 1) * 10 * MiB for i in range(100)), 0.95)
    assert p95 == pytest.approx(950.5 * MiB)
    assert r.request == -(-int(p95 * 1.15) // MiB) * MiB
    assert r.limit == 1200 * MiB
    assert (r.samples, r.kills, r.confidence) == (100, 0, "ok")
    assert (r.current_request, r.current_limit) == (512 * MiB, 1024 * MiB)
    assert r.lack == 1200 * MiB - 1024 * MiB


def test_waste_is_the_mean_request_left_unused():
    rows = [row(peak=100 * MiB, request=1024 * MiB, limit=1024 * MiB), row(peak=300 * MiB, request=1024 * MiB)]
    assert recommend(rows, "etl.load").waste == (924 + 724) // 2 * MiB


def test_a_memory_kill_counts_as_needing_more_than_its_limit_like_vpas_oom_bump():
    rows = [row(peak=50 * MiB)] * 30 + [row(outcome="memory-killed", peak=256 * MiB, limit=256 * MiB)]
    r = recommend(rows, "etl.load")
    assert r.kills == 1
    assert r.max_peak == 356 * MiB  # max(256 × 1.2, 256 + 100) MiB
    assert r.limit == -(-int(356 * MiB * 1.2) // MiB) * MiB


def test_evicted_infeasible_and_lost_attempts_are_not_samples():
    rows = [row(peak=80 * MiB)] + [row(outcome=o, peak=900 * MiB) for o in ("evicted", "infeasible", "lost", "retry")]
    assert recommend(rows, "etl.load").samples == 1


def test_small_tasks_get_the_floor_and_few_samples_say_low_confidence():
    r = recommend([row(peak=1 * MiB)], "etl.load")
    assert (r.request, r.limit, r.confidence) == (FLOOR, FLOOR, "low")


def test_a_task_without_any_measured_attempt_gets_no_recommendation():
    assert recommend([row(outcome="infeasible", limit=64 * 2**30)], "etl.load") is None


def test_airflow_tries_are_grouped_by_dag_and_task_not_by_celery_name():
    rows = [row(name="execute_workload", dag="d", task="small", peak=10 * MiB),
            row(name="execute_workload", dag="d", task="big", peak=900 * MiB)]
    found = {r.task_name: r for r in recommend_all(rows)}
    assert set(found) == {"d.small", "d.big"}
    assert (found["d.big"].dag_id, found["d.big"].af_task_id) == ("d", "big")


def test_peak_is_fitted_against_input_size_and_recommended_per_size():
    rows = [row(peak=40 * MiB + 3 * s, size=s) for s in (10 * MiB, 20 * MiB, 40 * MiB, 80 * MiB, 160 * MiB)]
    r = recommend(rows, "etl.load")
    assert r.by_size is not None
    assert r.by_size.slope == pytest.approx(3.0)
    assert r.by_size.base == pytest.approx(40 * MiB, rel=1e-6)
    request, limit = r.for_size(1024 * MiB)
    assert request == -(-int((40 * MiB + 3 * 1024 * MiB) * 1.15) // MiB) * MiB
    assert limit >= request
    assert r.for_size(None) == (r.request, r.limit)


def test_no_size_fit_when_peak_does_not_grow_with_size_or_sizes_are_too_few():
    flat = [row(peak=100 * MiB, size=s * MiB) for s in (1, 2, 3, 4, 5)]
    assert recommend(flat, "etl.load").by_size is None
    two_sizes = [row(peak=s * MiB, size=s * MiB) for s in (1, 2, 1, 2, 1, 2)]
    assert recommend(two_sizes, "etl.load").by_size is None


@given(st.lists(st.integers(0, 64 * 2**30), min_size=1, max_size=200))
def test_the_recommendation_always_covers_every_peak_and_request_never_exceeds_limit(peaks):
    r = recommend([row(peak=p) for p in peaks], "etl.load")
    assert r.limit >= max(peaks) and r.request <= r.limit
    assert r.request >= FLOOR and r.request % MiB == 0 and r.limit % MiB == 0
