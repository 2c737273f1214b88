"""Memory history: every attempt's request, limit, peak and outcome, in a SQLAlchemy store."""

from .recorder import Recorder
from .store import Attempt, Store

__all__ = ["Attempt", "Recorder", "Store"]
