"""choose_mode: which enforcement runs on a host, and why, in one sentence.

The cgroup side is given as constructed :class:`CgroupHost` values; the
watchdog side is this machine's real /proc, which supports it.
"""

from __future__ import annotations

import pytest

from oomless import EnforcementUnavailable
from oomless.enforce.modes import choose_mode, watchdog_problem
from oomless.linux.cgroup.host import CgroupHost

USABLE = CgroupHost(1, "/sys/fs/cgroup/memory/worker", True, None, "cgroup v1 memory group /x is writable")
READ_ONLY = CgroupHost(2, "/sys/fs/cgroup/worker", False, None, "cgroup v2 group /x is not delegated to this user")
NO_CGROUP = CgroupHost(None, None, False, None, "no memory cgroup controller is mounted on this host")


def test_this_host_supports_the_watchdog():
    assert watchdog_problem() is None


def test_auto_picks_cgroup_when_the_host_is_usable():
    choice = choose_mode("auto", USABLE, "prefork", isolating_pool=True)
    assert (choice.mode, choice.reason, choice.warning) == ("cgroup", USABLE.reason, None)


@pytest.mark.parametrize("host", [READ_ONLY, NO_CGROUP], ids=["read-only", "no-controller"])
def test_auto_picks_watchdog_when_cgroups_are_unusable(host):
    choice = choose_mode("auto", host, "prefork", isolating_pool=True)
    assert (choice.mode, choice.warning) == ("watchdog", None)


def test_auto_watchdog_reason_says_why_cgroups_were_passed_over():
    choice = choose_mode("auto", READ_ONLY, "prefork", isolating_pool=True)
    assert f"cgroups unusable ({READ_ONLY.reason})" in choice.reason


def test_explicit_cgroup_on_a_usable_host_is_cgroup():
    assert choose_mode("cgroup", USABLE, "prefork", isolating_pool=True).mode == "cgroup"


def test_explicit_cgroup_on_an_unusable_host_raises_naming_the_reason():
    with pytest.raises(EnforcementUnavailable, match=r"oomless_enforcement=cgroup cannot work: cgroup v2 group /x"):
        choose_mode("cgroup", READ_ONLY, "prefork", isolating_pool=True)


def test_explicit_cgroup_on_an_unusable_host_names_the_fix():
    with pytest.raises(EnforcementUnavailable) as info:
        choose_mode("cgroup", NO_CGROUP, "prefork", isolating_pool=True)
    text = str(info.value)
    assert "memory cgroup is writable" in text
    assert "oomless_enforcement=watchdog" in text


def test_explicit_watchdog_is_watchdog_even_when_cgroups_are_usable():
    choice = choose_mode("watchdog", USABLE, "prefork", isolating_pool=True)
    assert (choice.mode, choice.warning) == ("watchdog", None)


def test_explicit_off_is_off_without_a_warning():
    choice = choose_mode("off", USABLE, "prefork", isolating_pool=True)
    assert (choice.mode, choice.warning) == ("off", None)
    assert "not enforced" in choice.reason


@pytest.mark.parametrize("pool", ["threads", "solo", "gevent"])
def test_auto_with_a_non_isolating_pool_is_off_with_a_warning(pool):
    choice = choose_mode("auto", USABLE, pool, isolating_pool=False)
    assert choice.mode == "off"
    assert choice.warning is not None and "memory limits are NOT enforced" in choice.warning


def test_non_isolating_pool_warning_names_the_pool_and_the_fix():
    choice = choose_mode("auto", USABLE, "threads", isolating_pool=False)
    assert "'threads' pool" in choice.warning
    assert "-P prefork" in choice.warning


@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_explicit_mode_with_a_non_isolating_pool_raises(mode):
    with pytest.raises(EnforcementUnavailable, match=rf"oomless_enforcement={mode} cannot work: the 'solo' pool"):
        choose_mode(mode, USABLE, "solo", isolating_pool=False)


def test_explicit_off_with_a_non_isolating_pool_is_off_without_a_warning():
    choice = choose_mode("off", USABLE, "solo", isolating_pool=False)
    assert (choice.mode, choice.warning) == ("off", None)


@pytest.mark.parametrize("mode", ["", "Cgroup", "kill", "cgroups"])
def test_unknown_mode_raises_listing_the_modes(mode):
    with pytest.raises(EnforcementUnavailable, match=r"is not a mode; use one of auto, cgroup, watchdog, off"):
        choose_mode(mode, USABLE, "prefork", isolating_pool=True)


def test_unknown_mode_raises_even_with_a_non_isolating_pool():
    with pytest.raises(EnforcementUnavailable, match="is not a mode"):
        choose_mode("bogus", USABLE, "solo", isolating_pool=False)


def test_host_with_a_writable_path_is_usable():
    assert USABLE.usable is True


def test_host_without_a_path_is_not_usable_even_if_marked_writable():
    assert CgroupHost(1, None, True, None, "odd").usable is False
