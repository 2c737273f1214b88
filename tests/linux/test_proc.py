"""oomless.linux.proc against real processes on this machine."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from oomless.linux import proc
from oomless.linux.proc.files import entries, read

from ..processes import parent_of_sleepers

MiB = 2**20

# A child that allocates (and touches) 100 MiB when told, then waits for stdin to close.
_HOG = r"""
import sys
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
hog = b"\x01" * (100 * 2**20)
sys.stdout.write("allocated\n"); sys.stdout.flush()
sys.stdin.read()
"""


@pytest.fixture
def hog():
    child = subprocess.Popen([sys.executable, "-c", _HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    yield child
    child.kill()
    child.communicate()


@pytest.fixture
def sleeper():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield child
    child.kill()
    child.communicate()


def _allocate(child: subprocess.Popen) -> None:
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "allocated\n"


# --- StatmReader -----------------------------------------------------------------


def test_statm_reader_reads_a_live_childs_rss(hog):
    reader = proc.StatmReader(hog.pid)
    try:
        assert reader.read() == proc.rss(hog.pid)
    finally:
        reader.close()


def test_statm_reader_sees_rss_grow_when_the_child_allocates_100_mib(hog):
    reader = proc.StatmReader(hog.pid)
    try:
        before = reader.read()
        _allocate(hog)
        after = reader.read()
    finally:
        reader.close()
    assert after - before >= 95 * MiB


def test_statm_reader_returns_none_after_the_child_is_reaped(sleeper):
    reader = proc.StatmReader(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    assert reader.read() is None


def test_statm_reader_keeps_returning_none_once_closed(sleeper):
    reader = proc.StatmReader(sleeper.pid)
    reader.close()
    assert reader.read() is None


def test_statm_reader_of_a_missing_pid_raises_file_not_found(sleeper):
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(FileNotFoundError):
        proc.StatmReader(sleeper.pid)


def test_a_statm_reader_for_a_gone_pid_is_discarded_without_noise(sleeper, monkeypatch):
    # The watchdog opens readers for children that may exit at any moment.
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    sleeper.kill()
    sleeper.wait()
    try:
        proc.StatmReader(sleeper.pid)
    except FileNotFoundError:
        pass
    gc.collect()
    assert unraisable == []


# --- rss, PSS ---------------------------------------------------------------------


def test_rss_grows_when_a_child_allocates_100_mib(hog):
    before = proc.rss(hog.pid)
    _allocate(hog)
    assert proc.rss(hog.pid) - before >= 95 * MiB


def test_pss_of_a_child_is_at_most_its_rss(hog):
    _allocate(hog)
    assert 0 < proc.pss(hog.pid) <= proc.rss(hog.pid)


def test_pss_counts_a_childs_private_allocation(hog):
    _allocate(hog)
    assert proc.pss(hog.pid) >= 95 * MiB


# --- OwnMemory --------------------------------------------------------------------


def test_own_memory_reads_the_same_rss_as_rss_of_self():
    own = proc.OwnMemory()
    assert abs(own.rss() - proc.rss(os.getpid())) <= 4 * MiB


def test_own_memory_peak_drops_after_reset():
    own = proc.OwnMemory()
    hog = b"\x01" * (200 * MiB)
    del hog
    high = own.peak()
    own.reset_peak()
    assert own.peak() <= high - 150 * MiB


_PEAKS = r"""
import os, sys
from oomless.linux import proc
MiB = 2**20
if sys.argv[1:] == ["first"]:  # hold 300 MiB, then become a new image: its rusage keeps that mark
    hog = b"\x01" * (300 * MiB)
    os.execv(sys.executable, [sys.executable, __file__, "second"])
own = proc.OwnMemory()


def task(mb):
    base = own.reset_peak()
    hog = bytes([3]) * (mb * MiB)
    del hog
    return (own.peak() - base) / MiB, (own.hwm() - base) / MiB, own._rusage


if os.fork() == 0:  # a pool child: forked, with no mark of its parent's in its rusage
    print("child", task(100), task(20), flush=True)
    os._exit(0)
os.wait()
print("exec'd", task(20), flush=True)
"""


def test_own_memory_peak_is_the_peak_since_the_reset_in_a_forked_child_and_after_an_exec(tmp_path):
    """The fast peak (getrusage) and the slow one (VmHWM) agree, and a smaller task after a larger one
    gets its own; a process exec'd by a larger one (whose rusage keeps that one's mark) reads VmHWM."""
    script = tmp_path / "peaks.py"
    script.write_text(_PEAKS)
    out = subprocess.run([sys.executable, str(script), "first"], capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    first, second = eval(lines["child"].replace(") (", "), ("))  # noqa: S307 - our own output
    exec_d = eval(lines["exec'd"])  # noqa: S307
    for (fast, slow, _used), mb in ((first, 100), (second, 20), (exec_d, 20)):
        assert mb - 1 <= fast <= mb + 4 and abs(fast - slow) <= 1, (fast, slow, mb)
    assert first[2] and second[2]  # getrusage in the pool child
    assert not exec_d[2]  # VmHWM where getrusage remembers the 300 MiB of the image before


def test_own_memory_reopens_its_files_after_fork():
    own = proc.OwnMemory()
    own.rss()  # open the parent's files before forking
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read)
            before = own.rss()
            hog = b"\x01" * (100 * MiB)
            os.write(write, str(own.rss() - before).encode())
            del hog
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        grown = int(os.read(read, 64))
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    # Read through the parent's kept-open file, the child would see the parent (blocked, unchanged): ~0.
    # Compared within the child: a large parent (pytest after the pandas tests) may hold more file-backed
    # pages than the child has mapped, so child and parent RSS cannot be compared directly.
    assert grown >= 95 * MiB


# --- children, start_time, parent_pid, mem_total ---------------------------------------


def test_children_lists_a_subprocess(sleeper):
    assert sleeper.pid in proc.children(os.getpid())


def test_a_kept_open_children_reader_follows_its_process_and_not_its_pid(sleeper):
    """Read again and again through one open file: children come and go; once the process is gone it
    reads as childless, and it reads its many children whole; with no descriptor to spare, by path."""
    with parent_of_sleepers() as (parent, children):
        reader = proc.ChildrenReader(parent.pid)
        for n in (2, 0, 800, 1):  # 800 PIDs take more than one 4 KiB read
            pids = children(n)
            assert sorted(reader.read()) == sorted(pids)
    assert reader.read() == []
    reader.close()
    assert reader.read() == []
    with pytest.raises(proc.GONE):
        proc.ChildrenReader(parent.pid)
    import resource

    me = os.getpid()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        while True:  # use up every descriptor
            try:
                held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        by_path = proc.ChildrenReader(me)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert sleeper.pid in by_path.read()
    by_path.close()


def test_all_children_lists_a_subprocess(sleeper):
    assert sleeper.pid in proc.all_children(os.getpid())


def test_all_children_sees_a_child_forked_by_another_thread():
    import threading

    started: list[subprocess.Popen] = []
    spawned, done = threading.Event(), threading.Event()

    def spawn() -> None:
        started.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE))
        spawned.set()
        done.wait(30)  # stay alive: a dead thread's children move to another thread of the process

    thread = threading.Thread(target=spawn)
    thread.start()
    try:
        assert spawned.wait(30)
        child = started[0]
        assert child.pid in proc.all_children(os.getpid())
        assert child.pid not in proc.children(os.getpid())
    finally:
        done.set()
        thread.join()
        for child in started:
            child.kill()
            child.communicate()


def test_own_children_sees_children_of_any_thread_and_none_once_reaped():
    """In a fresh fork (one thread, no children): what OwnChildren.any() says at each step."""
    import threading

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked child reports through the pipe
        code = 1
        try:
            os.close(read)
            own, seen = proc.OwnChildren(), []
            seen.append(own.any())  # none yet
            child = subprocess.Popen([sys.executable, "-c", "pass"])
            seen.append(own.any())  # one, forked by the main thread (running or a zombie)
            child.wait()
            seen.append(own.any())  # reaped
            spawned, done = threading.Event(), threading.Event()
            started: list[subprocess.Popen] = []

            def spawn() -> None:
                started.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                                stdin=subprocess.PIPE))
                spawned.set()
                done.wait(30)

            thread = threading.Thread(target=spawn)
            thread.start()
            spawned.wait(30)
            seen.append(own.any())  # one, forked by another thread: only that thread's file lists it
            started[0].communicate(b"")
            done.set()
            thread.join()
            seen.append(own.any())
            os.write(write, repr(seen).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        seen = os.read(read, 256).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert seen == "[False, True, False, True, False]"


def test_children_of_a_gone_process_is_empty(sleeper):
    sleeper.kill()
    sleeper.wait()
    assert proc.children(sleeper.pid) == []
    assert proc.all_children(sleeper.pid) == []


def test_start_time_is_stable_for_one_process(sleeper):
    assert proc.start_time(sleeper.pid) == proc.start_time(sleeper.pid)


def test_start_time_differs_between_this_process_and_a_later_child(sleeper):
    assert proc.start_time(sleeper.pid) > proc.start_time(os.getpid())


def test_start_time_of_a_gone_process_is_none(sleeper):
    sleeper.kill()
    sleeper.wait()
    assert proc.start_time(sleeper.pid) is None


def test_start_time_and_parent_pid_survive_a_command_name_with_spaces_and_parentheses():
    # comm (field 2 of /proc/PID/stat) is set by the process and may hold ") (".
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; open('/proc/self/comm', 'w').write(') x (y) 1 2'); print('ok', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "ok\n"
        with open(f"/proc/{child.pid}/stat") as fh:
            stat = fh.read()
        assert "(" + ") x (y) 1 2" + ")" in stat
        fields_after_comm = stat[stat.rindex(")") + 2 :].split()
        assert proc.start_time(child.pid) == int(fields_after_comm[19])
        assert proc.parent_pid(child.pid) == os.getpid()
    finally:
        child.kill()
        child.communicate()


def test_parent_pid_of_a_subprocess_is_this_process(sleeper):
    assert proc.parent_pid(sleeper.pid) == os.getpid()


def test_mem_total_is_the_machines_physical_memory():
    assert proc.mem_total() == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert proc.mem_total() > 0


# --- mounts, tmpfs_devices ----------------------------------------------------------


def test_mounts_reads_each_field_whatever_number_of_optional_fields_precede_the_separator(tmp_path):
    # proc(5): optional fields ("shared:7", "master:1", or none) run up to the " - " separator.
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "25 30 0:23 / /sys/fs/cgroup/memory rw,nosuid shared:9 master:2 - cgroup cgroup rw,memory\n"
        "26 30 0:24 / /dev/shm rw - tmpfs tmpfs rw,size=65536k\n"
    )
    assert proc.mounts(str(mountinfo)) == [
        proc.Mount("0:23", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
        proc.Mount("0:24", "/dev/shm", "tmpfs", "rw,size=65536k"),
    ]


def test_tmpfs_devices_holds_each_tmpfs_mount_and_none_other(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "25 30 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n"
        "26 30 0:24 / /dev/shm rw - tmpfs tmpfs rw\n"
    )
    devices = proc.tmpfs_devices(str(mountinfo))
    assert os.makedev(0, 24) in devices and os.makedev(8, 1) not in devices


def test_a_gone_process_reads_as_none_and_its_directories_as_empty(sleeper):
    sleeper.kill()
    sleeper.wait()
    assert read(sleeper.pid, "stat") is None
    assert entries(sleeper.pid, "task") == []
