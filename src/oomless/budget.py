"""A worker's memory budget: the bytes it may hand to tasks.

``auto``: the smaller of the machine's memory and the worker's cgroup limit,
minus a reserve for the worker main process, the kernel and page cache.  The
default reserve is max(512 MiB, 5 % of that total).  Pure function plus one
reader; no policy elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from .units import format_size, parse_size

__all__ = ["Budget", "compute_budget", "DEFAULT_RESERVE_FLOOR", "DEFAULT_RESERVE_FRACTION"]

DEFAULT_RESERVE_FLOOR = 512 * 2**20
DEFAULT_RESERVE_FRACTION = 0.05


@dataclass(frozen=True)
class Budget:
    """The budget in bytes and one sentence saying where it came from."""

    bytes: int
    source: str
    warning: str | None = None


def compute_budget(
    configured: object,
    reserve: object,
    machine: int,
    cgroup_limit: int | None,
    configured_by: str = "oomless_budget",
) -> Budget:
    """Resolve ``configured`` ("auto", None, an int or a size string) into a :class:`Budget`."""
    total, whence = machine, f"machine memory {format_size(machine)}"
    if cgroup_limit is not None and cgroup_limit < machine:
        total, whence = cgroup_limit, f"worker cgroup limit {format_size(cgroup_limit)}"
    if configured is not None and not (isinstance(configured, str) and configured.strip().lower() == "auto"):
        size = parse_size(configured, configured_by)
        if size > total:
            return Budget(
                size,
                f"{configured_by}={configured}",
                warning=f"{configured_by}={configured} is more than the {whence}: tasks that fit the budget "
                f"can still exhaust the host; lower the budget",
            )
        return Budget(size, f"{configured_by}={configured}")
    if reserve is None:
        reserved = max(DEFAULT_RESERVE_FLOOR, int(total * DEFAULT_RESERVE_FRACTION))
        reserve_text = f"reserve {format_size(reserved)} (default: max(512 MiB, 5 %))"
    else:
        reserved = parse_size(reserve, "oomless_reserve")
        reserve_text = f"oomless_reserve {format_size(reserved)}"
    if reserved >= total:
        raise ValueError(
            f"oomless_reserve {format_size(reserved)} leaves nothing of the {whence}; "
            f"lower oomless_reserve or set oomless_budget explicitly"
        )
    return Budget(total - reserved, f"auto: {whence} − {reserve_text}")
