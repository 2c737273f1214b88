"""A worker's memory budget: the bytes it may hand to tasks.

``auto``: what is left of the worker's *ceiling* (the smaller of the machine's
memory and the worker's cgroup limit) once a *reserve* (kernel, page cache,
slack; default max(256 MiB, 3 %)) and the worker's own *footprint* are taken
out.  The footprint is measured while the worker runs (see
:meth:`oomless.enforce.base.Enforcer.footprint`): the main process, every pool
child's own memory, and whatever else holds memory in the worker's cgroup (or,
without a cgroup limit, on the machine) that no running task owns, plus what
the children that have not run a task yet are expected to grow to.  So ``auto``
follows the worker: more pool children, a smaller budget.

An explicit budget (``oomless_budget``, ``--memory-budget``) stays as given;
the worker warns when it and the footprint do not fit the ceiling.

Pure functions and values; the readings come from the enforcer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import InvalidConfiguration
from .units import format_size, parse_size

__all__ = [
    "Budget", "Footprint", "compute_budget", "breakdown", "DEFAULT_RESERVE_FLOOR", "DEFAULT_RESERVE_FRACTION",
]

DEFAULT_RESERVE_FLOOR = 256 * 2**20
DEFAULT_RESERVE_FRACTION = 0.03


@dataclass(frozen=True)
class Footprint:
    """What the worker itself holds, as measured at one moment (bytes)."""

    worker: int  # held in the worker's cgroup (or on the machine) and owned by no running task
    main: int  # the worker main process (its RSS)
    children: int  # the pool children's own memory (their baselines)
    slots: int  # live pool children
    growth: int = 0  # what children not started yet or that have not run a task yet are expected to add
    unstarted: int = 0  # slots with no live child: one the pool may still start (autoscale) or a replacement
    scope: str = "the worker's cgroup"  # where ``worker`` was measured

    @property
    def other(self) -> int:
        """The part of ``worker`` that is neither the main process nor a pool child (kernel, other processes)."""
        return max(0, self.worker - self.main - self.children)

    @property
    def total(self) -> int:
        """What the budget leaves out for the worker."""
        return self.worker + self.growth


@dataclass(frozen=True)
class Budget:
    """The budget in bytes and one sentence saying where it came from.

    ``auto`` budgets also keep ``ceiling`` and ``reserve``: :meth:`live` is
    then what is left once a measured :class:`Footprint` is taken out.
    """

    bytes: int
    source: str
    warning: str | None = None
    ceiling: int = 0
    reserve: int = 0
    auto: bool = False
    whence: str = ""  # the ceiling in words ("worker cgroup limit 6.0 GiB")
    #: what it was computed from (configured, reserve, configured_by), for :meth:`rebased`
    inputs: tuple = field(default=(), compare=False, repr=False)

    def rebased(self, machine: int, cgroup_limit: int | None) -> Budget:
        """The same configuration on a new ceiling (the worker's cgroup limit changed at run time).
        A limit the reserve does not fit leaves a budget of 0, with a warning."""
        if not self.inputs:
            return self
        configured, reserve, configured_by = self.inputs
        try:
            return compute_budget(configured, reserve, machine, cgroup_limit, configured_by)
        except ValueError as exc:
            return replace(self, bytes=0, ceiling=min(machine, cgroup_limit or machine), warning=str(exc))

    def live(self, footprint: int) -> int:
        """The budget once the worker's footprint is known (an explicit budget does not move)."""
        return max(0, self.ceiling - self.reserve - footprint) if self.auto else self.bytes


def _parsed(value: object, key: str) -> int:
    try:
        return parse_size(value, key)
    except ValueError as exc:
        raise InvalidConfiguration(key, str(exc)) from None


def breakdown(budget: Budget, live: int, fp: Footprint) -> str:
    """``budget 4.9 GiB = worker cgroup limit 6.0 GiB − reserve 256.0 MiB − worker footprint …`` (log, doctor)."""
    parts = (
        f"main process {format_size(fp.main)}, {fp.slots} pool children {format_size(fp.children)}"
        + (f", {fp.unstarted} more the pool may start" if fp.unstarted else "")
        + (f", children still to {'start or ' if fp.unstarted else ''}grow ~{format_size(fp.growth)}"
           if fp.growth else "")
        + f", other in {fp.scope} {format_size(fp.other)}"
    )
    if budget.auto:
        return (
            f"budget {format_size(live)} = {budget.whence} − reserve {format_size(budget.reserve)} − "
            f"worker footprint {format_size(fp.total)} ({parts})"
        )
    return f"budget {format_size(live)} ({budget.source}); worker footprint {format_size(fp.total)} ({parts})"


def compute_budget(
    configured: object,
    reserve: object,
    machine: int,
    cgroup_limit: int | None,
    configured_by: str = "oomless_budget",
) -> Budget:
    """Resolve ``configured`` ("auto", None, an int or a size string) into a :class:`Budget`.

    For ``auto``, ``bytes`` is the ceiling minus the reserve: the budget before
    any footprint is measured (the worker's :meth:`Budget.live` takes it out).
    Raises :class:`~oomless.errors.InvalidConfiguration` naming the key it refuses
    (``configured_by`` or ``oomless_reserve``).
    """
    total, whence = machine, f"machine memory {format_size(machine)}"
    if cgroup_limit is not None and cgroup_limit < machine:
        total, whence = cgroup_limit, f"worker cgroup limit {format_size(cgroup_limit)}"
    if configured is not None and not (isinstance(configured, str) and configured.strip().lower() == "auto"):
        size = _parsed(configured, configured_by)
        if size > total:
            return Budget(
                size,
                f"{configured_by}={configured}",
                warning=f"{configured_by}={configured} is more than the {whence}: tasks that fit the budget "
                f"can still exhaust the host; lower the budget",
                ceiling=total, whence=whence, inputs=(configured, reserve, configured_by),
            )
        return Budget(
            size, f"{configured_by}={configured}", ceiling=total, whence=whence,
            inputs=(configured, reserve, configured_by),
        )
    if reserve is None:
        reserved = max(DEFAULT_RESERVE_FLOOR, int(total * DEFAULT_RESERVE_FRACTION))
        reserve_text = f"reserve {format_size(reserved)} (default: max(256 MiB, 3 %))"
    else:
        reserved = _parsed(reserve, "oomless_reserve")
        reserve_text = f"oomless_reserve {format_size(reserved)}"
    if reserved >= total:
        raise InvalidConfiguration(
            "oomless_reserve", f"oomless_reserve {format_size(reserved)} leaves nothing of the {whence}; "
            f"lower oomless_reserve or set oomless_budget explicitly"
        )
    return Budget(
        total - reserved, f"auto: {whence} − {reserve_text} − the worker's footprint", ceiling=total,
        reserve=reserved, auto=True, whence=whence, inputs=(configured, reserve, configured_by),
    )
