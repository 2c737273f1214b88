"""Pure packing logic: the memory ledger, the wait queue with bounded backfill, eviction choice.

No I/O here: property tests (hypothesis) drive it with a simulated clock.
"""

from .queue import Admission, Infeasible, Waiting

__all__ = ["Admission", "Infeasible", "Waiting"]
