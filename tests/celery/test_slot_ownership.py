"""A slot's process tree and memory are its task's, whatever the task's processes do (issue 14, item 3).

Each test runs a real one-slot worker (so consecutive tasks share the slot)
against a real Redis, in both enforcement modes: daemons that double-fork and
``setsid()``, files written to tmpfs with ``write()``, a pool child killed from
outside while its task's subprocess runs, and memory an earlier task left in
the slot.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

import oomless

from .harness import V2, alive, start_worker, wait_file, wait_gone

sys.path.insert(0, str(Path(__file__).parent))
from worker_app import make_app  # noqa: E402

MiB = 2**20
SHM = Path("/dev/shm")


@pytest.fixture(scope="module", params=["cgroup", "watchdog"])
def one_slot(request, tmp_path_factory, redis_url):
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"slot-{mode}")
    worker = start_worker(tmp, redis_url, redis_url, mode=mode, concurrency=1, extra=("--memory-budget", "3GiB"))
    app = make_app(redis_url, redis_url, worker.queue, mode)
    worker.app, worker.mode, worker.tmp = app, mode, tmp
    yield worker
    worker.stop()
    app.close()


@pytest.fixture
def shm_path():
    path = SHM / f"oomless-test-{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(") ", 1)[1].split()[1])


def test_a_daemonized_subprocess_over_the_limit_is_killed_with_its_task(one_slot):
    pidfile = one_slot.tmp / f"daemon-{uuid.uuid4().hex}.pid"
    result = one_slot.app.tasks["t.daemon_hog"].delay(768, str(pidfile), 30)
    with pytest.raises(oomless.MemoryLimitExceeded) as caught:
        result.get(timeout=60)
    assert caught.value.limit == 256 * MiB
    daemon = int(wait_file(pidfile)[0])
    assert wait_gone(daemon), f"the task's daemon {daemon} outlived the kill"


def test_a_daemon_left_running_when_its_task_returns_is_killed(one_slot):
    pidfile = one_slot.tmp / f"daemon-{uuid.uuid4().hex}.pid"
    assert one_slot.app.tasks["t.daemon_hog"].delay(16, str(pidfile), 60, wait=False).get(timeout=60) == 16
    daemon = int(wait_file(pidfile)[0])
    assert wait_gone(daemon, timeout=10), f"daemon {daemon} of a finished task still runs"
    line = one_slot.wait_for("left running when it returned")
    assert str(daemon) in line


def test_a_tmpfs_file_written_without_mapping_it_counts_toward_the_limit(one_slot, shm_path):
    result = one_slot.app.tasks["t.shm_write"].delay(768, str(shm_path), hold=5)
    with pytest.raises(oomless.MemoryLimitExceeded) as caught:
        result.get(timeout=60)
    assert caught.value.limit == 256 * MiB
    assert caught.value.peak >= 256 * MiB


def test_a_task_cannot_free_an_earlier_tasks_leftovers_to_exceed_its_own_limit(one_slot, shm_path):
    # Task A leaves a 384 MiB file in /dev/shm (charged to the slot); task B, in
    # the same slot with a limit of 256 MiB, deletes it and then holds 512 MiB.
    shm = one_slot.app.tasks["t.shm_write"]
    assert shm.apply_async([384, str(shm_path)], {"keep": True}, memory="512MiB").get(timeout=60) == 384
    assert shm_path.stat().st_size == 384 * MiB
    result = one_slot.app.tasks["t.free_then_hog"].delay(str(shm_path), 512, 2)
    with pytest.raises(oomless.MemoryLimitExceeded) as caught:
        result.get(timeout=60)
    assert caught.value.limit == 256 * MiB
    assert not shm_path.exists()


@pytest.mark.parametrize("new_session", [False, True], ids=["same-session", "setsid"])
def test_a_pool_child_killed_from_outside_leaves_no_process_of_its_task(one_slot, new_session):
    # acks_late + reject_on_worker_lost: the message runs again.  The first run's
    # subprocess must be gone before the second run starts: never two copies at once.
    pidlog = one_slot.tmp / f"sub-{uuid.uuid4().hex}.log"
    result = one_slot.app.tasks["t.sub_hold"].delay(str(pidlog), 5, new_session)
    first = int(wait_file(pidlog)[0])
    child = _ppid(first)
    os.kill(child, signal.SIGKILL)
    second = int(wait_file(pidlog, lines=2)[1])
    assert not alive(first), f"the first run's subprocess {first} runs beside the second run's {second}"
    assert result.get(timeout=60) != child
    assert wait_gone(second)


@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_a_restarted_worker_kills_what_its_dead_predecessor_left_running(tmp_path, redis_url, mode):
    # The main process is SIGKILLed while a task's setsid subprocess runs: nothing of the worker is
    # left to kill it.  The worker restarted under the same node name does, before it forks its pool.
    node = f"restart-{uuid.uuid4().hex[:6]}"
    first = start_worker(tmp_path, redis_url, redis_url, mode=mode, concurrency=1, node=node,
                         extra=("--memory-budget", "1GiB"))
    app = make_app(redis_url, redis_url, first.queue, mode)
    pidlog = tmp_path / "sub.log"
    try:
        app.tasks["t.sub_hold"].delay(str(pidlog), 60, True)
        orphan = int(wait_file(pidlog)[0])
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(10)
        assert alive(orphan)
        second = start_worker(tmp_path, redis_url, redis_url, mode=mode, concurrency=1, node=node,
                              queue=first.queue, extra=("--memory-budget", "1GiB"))
        try:
            assert wait_gone(orphan, timeout=10), f"the dead worker's task subprocess {orphan} still runs"
            # cgroup mode finds it in the dead worker's slot group; the watchdog by its OOMLESS_SLOT mark,
            # and so does cgroup v2, where the successor cannot start in the dead worker's group (see
            # test_worker_lifecycle).
            said = "left by a worker that is gone" if mode == "cgroup" and not V2 else "left running when it died"
            line = next(ln for ln in second.wait_for(said).splitlines() if said in ln)
            assert str(orphan) in line
        finally:
            second.stop()
    finally:
        first.stop()
        app.close()


def test_a_write_to_tmpfs_refused_at_the_limit_fails_as_memory_limit_exceeded(one_slot, shm_path):
    # cgroup v1 refuses a write() past the slot's limit with ENOMEM (no pause, no OOM event): the task
    # sees OSError first.  It must still fail as MemoryLimitExceeded, with the limit and the peak.
    with pytest.raises(oomless.MemoryLimitExceeded) as caught:
        one_slot.app.tasks["t.shm_write"].delay(768, str(shm_path)).get(timeout=60)
    assert caught.value.limit == 256 * MiB
    assert caught.value.peak >= 250 * MiB
