"""compute_budget: the bytes a worker may hand to tasks, and one sentence saying why."""

from __future__ import annotations

import pytest

from oomless.budget import compute_budget

MiB = 2**20
GiB = 2**30


def test_auto_on_a_large_machine_reserves_three_percent():
    budget = compute_budget("auto", None, machine=24 * GiB, cgroup_limit=None)
    assert budget.bytes == 24 * GiB - int(24 * GiB * 0.03)


def test_auto_on_a_small_machine_reserves_at_least_256_mib():
    budget = compute_budget("auto", None, machine=4 * GiB, cgroup_limit=None)
    assert budget.bytes == 4 * GiB - 256 * MiB


def test_none_is_the_same_as_auto():
    assert compute_budget(None, None, 24 * GiB, None) == compute_budget("auto", None, 24 * GiB, None)


def test_auto_uses_a_cgroup_limit_smaller_than_the_machine():
    budget = compute_budget("auto", None, machine=24 * GiB, cgroup_limit=8 * GiB)
    assert budget.bytes == 8 * GiB - 256 * MiB


def test_auto_ignores_a_cgroup_limit_larger_than_the_machine():
    budget = compute_budget("auto", None, machine=8 * GiB, cgroup_limit=64 * GiB)
    assert budget.bytes == 8 * GiB - 256 * MiB


def test_auto_source_names_the_machine_memory_and_the_default_reserve():
    source = compute_budget("auto", None, machine=4 * GiB, cgroup_limit=None).source
    assert "machine memory 4.0 GiB" in source
    assert "reserve 256.0 MiB (default: max(256 MiB, 3 %))" in source


def test_auto_source_names_the_cgroup_limit_when_it_applies():
    source = compute_budget("auto", None, machine=24 * GiB, cgroup_limit=8 * GiB).source
    assert "worker cgroup limit 8.0 GiB" in source


def test_explicit_reserve_replaces_the_default():
    budget = compute_budget("auto", "2GiB", machine=24 * GiB, cgroup_limit=None)
    assert budget.bytes == 22 * GiB
    assert "oomless_reserve 2.0 GiB" in budget.source


def test_explicit_reserve_in_bytes_is_accepted():
    assert compute_budget("auto", 256 * MiB, machine=4 * GiB, cgroup_limit=None).bytes == 4 * GiB - 256 * MiB


def test_explicit_reserve_applies_to_the_cgroup_limit():
    assert compute_budget("auto", "1GiB", machine=24 * GiB, cgroup_limit=4 * GiB).bytes == 3 * GiB


def test_explicit_budget_string_is_used_as_is():
    budget = compute_budget("6GiB", None, machine=24 * GiB, cgroup_limit=4 * GiB)
    assert budget.bytes == 6 * GiB
    assert budget.source == "oomless_budget=6GiB"


def test_explicit_budget_ignores_the_reserve():
    assert compute_budget("6GiB", "20GiB", machine=24 * GiB, cgroup_limit=None).bytes == 6 * GiB


def test_explicit_budget_int_is_bytes():
    assert compute_budget(1_000_000, None, machine=24 * GiB, cgroup_limit=None).bytes == 1_000_000


def test_explicit_budget_source_names_the_option_it_came_from():
    budget = compute_budget("6GiB", None, 24 * GiB, None, configured_by="--memory-budget")
    assert budget.source == "--memory-budget=6GiB"


def test_malformed_budget_raises_value_error_naming_the_option():
    with pytest.raises(ValueError, match=r"^oomless_budget 'lots' is not a size"):
        compute_budget("lots", None, machine=24 * GiB, cgroup_limit=None)


def test_malformed_reserve_raises_value_error_naming_the_option():
    with pytest.raises(ValueError, match=r"^oomless_reserve 'some' is not a size"):
        compute_budget("auto", "some", machine=24 * GiB, cgroup_limit=None)


def test_reserve_equal_to_the_total_raises_with_both_sizes_and_the_fix():
    with pytest.raises(ValueError) as info:
        compute_budget("auto", "4GiB", machine=4 * GiB, cgroup_limit=None)
    text = str(info.value)
    assert "oomless_reserve 4.0 GiB leaves nothing of the machine memory 4.0 GiB" in text
    assert "lower oomless_reserve or set oomless_budget explicitly" in text


def test_reserve_above_the_cgroup_limit_raises_naming_the_cgroup_limit():
    with pytest.raises(ValueError, match=r"leaves nothing of the worker cgroup limit 1\.0 GiB"):
        compute_budget("auto", "2GiB", machine=24 * GiB, cgroup_limit=GiB)


def test_default_reserve_on_a_machine_of_256_mib_raises():
    with pytest.raises(ValueError, match="leaves nothing"):
        compute_budget("auto", None, machine=256 * MiB, cgroup_limit=None)


def test_default_reserve_just_below_the_total_leaves_the_difference():
    assert compute_budget("auto", None, machine=256 * MiB + 4096, cgroup_limit=None).bytes == 4096


def test_the_live_auto_budget_takes_the_measured_footprint_out():
    budget = compute_budget("auto", None, machine=24 * GiB, cgroup_limit=6 * GiB)
    assert budget.live(700 * MiB) == 6 * GiB - 256 * MiB - 700 * MiB
    assert budget.live(8 * GiB) == 0


def test_an_explicit_budget_does_not_move_with_the_footprint():
    budget = compute_budget("5GiB", None, machine=24 * GiB, cgroup_limit=6 * GiB)
    assert budget.live(700 * MiB) == 5 * GiB


def test_the_breakdown_names_every_part_with_its_number():
    from oomless.budget import Footprint, breakdown

    budget = compute_budget("auto", None, machine=24 * GiB, cgroup_limit=6 * GiB)
    fp = Footprint(worker=600 * MiB, main=80 * MiB, children=400 * MiB, slots=20, growth=100 * MiB)
    text = breakdown(budget, budget.live(fp.total), fp)
    assert text == (
        "budget 5.1 GiB = worker cgroup limit 6.0 GiB − reserve 256.0 MiB − worker footprint 700.0 MiB "
        "(main process 80.0 MiB, 20 pool children 400.0 MiB, children still to grow ~100.0 MiB, "
        "other in the worker's cgroup 120.0 MiB)"
    )


def test_the_breakdown_names_the_children_an_autoscaled_pool_may_still_start():
    from oomless.budget import Footprint, breakdown

    budget = compute_budget("auto", None, machine=24 * GiB, cgroup_limit=6 * GiB)
    fp = Footprint(worker=150 * MiB, main=80 * MiB, children=20 * MiB, slots=2, growth=140 * MiB, unstarted=14)
    assert breakdown(budget, budget.live(fp.total), fp) == (
        "budget 5.5 GiB = worker cgroup limit 6.0 GiB − reserve 256.0 MiB − worker footprint 290.0 MiB "
        "(main process 80.0 MiB, 2 pool children 20.0 MiB, 14 more the pool may start, children still to "
        "start or grow ~140.0 MiB, other in the worker's cgroup 50.0 MiB)"
    )


def test_rebased_moves_an_auto_budget_to_a_new_cgroup_limit():
    before = compute_budget("auto", None, 24 * GiB, 6 * GiB)
    after = before.rebased(24 * GiB, 4 * GiB)
    assert (after.ceiling, after.bytes, after.auto) == (4 * GiB, 4 * GiB - 256 * MiB, True)
    assert after.whence == "worker cgroup limit 4.0 GiB"
    assert before.rebased(24 * GiB, None).ceiling == 24 * GiB


def test_rebased_keeps_an_explicit_budget_and_warns_when_it_no_longer_fits():
    before = compute_budget("3GiB", None, 24 * GiB, 6 * GiB)
    after = before.rebased(24 * GiB, 2 * GiB)
    assert (after.bytes, after.ceiling) == (3 * GiB, 2 * GiB)
    assert after.warning is not None and "more than the worker cgroup limit 2.0 GiB" in after.warning


def test_rebased_onto_a_limit_the_reserve_does_not_fit_leaves_nothing_and_says_why():
    after = compute_budget("auto", "1GiB", 24 * GiB, 6 * GiB).rebased(24 * GiB, 512 * MiB)
    assert after.bytes == 0 and after.warning is not None and "oomless_reserve 1.0 GiB" in after.warning
