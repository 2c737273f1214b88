"""Files on this machine: where oomless keeps them by default, and how it writes one whole.

Not here: what goes in those files (the history store, the claim store, the report each say),
and object stores reached through fsspec (their PUT is atomic already: see
:mod:`oomless.data.claim`).
"""

from __future__ import annotations

import contextlib
import os
import secrets

__all__ = ["state_dir", "history_url", "write_atomic"]


def state_dir() -> str:
    """``$XDG_STATE_HOME/oomless`` (``~/.local/state/oomless`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "oomless")


def history_url() -> str:
    """The default history store: ``sqlite:///`` + ``<state_dir>/history.sqlite``."""
    return f"sqlite:///{os.path.join(state_dir(), 'history.sqlite')}"


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int | None = None) -> None:
    """Write ``data`` (a ``str`` as UTF-8) to ``path`` whole or not at all.

    The bytes go to a hidden file beside ``path`` (``.<name>.tmp-<random>``), which is then renamed
    over it: a reader sees the old file or the new one, never half of one.  When anything fails the
    temporary file is removed and the error raised.  ``mode``: the new file's permission bits,
    exactly (``None``: ``0o666`` less the umask, as ``open()`` would create it).
    """
    folder, name = os.path.split(os.fspath(path))
    # Beside the target, not in /tmp: a rename is atomic only within one filesystem.
    tmp = os.path.join(folder, f".{name}.tmp-{secrets.token_hex(8)}")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
