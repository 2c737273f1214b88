"""SlotTable: pool children publish their slot's state; the main process reads it without syscalls."""

from __future__ import annotations

import os

import pytest

from oomless.enforce.slots import Finished, SlotTable

MiB = 2**20
UUID = "6f1c2b9e-3d4a-4f5b-8c7d-0e1f2a3b4c5d"


@pytest.fixture
def table():
    t = SlotTable(4)
    yield t
    t.close()


def _start(table: SlotTable, index: int = 1, task_id: str = UUID, **kw) -> None:
    args = dict(pid=4242, limit=64 * MiB, request=32 * MiB, baseline=10 * MiB, start_ns=123, oom_kills=2)
    args.update(kw)
    table.start(index, task_id=task_id, **args)


def test_a_new_row_is_idle_with_no_pid(table):
    state = table.read(0)
    assert (state.pid, state.running, state.task_id) == (0, False, "")


def test_start_publishes_every_field(table):
    _start(table)
    state = table.read(1)
    assert (state.pid, state.running, state.task_id) == (4242, True, UUID)
    assert (state.limit, state.request, state.baseline, state.start_ns, state.oom_kills) == (
        64 * MiB,
        32 * MiB,
        10 * MiB,
        123,
        2,
    )


def test_start_without_limit_or_request_reads_back_none(table):
    _start(table, limit=None, request=None)
    state = table.read(1)
    assert (state.limit, state.request) == (None, None)


def test_start_touches_only_its_own_row(table):
    _start(table, index=1)
    assert table.read(0).running is False
    assert table.read(2).running is False


def test_finish_marks_the_row_idle_and_keeps_the_pid(table):
    _start(table)
    table.finish(1, 4242, UUID, peak=50 * MiB, limit=64 * MiB)
    state = table.read(1)
    assert (state.running, state.pid) == (False, 4242)


def test_finished_returns_the_peak_of_a_finished_task(table):
    table.finish(1, 4242, UUID, peak=50 * MiB, limit=64 * MiB)
    assert table.finished(1, UUID) == Finished(UUID, 50 * MiB, 64 * MiB)


def test_finished_without_limit_reads_back_none(table):
    table.finish(1, 4242, UUID, peak=50 * MiB, limit=None)
    assert table.finished(1, UUID).limit is None


def test_finished_of_an_unknown_task_is_none(table):
    table.finish(1, 4242, UUID, peak=50 * MiB, limit=None)
    assert table.finished(1, "another-task") is None


def test_finished_looks_only_in_the_given_row(table):
    table.finish(1, 4242, UUID, peak=50 * MiB, limit=None)
    assert table.finished(2, UUID) is None


def test_ring_keeps_the_last_eight_finished_tasks(table):
    for i in range(8):
        table.finish(0, 1, f"task-{i}", peak=i * MiB, limit=None)
    assert [table.finished(0, f"task-{i}").peak for i in range(8)] == [i * MiB for i in range(8)]


def test_ninth_finished_task_evicts_the_first(table):
    for i in range(9):
        table.finish(0, 1, f"task-{i}", peak=i * MiB, limit=None)
    assert table.finished(0, "task-0") is None
    assert table.finished(0, "task-1").peak == 1 * MiB
    assert table.finished(0, "task-8").peak == 8 * MiB


def test_finished_returns_the_latest_run_of_a_repeated_task_id(table):
    # Celery's retry() re-sends a task with the same id; the latest run's peak is the one asked for.
    table.finish(0, 1, UUID, peak=10 * MiB, limit=None)
    table.finish(0, 1, "other", peak=1 * MiB, limit=None)
    table.finish(0, 1, UUID, peak=99 * MiB, limit=None)
    assert table.finished(0, UUID).peak == 99 * MiB


def test_finished_returns_the_latest_run_after_the_ring_wrapped(table):
    for i in range(6):
        table.finish(0, 1, f"filler-{i}", peak=1, limit=None)
    table.finish(0, 1, UUID, peak=10 * MiB, limit=None)  # ring position 6
    table.finish(0, 1, "filler-6", peak=1, limit=None)  # position 7
    table.finish(0, 1, UUID, peak=99 * MiB, limit=None)  # position 0 (wrapped)
    assert table.finished(0, UUID).peak == 99 * MiB


def test_task_ids_longer_than_48_bytes_are_cut_consistently(table):
    long_id = "x" * 60
    _start(table, task_id=long_id)
    table.finish(1, 4242, long_id, peak=5, limit=None)
    assert table.read(1).task_id == "x" * 48
    assert table.finished(1, long_id).peak == 5


def test_a_non_ascii_task_id_cut_inside_a_character_still_reads(table):
    task_id = "a" + "é" * 30  # 61 bytes in UTF-8: byte 48 falls inside an "é"
    _start(table, task_id=task_id)
    assert task_id.startswith(table.read(1).task_id)


def test_set_pid_claims_an_idle_row(table):
    table.set_pid(3, 777)
    state = table.read(3)
    assert (state.pid, state.running) == (777, False)


def test_index_of_finds_the_row_of_a_pid(table):
    table.set_pid(2, 777)
    assert table.index_of(777) == 2


def test_index_of_an_unknown_pid_is_none(table):
    table.set_pid(2, 777)
    assert table.index_of(778) is None


@pytest.mark.parametrize(
    "write",
    [
        lambda t: t.set_pid(1, 5),
        lambda t: _start(t),
        lambda t: t.finish(1, 5, UUID, 1, None),
    ],
    ids=["set_pid", "start", "finish"],
)
def test_every_write_changes_the_rows_seq_to_a_new_even_number(table, write):
    before = table.seq(1)
    write(table)
    after = table.seq(1)
    assert after != before
    assert after % 2 == 0


def test_seq_changes_on_each_of_repeated_writes(table):
    seen = [table.seq(0)]
    for _ in range(5):
        table.set_pid(0, 1)
        seen.append(table.seq(0))
    assert len(set(seen)) == 6


def test_a_write_leaves_other_rows_seq_unchanged(table):
    before = table.seq(0)
    table.set_pid(1, 5)
    assert table.seq(0) == before


def test_read_returns_the_seq_it_saw(table):
    _start(table)
    assert table.read(1).seq == table.seq(1)


def test_rows_written_by_a_forked_child_are_read_by_the_parent(table):
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            table.set_pid(2, os.getpid())
            _start(table, index=2, pid=os.getpid(), task_id=UUID)
            table.finish(2, os.getpid(), UUID, peak=77 * MiB, limit=64 * MiB)
            _start(table, index=2, pid=os.getpid(), task_id="second")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    state = table.read(2)
    assert (state.pid, state.running, state.task_id) == (pid, True, "second")
    assert table.finished(2, UUID).peak == 77 * MiB
    assert table.index_of(pid) == 2


def test_a_table_of_size_zero_has_no_rows():
    t = SlotTable(0)
    try:
        assert t.index_of(0) is None
    finally:
        t.close()


def test_finished_carries_the_input_size_the_task_reported(table):
    table.finish(1, 4242, UUID, peak=50 * MiB, limit=None, input_size=3 * 2**30)
    assert table.finished(1, UUID).input_size == 3 * 2**30
    table.finish(1, 4242, "other", peak=1, limit=None)
    assert table.finished(1, "other").input_size is None


def test_held_reads_back_and_is_none_unless_given(table):
    _start(table, held=384 * MiB)
    assert table.read(1).held == 384 * MiB
    _start(table, index=2)
    assert table.read(2).held is None


def test_born_reads_back_the_start_time_given_with_the_pid(table):
    table.set_pid(3, 4242, born=987654)
    assert (table.read(3).pid, table.born(3)) == (4242, 987654)
    assert table.born(0) is None


def test_a_row_counts_as_running_only_while_celery_holds_its_task_as_accepted_by_that_child(table):
    # Issue 14, item 6: a killed slot keeps its last row until a new child claims it, and a
    # memory-killed task retried under the same id runs in another slot meanwhile.
    from oomless.celery.status import running_slots

    _start(table, index=0, pid=100)  # the killed attempt's row: its child 100 is gone
    _start(table, index=1, pid=200)  # the retry, accepted by child 200
    _start(table, index=2, pid=300, task_id="ended")  # ended: Celery no longer holds it
    running = running_slots(table, {(UUID, 200): "t.escalating"})
    assert [(index, state.pid, name) for index, state, name in running] == [(1, 200, "t.escalating")]
    assert running_slots(table, {}) == []
