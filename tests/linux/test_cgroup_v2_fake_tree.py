"""SlotGroupsV2 against a fake cgroup v2 file tree.

This machine has no cgroup v2 memory controller (DESIGN.md §5), so these tests
put the files a v2 group has into a temporary directory and check what
oomless writes to and reads from them.  A fake tree cannot reproduce kernel
semantics (control files that take each write whole, rmdir of a populated
group), so removal and the kill path are not covered here.
"""

from __future__ import annotations

import os

import pytest

from oomless.linux.cgroup.host import detect
from oomless.linux.cgroup.v2 import SlotGroupsV2

MiB = 2**20

# What the kernel puts in a new v2 group (the files oomless touches).
_GROUP_FILES = {
    "cgroup.procs": "",
    "cgroup.subtree_control": "",
    "cgroup.controllers": "memory\n",
    "memory.max": "max\n",
    "memory.high": "max\n",
    "memory.current": "0\n",
    "memory.peak": "0\n",
    "memory.oom.group": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.stat": "anon 0\nfile 0\nkernel 0\n",
}


def _fake_group(path, *, swap: bool = False, **contents: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    files = dict(_GROUP_FILES)
    if swap:
        files["memory.swap.max"] = "max\n"
    files.update({name.replace("__", "."): text for name, text in contents.items()})
    for name, text in files.items():
        (path / name).write_text(text)


def _control(path) -> str:
    """A control file as the kernel would see the last write: here, its whole content."""
    return path.read_text()


@pytest.fixture
def tree(tmp_path):
    """A fake worker group with a base group and two slot groups already made."""
    base = tmp_path / "worker" / "oomless-1-2"
    _fake_group(base)
    for index in range(2):
        _fake_group(base / f"slot-{index}")
    groups = SlotGroupsV2(str(base))
    yield base, groups
    groups.close_files()


def _emptied(path) -> None:
    # Fresh fd, offset 0: lets one fake file record one write, as a kernel control file would.
    path.write_text("")


def test_fake_tree_create_enables_the_memory_controller_for_slots(tree):
    base, groups = tree
    groups.create(2)
    assert _control(base / "cgroup.subtree_control") == "+memory"


def test_fake_tree_create_sets_oom_group_so_the_kernel_kills_the_whole_slot(tree):
    base, groups = tree
    groups.create(2)
    assert [_control(base / f"slot-{i}" / "memory.oom.group") for i in range(2)] == ["1", "1"]


def test_fake_tree_create_starts_each_slot_without_a_limit(tree):
    base, groups = tree
    (base / "slot-0" / "memory.max").write_text("1234")
    groups.create(2)
    assert _control(base / "slot-0" / "memory.max") == "max"


def test_fake_tree_create_disables_swap_where_the_kernel_offers_it(tmp_path):
    base = tmp_path / "oomless-1-2"
    _fake_group(base)
    _fake_group(base / "slot-0", swap=True)
    SlotGroupsV2(str(base)).create(1)
    assert _control(base / "slot-0" / "memory.swap.max") == "0"


def test_fake_tree_create_does_not_invent_a_swap_file(tree):
    base, groups = tree
    groups.create(2)
    assert not (base / "slot-0" / "memory.swap.max").exists()


def test_fake_tree_slots_lists_slot_directories(tree):
    base, groups = tree
    (base / "not-a-slot").mkdir()
    (base / "slot-x").mkdir()
    assert groups.slots() == [0, 1]


def test_fake_tree_set_limit_writes_bytes_to_memory_max(tree):
    base, groups = tree
    _emptied(base / "slot-1" / "memory.max")
    groups.set_limit(1, 64 * MiB)
    assert _control(base / "slot-1" / "memory.max") == str(64 * MiB)


def test_fake_tree_set_limit_none_writes_max(tree):
    base, groups = tree
    _emptied(base / "slot-1" / "memory.max")
    _emptied(base / "slot-1" / "memory.high")
    groups.set_limit(1, None)
    assert _control(base / "slot-1" / "memory.max") == "max"
    assert _control(base / "slot-1" / "memory.high") == "max"


def test_fake_tree_set_limit_with_high_writes_both(tree):
    base, groups = tree
    for name in ("memory.max", "memory.high"):
        _emptied(base / "slot-1" / name)
    groups.set_limit(1, 96 * MiB, high=64 * MiB)
    assert (_control(base / "slot-1" / "memory.max"), _control(base / "slot-1" / "memory.high")) == (
        str(96 * MiB), str(64 * MiB)
    )


def test_fake_tree_usage_subtracts_page_cache_from_memory_current(tree):
    base, groups = tree
    (base / "slot-0" / "memory.current").write_text(f"{100 * MiB}\n")
    (base / "slot-0" / "memory.stat").write_text(
        f"anon {90 * MiB}\nfile {8 * MiB}\nkernel 4096\nfile_mapped {1 * MiB}\nfile_dirty 0\n"
    )
    assert groups.usage(0) == 92 * MiB


def test_fake_tree_usage_matches_the_file_key_exactly_not_file_prefixed_keys(tree):
    base, groups = tree
    (base / "slot-0" / "memory.current").write_text(f"{100 * MiB}\n")
    (base / "slot-0" / "memory.stat").write_text(f"anon 0\nfile_mapped {50 * MiB}\nfile {10 * MiB}\n")
    assert groups.usage(0) == 90 * MiB


def test_fake_tree_usage_when_file_is_the_first_line(tree):
    base, groups = tree
    (base / "slot-0" / "memory.current").write_text(f"{100 * MiB}\n")
    (base / "slot-0" / "memory.stat").write_text(f"file {30 * MiB}\nanon 0")
    assert groups.usage(0) == 70 * MiB


def test_fake_tree_usage_is_never_negative(tree):
    base, groups = tree
    (base / "slot-0" / "memory.current").write_text(f"{1 * MiB}\n")
    (base / "slot-0" / "memory.stat").write_text(f"file {2 * MiB}\n")
    assert groups.usage(0) == 0


def test_fake_tree_usage_without_a_file_line_is_memory_current(tree):
    base, groups = tree
    (base / "slot-0" / "memory.current").write_text(f"{5 * MiB}\n")
    (base / "slot-0" / "memory.stat").write_text("anon 5\n")
    assert groups.usage(0) == 5 * MiB


def test_fake_tree_usage_rereads_the_kept_open_files(tree):
    base, groups = tree
    (base / "slot-0" / "memory.current").write_text(f"{5 * MiB}\n")
    groups.usage(0)
    (base / "slot-0" / "memory.current").write_text(f"{7 * MiB}\n")
    assert groups.usage(0) == 7 * MiB


def test_fake_tree_peak_reads_memory_peak(tree):
    base, groups = tree
    (base / "slot-1" / "memory.peak").write_text(f"{77 * MiB}\n")
    assert groups.peak(1) == 77 * MiB


def test_fake_tree_reset_peak_writes_to_memory_peak(tree):
    base, groups = tree
    groups.reset_peak(1)
    assert _control(base / "slot-1" / "memory.peak") == "reset"


def test_fake_tree_reset_peak_writes_through_the_fd_that_peak_reads(tree):
    # The kernel resets memory.peak per file descriptor (Linux >= 6.12): a reset
    # through a freshly opened fd would not change what peak() reads.
    base, groups = tree
    peak_file = base / "slot-1" / "memory.peak"
    peak_file.write_text(f"{77 * MiB}\n")
    groups.peak(1)  # opens the fd peak() keeps
    os.link(peak_file, base / "slot-1" / "opened-inode")
    replacement = base / "slot-1" / "replacement"
    replacement.write_text(f"{77 * MiB}\n")
    os.replace(replacement, peak_file)  # the path now names another inode than the kept fd
    groups.reset_peak(1)
    assert (base / "slot-1" / "opened-inode").read_text().startswith("reset")
    assert peak_file.read_text() == f"{77 * MiB}\n"


_READ_ONLY_KERNEL_INT = "/sys/devices/system/cpu/kernel_max"  # 0444 in sysfs: O_RDWR fails even for root


@pytest.mark.skipif(not os.path.exists(_READ_ONLY_KERNEL_INT), reason=f"{_READ_ONLY_KERNEL_INT} is missing")
def test_fake_tree_peak_and_reset_work_when_memory_peak_is_read_only(tree):
    # Kernels before 6.12 have a read-only memory.peak (a lifetime peak); a
    # read-only sysfs file that holds one number stands in for it.
    base, groups = tree
    peak_file = base / "slot-1" / "memory.peak"
    peak_file.unlink()
    peak_file.symlink_to(_READ_ONLY_KERNEL_INT)
    with open(_READ_ONLY_KERNEL_INT) as fh:
        expected = int(fh.read())
    groups.reset_peak(1)
    assert groups.peak(1) == expected


def test_fake_tree_oom_kills_parses_memory_events(tree):
    base, groups = tree
    (base / "slot-0" / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n")
    assert groups.oom_kills(0) == 2


def test_fake_tree_oom_kills_is_zero_without_an_oom_kill_line(tree):
    base, groups = tree
    (base / "slot-0" / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\n")
    assert groups.oom_kills(0) == 0


def test_fake_tree_join_writes_the_pid_to_cgroup_procs(tree):
    base, groups = tree
    groups.join(1, 4242)
    assert _control(base / "slot-1" / "cgroup.procs") == "4242"


def test_fake_tree_procs_reads_cgroup_procs(tree):
    base, groups = tree
    (base / "slot-0" / "cgroup.procs").write_text("10\n11\n")
    assert groups.procs(0) == [10, 11]


def test_fake_tree_procs_of_a_removed_slot_is_empty(tree):
    _base, groups = tree
    assert groups.procs(7) == []


# --- detect() on a v2-only host --------------------------------------------------------------
#
# detect() takes the /proc/self/cgroup path but reads mount points from the real
# /proc/self/mountinfo.  Here that yields this machine's real cgroup2 mount, which
# has no memory controller: a fake /proc/self/cgroup can reach detect()'s v2 branch
# and its "no memory controller" verdict, but the delegated-and-writable v2 verdict
# (and memory.max limits) cannot be faked without a fake mountinfo.


def _has_cgroup2_mount() -> bool:
    with open("/proc/self/mountinfo") as fh:
        return any(" - cgroup2 " in line for line in fh)


needs_cgroup2_mount = pytest.mark.skipif(not _has_cgroup2_mount(), reason="no cgroup2 mount on this host")


@needs_cgroup2_mount
def test_fake_tree_detect_of_a_v2_only_proc_cgroup_reports_version_2(tmp_path):
    fake = tmp_path / "cgroup"
    fake.write_text("0::/\n")
    assert detect(str(fake)).version == 2


@needs_cgroup2_mount
def test_fake_tree_detect_of_a_v2_group_without_memory_controller_is_unusable_and_says_why(tmp_path):
    fake = tmp_path / "cgroup"
    fake.write_text("0::/\n")
    host = detect(str(fake))
    assert host.usable is False
    assert "has no memory controller (cgroup.controllers)" in host.reason


def test_fake_tree_detect_without_any_cgroup_line_reports_no_controller(tmp_path):
    fake = tmp_path / "cgroup"
    fake.write_text("")
    host = detect(str(fake))
    assert (host.version, host.usable) == (None, False)
    assert "no memory cgroup controller" in host.reason


def _has_v1_memory_mount() -> bool:
    with open("/proc/self/mountinfo") as fh:
        return any(" - cgroup " in line and "memory" in line.split(" - ")[1].split()[-1].split(",") for line in fh)


@pytest.mark.skipif(not _has_v1_memory_mount(), reason="no cgroup v1 memory mount on this host")
def test_fake_tree_detect_of_a_v1_memory_line_for_a_missing_group_is_version_1_and_unusable(tmp_path):
    fake = tmp_path / "cgroup"
    fake.write_text("4:memory:/oomless-test-no-such-group\n0::/\n")
    host = detect(str(fake))
    assert (host.version, host.usable) == (1, False)
    assert "is not writable" in host.reason


# -- delegation: the "no internal processes" rule -----------------------------
#
# A fake tree records writes but cannot refuse them as the kernel would (EBUSY
# for "+memory" on a group with processes); these tests check the order of the
# moves and writes oomless makes, and v2_delegation_problem's verdicts.

ME = 4242  # stands for the worker main process's PID in the fake files


@pytest.fixture
def delegated(tmp_path):
    """A fake delegated worker group holding only the worker, memory not yet enabled for children."""
    parent = tmp_path / "worker.service"
    _fake_group(parent, cgroup__procs=f"{ME}\n")
    yield parent


def _make_base(parent):
    # mkdir in a real cgroupfs creates the control files; the fake must be told.
    base = parent / "oomless-1-2"
    _fake_group(base)
    _fake_group(base / SlotGroupsV2.LEAF)
    for index in range(2):
        _fake_group(base / f"slot-{index}")
    return base


def test_fake_tree_v2_create_moves_the_worker_into_its_leaf_before_enabling_memory_on_its_group(delegated):
    base = _make_base(delegated)
    groups = SlotGroupsV2(str(base))
    groups.create(2, me=ME)
    assert _control(base / "worker" / "cgroup.procs") == str(ME)
    assert _control(delegated / "cgroup.subtree_control") == "+memory"
    assert _control(base / "cgroup.subtree_control") == "+memory"
    groups.close_files()


def test_fake_tree_v2_create_leaves_a_group_that_already_delegates_memory_alone(delegated):
    (delegated / "cgroup.subtree_control").write_text("memory\n")
    (delegated / "cgroup.procs").write_text("")
    base = _make_base(delegated)
    groups = SlotGroupsV2(str(base))
    groups.create(2, me=ME)
    assert _control(base / "worker" / "cgroup.procs") == ""  # not moved: it is not in that group
    assert _control(delegated / "cgroup.subtree_control") == "memory\n"  # untouched
    groups.close_files()


def test_fake_tree_v2_remove_lifts_what_it_enabled_and_moves_the_worker_back(delegated):
    base = _make_base(delegated)
    groups = SlotGroupsV2(str(base))
    groups.create(2, me=ME)
    groups.close_files()
    # rmdir of an empty cgroup works in cgroupfs; the fake's slot dirs must be emptied for it.
    for sub in ("slot-0", "slot-1"):
        for f in (base / sub).iterdir():
            f.unlink()
    with pytest.raises(OSError, match="could not remove"):
        groups.remove(kill=False)  # the fake leaf still holds its files: rmdir refuses
    assert not (base / "slot-0").exists() and not (base / "slot-1").exists()
    assert _control(delegated / "cgroup.subtree_control") == "-memory"
    assert _control(base / "cgroup.subtree_control") == "-memory"
    assert _control(delegated / "cgroup.procs") == str(ME)


def test_fake_tree_v2_delegation_problem_is_none_for_a_group_holding_only_this_process(delegated):
    from oomless.linux.cgroup.host import v2_delegation_problem

    assert v2_delegation_problem(str(delegated), me=ME) is None


def test_fake_tree_v2_delegation_problem_names_other_processes_and_the_fix(delegated):
    from oomless.linux.cgroup.host import v2_delegation_problem

    (delegated / "cgroup.procs").write_text(f"{ME}\n17\n")
    problem = v2_delegation_problem(str(delegated), me=ME)
    assert problem is not None
    assert "holds other processes besides this one (17)" in problem
    assert "no internal processes" in problem and "Delegate=yes" in problem


def test_fake_tree_v2_delegation_problem_ignores_processes_when_memory_is_already_delegated(delegated):
    from oomless.linux.cgroup.host import v2_delegation_problem

    (delegated / "cgroup.procs").write_text("17\n")
    (delegated / "cgroup.subtree_control").write_text("memory\n")
    assert v2_delegation_problem(str(delegated), me=ME) is None


def test_fake_tree_group_signals_read_local_event_growth_and_psi(tmp_path):
    # PSI (memory.pressure) exists on neither this machine's kernel nor the UML guest's (the
    # QEMU guest has it: tests/linux/test_cgroup_v2.py).
    from oomless.linux.cgroup.reads import GroupSignals

    events = tmp_path / "memory.events.local"
    events.write_text("low 0\nhigh 0\nmax 4\noom 0\noom_kill 0\noom_group_kill 0\n")
    (tmp_path / "memory.pressure").write_text(
        "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=0.40 avg60=0.10 avg300=0.00 total=45\n"
    )
    signals = GroupSignals(str(tmp_path))
    try:
        assert signals.has_psi
        assert signals.read(now=100.0) == ({}, 0.0, 0.0)  # the first look only sets where counting starts
        # 1 s later: stalls of 0.3 s (some) and 0.1 s (full) in PSI's totals (microseconds).
        events.write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n")
        (tmp_path / "memory.pressure").write_text(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=300123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=100045\n"
        )
        grown, some, full = signals.read(now=101.0)
        assert grown == {"max": 5, "oom": 1, "oom_kill": 1}
        assert (round(some, 3), round(full, 3)) == (30.0, 10.0)  # avg10 still says 0: it lags
        # Within the window the counting still starts at the first look; past it, at the newest
        # look at or before its start (101.0, not 101.5, which is after it).
        events.write_text("low 0\nhigh 2\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n")
        assert signals.read(now=101.5)[0] == {"high": 2, "max": 5, "oom": 1, "oom_kill": 1}
        grown, some, full = signals.read(now=103.2)
        assert grown == {"high": 2} and (some, full) == (0.0, 0.0)
        # After a gap of more than three windows (no task ran, no look) the counting starts again.
        events.write_text("low 0\nhigh 2\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n")
        assert signals.read(now=200.0) == ({}, 0.0, 0.0)
    finally:
        signals.close()


def test_fake_tree_group_signals_treat_an_unreadable_pressure_file_as_no_psi(tmp_path):
    # psi=0 at boot: memory.pressure exists, reading it fails (EOPNOTSUPP); a directory stands in.
    from oomless.linux.cgroup.reads import GroupSignals

    (tmp_path / "memory.events.local").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    (tmp_path / "memory.pressure").mkdir()
    signals = GroupSignals(str(tmp_path))
    try:
        assert not signals.has_psi and signals.read() == ({}, None, None)
    finally:
        signals.close()


def test_fake_tree_group_signals_without_psi(tmp_path):
    from oomless.linux.cgroup.reads import GroupSignals

    (tmp_path / "memory.events.local").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    signals = GroupSignals(str(tmp_path))
    try:
        assert not signals.has_psi and signals.read() == ({}, None, None)
    finally:
        signals.close()


def test_fake_tree_shared_limit_reads_as_not_reached_where_the_group_cannot_be_read(tmp_path):
    # The monitor asks on every notice of the base group; a group being removed must not crash it.
    from oomless.linux.cgroup.v2 import SlotGroupsV2

    groups = SlotGroupsV2(str(tmp_path / "oomless-1-2"))
    assert groups.at_total_limit() is False
    (tmp_path / "oomless-1-2").mkdir()
    (tmp_path / "oomless-1-2" / "memory.high").write_text("1048576\n")
    assert groups.at_total_limit() is False  # memory.current and memory.stat missing
    (tmp_path / "oomless-1-2" / "memory.current").write_text("4194304\n")
    (tmp_path / "oomless-1-2" / "memory.stat").write_text("file 0\nshmem 0\n")
    assert groups.at_total_limit() is True
