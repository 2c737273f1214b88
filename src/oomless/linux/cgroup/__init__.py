"""Memory cgroups for slots: find the worker's own group, make one child group per slot.

cgroup v1 (``memory`` controller mounted on its own): each slot group gets
``memory.oom_control`` = 1 (``oom_kill_disable``), so at its limit the kernel
*pauses* the slot's processes and signals an eventfd instead of picking a
victim; the governor then reads the peak and kills the slot's whole tree itself.

cgroup v2 (unified hierarchy, ``memory`` in ``cgroup.controllers``): there is
no oom_kill_disable; a slot gets ``memory.oom.group`` = 1 so the kernel kills
the slot's tree as a unit, and ``memory.events`` (``oom_kill``) proves it.
v2 needs the worker's group to be *delegated* (writable, and no processes of
its own besides the worker, "no internal processes" rule).

Charges stay with the group a page was first charged to, so a process must
join its slot group at birth and never move while a task runs.

Read as ``cgroup.<name>`` (``from oomless.linux import cgroup``); each name
below lives in one module of this package:

* :mod:`.host`: where the worker's group is, its version and limit, whether it is delegated
* :mod:`.slots`: what v1 and v2 slot groups share (kept-open files, create, remove)
* :mod:`.v1`, :mod:`.v2`: slot groups on each version
* :mod:`.groups`: a worker's groups by name, and the ones a gone worker left
* :mod:`.reads`: what a group holds that cannot be reclaimed; the v2 worker group's pressure
* :mod:`.files`: control-file formats
"""

from __future__ import annotations

from .groups import group_name, slot_groups, stale_groups
from .host import CgroupHost, current_limit, detect, v2_delegation_problem
from .reads import GroupSignals, unreclaimable, working_set
from .slots import SlotGroups
from .v1 import SlotGroupsV1
from .v2 import SlotGroupsV2, v2_peak_resets

__all__ = [
    "CgroupHost",
    "detect",
    "current_limit",
    "v2_delegation_problem",
    "SlotGroups",
    "SlotGroupsV1",
    "SlotGroupsV2",
    "v2_peak_resets",
    "slot_groups",
    "group_name",
    "stale_groups",
    "working_set",
    "unreclaimable",
    "GroupSignals",
]
