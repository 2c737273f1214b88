"""Memory history: every attempt's request, limit, peak and outcome, in a SQLAlchemy store.

``Attempt`` and ``Recorder`` import no database code (the worker uses them on
its hot path); the store is :class:`oomless.history.store.Store`.
"""

from .attempt import Attempt
from .recorder import Recorder

__all__ = ["Attempt", "Recorder"]
