"""Connection URLs as oomless shows them: with the password hidden.

One helper for every URL a message or a page names (broker, result backend,
history store), so each is masked the same way.  SQLAlchemy's
``render_as_string(hide_password=True)`` and kombu's ``maybe_sanitize_url``
disagree on the mask, and kombu's drops the query (and with it the
``virtual_host`` of a ``redis+socket://`` URL, which tells two brokers apart).
"""

from __future__ import annotations

import re

__all__ = ["redact", "MASK"]

#: What stands for a password (SQLAlchemy's and Airflow's mask).
MASK = "***"

# ``scheme://user:password@``: the password runs to the last ``@`` before the host, as in
# SQLAlchemy's own URL grammar, so one with ``/ ? # ;`` in it is masked whole.  Every such
# part of a ``;``-separated list (Celery's failover brokers) is masked.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@;]*):[^@]*@")


def redact(url: str) -> str:
    """``url`` with every password replaced by :data:`MASK`; a URL without one comes back unchanged."""
    return _CREDENTIALS.sub(lambda m: f"{m.group(1)}:{MASK}@", url)
