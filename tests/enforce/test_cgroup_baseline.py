"""A task's baseline in its slot cgroup leaves out the page cache earlier tasks left there, on this
machine's real cgroup v1 controller (the slot's memory.stat is not read at every task start)."""

from __future__ import annotations

import os
import subprocess

import pytest

from oomless.enforce.cgroup import STAT_EVERY, CgroupEnforcer
from oomless.enforce.slots import SlotTable
from oomless.linux.cgroup.host import detect

MiB = 2**20
HOST = detect()
pytestmark = pytest.mark.skipif(
    HOST.version != 1 or not HOST.usable,
    reason=f"needs a writable cgroup v1 memory controller; this host: {HOST.reason}",
)


def test_page_cache_an_earlier_task_left_is_not_in_the_next_tasks_baseline(tmp_path):
    enforcer = CgroupEnforcer(SlotTable(2), HOST)
    enforcer.groups.create(2)
    try:
        me = os.getpid()
        empty = [enforcer.measure_baseline(1, me) for _ in range(STAT_EVERY + 2)]
        # A task in slot 1 writes 64 MiB to a disk file: its page cache stays charged to the slot.
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={tmp_path / 'cache'}", "bs=1M", "count=64", "status=none"],
            preexec_fn=lambda: enforcer.groups.join(1, os.getpid()), check=True,
        )
        assert enforcer.groups.charge(1) >= 60 * MiB  # precondition: the cache is charged to the slot
        after = enforcer.measure_baseline(1, me)
    finally:
        enforcer.groups.remove(kill=True)
    assert max(empty) < 4 * MiB
    assert after < 16 * MiB, after / MiB
