"""Connection URLs as oomless shows them: with the password hidden.

One helper for every URL a message or a page names (broker, result backend,
history store), so each is masked the same way.  SQLAlchemy's
``render_as_string(hide_password=True)`` and kombu's ``maybe_sanitize_url``
disagree on the mask, and kombu's drops the query (and with it the
``virtual_host`` of a ``redis+socket://`` URL, which tells two brokers apart).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact", "MASK"]

#: What stands for a password (SQLAlchemy's and Airflow's mask).
MASK = "***"


def redact(url: str) -> str:
    """``url`` with its password replaced by :data:`MASK`; ``;``-separated lists (Celery's
    failover brokers) each masked.  A URL without a password comes back unchanged."""
    redacted = []
    for one in url.split(";"):
        parts = urlsplit(one)
        if parts.password:
            host = parts.netloc.rsplit("@", 1)[1]
            one = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))
        redacted.append(one)  # untouched otherwise (urlunsplit drops the empty host of sqlite:////path)
    return ";".join(redacted)
