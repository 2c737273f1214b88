"""Where oomless keeps its files on a machine by default."""

from __future__ import annotations

import os

__all__ = ["state_dir"]


def state_dir() -> str:
    """``$XDG_STATE_HOME/oomless`` (``~/.local/state/oomless`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "oomless")
