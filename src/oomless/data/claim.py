"""Claim check: large values are stored once, by content, and travel as small references.

A :class:`ClaimStore` is a folder reached through fsspec: a local directory by
default, any fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``)
in production.  Two kinds of objects live in it:

``args/<sha256[:2]>/<sha256>``
    values sent *to* tasks.  Content-addressed and shared: a fan-out that
    sends the same 200 MiB table to 100 tasks stores it once.  Removed by
    :meth:`ClaimStore.sweep` once older than the store's TTL (a value sent
    again refreshes its age once it is past half the TTL).
``results/<task id>/<sha256>``
    values returned *by* tasks.  Still addressed by content (the hash is
    checked on every read), but owned by one task, so that forgetting that
    task's result can remove them without touching anyone else's.

A reference is a small dict: ``{"__oomless_claim__": sha256, "size": n,
"owner": task_id | None}``.  References come from messages, which are
untrusted input: the hash must be 64 hex digits and the owner a plain task id,
so a reference can never name a path outside the store, and the bytes read
must hash to the reference or the read fails (:class:`ClaimMissing`, never
wrong data).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from ..errors import ClaimMissing
from ..paths import state_dir, write_atomic
from ..units import format_size

__all__ = ["ClaimStore", "MARK", "is_ref", "default_url"]

MARK = "__oomless_claim__"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")


def default_url() -> str:
    """The local default: ``$XDG_STATE_HOME/oomless/claims`` (``~/.local/state/oomless/claims``)."""
    return os.path.join(state_dir(), "claims")


def is_ref(value: Any) -> bool:
    """Whether ``value`` is a claim reference (a plain dict with the ``MARK`` key), not a value itself."""
    return type(value) is dict and MARK in value


def _mtime(info: dict[str, Any]) -> float | None:
    """Modification time (epoch seconds) from an fsspec ``info`` dict: each filesystem names it differently."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created", "ctime"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return None


class ClaimStore:
    """Put bytes by content, get them back verified, and remove what nobody needs any more."""

    def __init__(self, url: str | os.PathLike[str] | None = None, ttl: float = 7 * 86400) -> None:
        try:
            import fsspec
        except ImportError:
            raise ImportError("the claim store (oomless_offload) needs fsspec: pip install 'oomless[data]'") from None

        self.url = os.fspath(url) if url else default_url()
        self.ttl = float(ttl)
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = root.rstrip("/")
        #: whether the store is a directory on this machine (other machines cannot read it)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # -- keys ---------------------------------------------------------------------------------------------

    def key(self, ref: dict[str, Any]) -> str:
        """The object's path relative to the store, after checking the reference (untrusted input)."""
        sha, owner = ref.get(MARK), ref.get("owner")
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise ClaimMissing(repr(sha)[:80], self.url, "the reference does not hold a SHA-256 hex digest")
        if owner is None:
            return f"args/{sha[:2]}/{sha}"
        if not isinstance(owner, str) or not _OWNER.match(owner):
            raise ClaimMissing(repr(owner)[:80], self.url, "the reference names an owner that is not a task id")
        return f"results/{owner}/{sha}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    # -- write and read -----------------------------------------------------------------------------------

    def put(self, data: bytes, owner: str | None = None) -> dict[str, Any]:
        """Store ``data`` (once per content and owner) and return its reference."""
        sha = hashlib.sha256(data).hexdigest()
        ref: dict[str, Any] = {MARK: sha, "size": len(data), "owner": owner}
        path = self._path(self.key(ref))
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            info = None
        if info is not None and int(info.get("size", -1)) == len(data):
            age = time.time() - (_mtime(info) or 0.0)
            if age < self.ttl / 2:
                return ref
        self._write(path, data)
        return ref

    def _write(self, path: str, data: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            write_atomic(path, data)  # readers never see half a file; a crash leaves a ".tmp-" file for sweep()
        else:
            self.fs.pipe_file(path, data)  # an object store's PUT is atomic

    def get(self, ref: dict[str, Any]) -> bytes:
        """The bytes of ``ref``; :class:`ClaimMissing` when they are gone or do not hash to it."""
        key = self.key(ref)
        try:
            data = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise ClaimMissing(
                key, self.url,
                f"it is gone ({format_size(ref.get('size'))} stored). Values sent to tasks are removed "
                f"{self.ttl / 86400:g} day(s) after they were stored (oomless_offload_ttl) and results when "
                f"they are forgotten or expire; the client and the worker must also use the same store "
                f"(oomless_offload)",
            ) from None
        except OSError as exc:
            raise ClaimMissing(key, self.url, f"the store cannot be read ({exc})") from None
        if hashlib.sha256(data).hexdigest() != ref[MARK]:
            raise ClaimMissing(key, self.url, "its bytes do not hash to the reference (changed or truncated)")
        return data

    # -- removal ------------------------------------------------------------------------------------------

    def forget(self, owner: str) -> None:
        """Remove every value the task ``owner`` returned."""
        if not _OWNER.match(owner):
            return
        try:
            self.fs.rm(self._path(f"results/{owner}"), recursive=True)
        except FileNotFoundError:
            pass

    def owners(self) -> Iterable[str]:
        """Task ids that own stored results."""
        try:
            entries = self.fs.ls(self._path("results"), detail=False)
        except FileNotFoundError:
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def sweep(
        self,
        now: float | None = None,
        result_gone: Callable[[str], bool] | None = None,
        result_ttl: float | None = None,
        grace: float = 600.0,
    ) -> dict[str, int]:
        """Remove what nobody can ask for any more; returns counts by kind.

        * arguments older than the TTL;
        * results whose task's result is gone from the result backend
          (``result_gone(task_id)``: forgotten or expired), or, when that cannot
          be asked, older than ``result_ttl`` (``None``: kept);
        * ``grace`` seconds protect what was just written (a result is stored
          before its task's result record is).
        """
        now = time.time() if now is None else now
        removed = {"args": 0, "results": 0, "tmp": 0}
        for path, info in self._files("args"):
            age = now - (_mtime(info) or now)
            stale_tmp = ".tmp-" in path and age > grace
            if age > self.ttl or stale_tmp:
                removed["tmp" if stale_tmp else "args"] += self._rm(path)
        for owner in self.owners():
            files = list(self._files(f"results/{owner}"))
            newest = max((_mtime(info) or now for _, info in files), default=now)
            age = now - newest
            if age <= grace:
                continue
            if (result_gone is not None and result_gone(owner)) or (result_ttl is not None and age > result_ttl):
                removed["results"] += len(files)
                self.forget(owner)
        return removed

    def _files(self, under: str) -> Iterable[tuple[str, dict[str, Any]]]:
        try:
            found = self.fs.find(self._path(under), detail=True)
        except FileNotFoundError:
            return []
        return found.items() if isinstance(found, dict) else []

    def _rm(self, path: str) -> int:
        try:
            self.fs.rm_file(path)
            return 1
        except FileNotFoundError:
            return 0

    def __repr__(self) -> str:
        return f"ClaimStore({self.url!r}, ttl={self.ttl:g})"
