"""Pick the enforcement mode this host supports and say why, in one sentence.

``auto`` prefers ``cgroup`` (the kernel enforces, overshoot 0), then
``watchdog`` (/proc polling), then ``off`` with a warning.  A mode named
explicitly that cannot work raises :class:`~oomless.errors.EnforcementUnavailable`
so the worker refuses to start rather than run unprotected.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

from ..errors import EnforcementUnavailable
from ..linux import proc
from ..linux.cgroup.host import CgroupHost
from .base import Enforcer, NullEnforcer
from .slots import SlotTable

__all__ = ["Choice", "choose_mode", "make_enforcer", "prepared_enforcer", "MODES", "watchdog_problem"]

logger = logging.getLogger(__name__)

MODES = ("auto", "cgroup", "watchdog", "off")


@dataclass(frozen=True)
class Choice:
    mode: str
    reason: str
    warning: str | None = None


def watchdog_problem() -> str | None:
    """Why the watchdog cannot work here, or ``None``."""
    pid = os.getpid()
    for path, mode in ((proc.path(pid, "statm"), os.R_OK), (proc.path(pid, "clear_refs"), os.W_OK)):
        if not os.access(path, mode):
            return f"{path} is not accessible (is /proc mounted?)"
    if not os.path.exists(proc.path(pid, f"task/{pid}/children")):
        return "/proc/PID/task/TID/children is missing (kernel without CONFIG_PROC_CHILDREN)"
    return None


def choose_mode(requested: str, host: CgroupHost, pool_name: str, isolating_pool: bool) -> Choice:
    """The mode to run, given what was asked for, the cgroup host and the pool."""
    if requested not in MODES:
        raise EnforcementUnavailable(
            f"oomless_enforcement={requested!r} is not a mode; use one of {', '.join(MODES)}"
        )
    if requested == "off":
        return Choice("off", "oomless_enforcement=off: limits are accounted, not enforced")
    if not isolating_pool:
        why = (
            f"the {pool_name!r} pool runs tasks inside the worker process, so one task cannot be "
            f"killed alone; per-task enforcement needs the prefork pool (-P prefork)"
        )
        if requested != "auto":
            raise EnforcementUnavailable(f"oomless_enforcement={requested} cannot work: {why}")
        return Choice("off", why, warning=f"memory limits are NOT enforced: {why}")
    if requested in ("auto", "cgroup"):
        if host.usable:
            return Choice("cgroup", host.reason)
        if requested == "cgroup":
            raise EnforcementUnavailable(
                f"oomless_enforcement=cgroup cannot work: {host.reason}. Run the worker where its "
                f"memory cgroup is writable (root, or a delegated cgroup v2 subtree), or use "
                f"oomless_enforcement=watchdog"
            )
    problem = watchdog_problem()
    if problem is None:
        why = "/proc is readable" if requested == "watchdog" else f"cgroups unusable ({host.reason}); /proc is readable"
        return Choice("watchdog", why)
    if requested == "watchdog":
        raise EnforcementUnavailable(f"oomless_enforcement=watchdog cannot work: {problem}")
    why = f"cgroups unusable ({host.reason}) and watchdog unusable ({problem})"
    return Choice("off", why, warning=f"memory limits are NOT enforced: {why}")


def make_enforcer(choice: Choice, table: SlotTable, host: CgroupHost, poll_interval: float) -> Enforcer:
    if choice.mode == "cgroup":
        from .cgroup import CgroupEnforcer

        return CgroupEnforcer(table, host)
    if choice.mode == "watchdog":
        from .watchdog import WatchdogEnforcer

        return WatchdogEnforcer(table, interval=poll_interval)
    return NullEnforcer(table)


def prepared_enforcer(
    requested: str, host: CgroupHost, pool_name: str, isolating_pool: bool, table: SlotTable, poll_interval: float
) -> tuple[Choice, Enforcer]:
    """The mode to run and its enforcer with its slots made.  ``auto`` falls back from cgroup to the
    watchdog where the host looked usable but the kernel refused the slots; a mode named
    explicitly that cannot prepare raises :class:`~oomless.errors.EnforcementUnavailable`."""
    choice = choose_mode(requested, host, pool_name, isolating_pool)
    enforcer = make_enforcer(choice, table, host, poll_interval)
    try:
        enforcer.prepare()
    except OSError as exc:
        if requested == choice.mode:
            raise EnforcementUnavailable(f"oomless_enforcement={choice.mode} could not prepare slots: {exc}") from exc
        try:
            enforcer.stop()
        except OSError as cleanup:
            logger.warning("oomless: could not remove partly made slot cgroups: %s", cleanup)
        host = dataclasses.replace(host, writable=False, reason=f"cgroup slots could not be made: {exc}")
        choice = choose_mode(requested, host, pool_name, isolating_pool)
        choice = dataclasses.replace(choice, warning=choice.warning or f"cgroup mode unavailable: {exc}")
        enforcer = make_enforcer(choice, table, host, poll_interval)
        enforcer.prepare()
    return choice, enforcer
