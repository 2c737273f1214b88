"""The claim store on a real local directory and on fsspec's in-memory filesystem."""

from __future__ import annotations

import hashlib
import os
import time
import uuid

import pytest

from oomless.data.claim import MARK, ClaimStore
from oomless.errors import ClaimMissing


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield ClaimStore(str(tmp_path / "claims"), ttl=100)
        return
    s = ClaimStore(f"memory://claims-{uuid.uuid4().hex}", ttl=100)
    yield s
    if s.fs.exists(s.root):
        s.fs.rm(s.root, recursive=True)


def test_a_value_comes_back_whole_and_is_stored_once_by_content(store):
    data = os.urandom(300_000)
    ref = store.put(data)
    again = store.put(data)
    assert ref == again == {MARK: hashlib.sha256(data).hexdigest(), "size": len(data), "owner": None}
    assert store.get(ref) == data
    assert [p for p, _ in store._files("args")] == [f"{store.root}/args/{ref[MARK][:2]}/{ref[MARK]}"]


def test_results_belong_to_their_task_and_go_when_it_is_forgotten(store):
    a = store.put(b"result of a" * 1000, owner="task-a")
    b = store.put(b"result of a" * 1000, owner="task-b")  # same bytes, another owner: its own copy
    shared = store.put(b"result of a" * 1000)
    store.forget("task-a")
    with pytest.raises(ClaimMissing, match="is gone"):
        store.get(a)
    assert store.get(b) == store.get(shared) == b"result of a" * 1000


@pytest.mark.parametrize(
    "ref",
    [
        {MARK: "../../etc/passwd", "size": 1, "owner": None},
        {MARK: "a" * 64, "size": 1, "owner": "../../../etc"},
        {MARK: "a" * 64, "size": 1, "owner": "x/../../y"},
        {MARK: 42, "size": 1, "owner": None},
    ],
    ids=["path-as-hash", "path-as-owner", "owner-with-slash", "not-a-string"],
)
def test_a_reference_from_a_message_cannot_name_a_path_outside_the_store(store, ref):
    with pytest.raises(ClaimMissing):
        store.get(ref)


def test_bytes_that_changed_in_the_store_are_refused_not_returned(store):
    ref = store.put(b"x" * 5000)
    store.fs.pipe_file(f"{store.root}/{store.key(ref)}", b"y" * 5000)
    with pytest.raises(ClaimMissing, match="do not hash to the reference"):
        store.get(ref)


def test_a_missing_value_says_where_it_was_and_why_it_may_be_gone(store):
    ref = {MARK: "0" * 64, "size": 10 << 20, "owner": None}
    with pytest.raises(ClaimMissing) as info:
        store.get(ref)
    text = str(info.value)
    assert store.url in text and "10.0 MiB" in text and "oomless_offload_ttl" in text


def test_the_sweep_removes_old_arguments_and_the_results_nobody_can_ask_for(store):
    old_arg, new_arg = store.put(b"old" * 2000), store.put(b"new" * 2000)
    kept, gone = store.put(b"r1" * 2000, owner="kept"), store.put(b"r2" * 2000, owner="gone")
    now = time.time()
    # 150 s later the first argument is past the 100 s TTL if it was written 60 s earlier.
    _age(store, store.key(old_arg), 60)
    removed = store.sweep(now=now + 50, result_gone=lambda tid: tid == "gone", grace=10)
    assert removed == {"args": 1, "results": 1, "tmp": 0}
    assert store.get(new_arg) == b"new" * 2000 and store.get(kept) == b"r1" * 2000
    for ref in (old_arg, gone):
        with pytest.raises(ClaimMissing):
            store.get(ref)


def test_the_sweep_spares_results_written_within_the_grace_period(store):
    ref = store.put(b"fresh" * 2000, owner="fresh")
    assert store.sweep(result_gone=lambda tid: True, grace=60) == {"args": 0, "results": 0, "tmp": 0}
    assert store.get(ref)


def test_without_a_result_backend_to_ask_results_expire_after_the_result_ttl(store):
    ref = store.put(b"r" * 5000, owner="t1")
    assert store.sweep(now=time.time() + 30, result_ttl=60, grace=0)["results"] == 0
    assert store.sweep(now=time.time() + 90, result_ttl=60, grace=0)["results"] == 1
    with pytest.raises(ClaimMissing):
        store.get(ref)


def _age(store: ClaimStore, key: str, seconds: float) -> None:
    """Make ``key`` look ``seconds`` older (local files: utime; memory fs: its 'created' stamp)."""
    path = f"{store.root}/{key}"
    if store.local:
        t = time.time() - seconds
        os.utime(path, (t, t))
    else:
        from datetime import datetime, timedelta, timezone

        store.fs.store[path].created = datetime.now(tz=timezone.utc) - timedelta(seconds=seconds)
