"""A table in shared memory where pool children publish what their slot is running.

The worker main process creates it before the pool forks; every child inherits
the mapping and writes only its own row (row = billiard's process index).  The
main process reads rows without any system call: the watchdog polls them every
few milliseconds, and task completion looks up the measured peak.

Each row is guarded by a sequence number (a seqlock): the writer makes it odd,
writes, makes it even; a reader retries until it sees the same even number
before and after reading.  There is exactly one writer per row.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

__all__ = ["SlotTable", "SlotState", "Finished"]

#: Row states.  RUNNING_SPARE: running a task whose own process must survive a
#: kill (only its subprocesses die; Airflow's supervisor, see ``memory_scope``).
IDLE, RUNNING, RUNNING_SPARE = 0, 1, 2
ID_BYTES = 48  # Celery task ids are 36-character UUIDs; custom ids are cut to this length.

# seq, pid, state, limit, request, baseline, start_ns, oom_kills, task_id
_HEAD = struct.Struct(f"<QqqqqqqQ{ID_BYTES}s")
# task_id, peak, limit, input_size  (a ring of recently finished tasks)
_DONE = struct.Struct(f"<{ID_BYTES}sqqq")
_RING = 8
_SPINS = 10_000  # a write takes about a microsecond; a dead writer never finishes
# start seq of the running task, peak of its whole tree as the watchdog saw it
# (written by the main process's monitor only, read by the child at task end)
_TREE = struct.Struct("<Qq")
_TREE_OFF = _HEAD.size + 8 + _RING * _DONE.size
# start time (clock ticks since boot) of the row's pool child: with its pid, who it was once it is gone
_BORN_OFF = _TREE_OFF + _TREE.size
# tmpfs bytes the slot held when the running task started, if earlier tasks left memory
# behind that this task could free (-1: nothing worth watching); written with the head
_HELD_OFF = _BORN_OFF + 8
# resident bytes of the row's pool child when it claimed the row (mostly pages it shares with the worker)
_BRSS_OFF = _HELD_OFF + 8
_ROW = _BRSS_OFF + 8


@dataclass(frozen=True)
class SlotState:
    """What one slot is doing right now."""

    seq: int
    pid: int
    running: bool
    task_id: str
    limit: int | None
    request: int | None
    baseline: int
    start_ns: int
    oom_kills: int
    spare_root: bool = False  # kill only the pool child's subprocesses, never the child itself
    #: tmpfs bytes in the slot at task start when earlier tasks left memory the task could free
    #: (see ``CgroupEnforcer``); ``None``: nothing left behind worth watching
    held: int | None = None


@dataclass(frozen=True)
class Finished:
    """The measured peak of a finished task."""

    task_id: str
    peak: int
    limit: int | None
    input_size: int | None = None  # what the task said it read (oomless.input_size)


def _opt(value: int) -> int | None:
    return None if value < 0 else value


class SlotTable:
    """``size`` rows of slot state in an anonymous shared mapping (inherited across fork)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._mem = mmap.mmap(-1, max(1, size) * _ROW, flags=mmap.MAP_SHARED)

    # -- writer: the pool child owning the row ------------------------------
    def _begin(self, index: int) -> int:
        off = index * _ROW
        seq = struct.unpack_from("<Q", self._mem, off)[0] | 1
        struct.pack_into("<Q", self._mem, off, seq)
        return seq

    def _end(self, index: int, seq: int) -> None:
        struct.pack_into("<Q", self._mem, index * _ROW, seq + 1)

    def start(
        self,
        index: int,
        pid: int,
        task_id: str,
        limit: int | None,
        request: int | None,
        baseline: int,
        start_ns: int,
        oom_kills: int = 0,
        spare_root: bool = False,
        held: int | None = None,
    ) -> int:
        """Mark the row running ``task_id`` (call before the task's code runs); returns the row's new seq."""
        seq = self._begin(index)
        struct.pack_into("<q", self._mem, index * _ROW + _HELD_OFF, -1 if held is None else held)
        _HEAD.pack_into(
            self._mem,
            index * _ROW,
            seq,
            pid,
            RUNNING_SPARE if spare_root else RUNNING,
            -1 if limit is None else limit,
            -1 if request is None else request,
            baseline,
            start_ns,
            oom_kills,
            task_id.encode()[:ID_BYTES],
        )
        self._end(index, seq)
        return seq + 1

    def finish(
        self, index: int, pid: int, task_id: str, peak: int, limit: int | None, input_size: int | None = None
    ) -> None:
        """Mark the row idle and remember ``peak`` of ``task_id`` in the row's ring."""
        off = index * _ROW
        seq = self._begin(index)
        struct.pack_into("<qq", self._mem, off + 8, pid, IDLE)
        ring_off = off + _HEAD.size
        pos = struct.unpack_from("<q", self._mem, ring_off)[0]
        _DONE.pack_into(
            self._mem,
            ring_off + 8 + (pos % _RING) * _DONE.size,
            task_id.encode()[:ID_BYTES],
            peak,
            -1 if limit is None else limit,
            -1 if input_size is None else input_size,
        )
        struct.pack_into("<q", self._mem, ring_off, pos + 1)
        self._end(index, seq)

    def set_pid(self, index: int, pid: int, born: int = 0, rss: int = 0) -> None:
        """Claim the row for a newly born pool child (idle); ``born``: its start time (``proc.start_time``),
        ``rss``: its resident bytes then."""
        seq = self._begin(index)
        struct.pack_into("<qq", self._mem, index * _ROW + 8, pid, IDLE)
        struct.pack_into("<q", self._mem, index * _ROW + _BORN_OFF, born)
        struct.pack_into("<q", self._mem, index * _ROW + _BRSS_OFF, rss)
        # A new child has run no task: the ring of finished tasks starts empty.
        struct.pack_into("<q", self._mem, index * _ROW + _HEAD.size, 0)
        self._end(index, seq)

    def born_rss(self, index: int) -> int:
        """Resident bytes of the row's pool child when it claimed the row."""
        return int(struct.unpack_from("<q", self._mem, index * _ROW + _BRSS_OFF)[0])

    def ran(self, index: int) -> bool:
        """Whether the row's pool child has started a task."""
        off = index * _ROW
        running = struct.unpack_from("<q", self._mem, off + 16)[0] != IDLE
        return running or struct.unpack_from("<q", self._mem, off + _HEAD.size)[0] > 0

    def born(self, index: int) -> int | None:
        """Start time of the row's pool child as it claimed the row (``None``: not recorded)."""
        value = struct.unpack_from("<q", self._mem, index * _ROW + _BORN_OFF)[0]
        return value or None

    # -- readers: the worker main process -------------------------------------
    def seq(self, index: int) -> int:
        """Cheap check for the hot loop: the row's sequence number changes with every write."""
        return struct.unpack_from("<Q", self._mem, index * _ROW)[0]

    def read(self, index: int) -> SlotState:
        off = index * _ROW
        # A writer killed mid-write leaves the sequence odd for good: give up
        # waiting after a bounded number of tries and use what is there.
        for _ in range(_SPINS):
            fields = _HEAD.unpack_from(self._mem, off)
            held = struct.unpack_from("<q", self._mem, off + _HELD_OFF)[0]
            if fields[0] & 1 == 0 and struct.unpack_from("<Q", self._mem, off)[0] == fields[0]:
                break
        seq, pid, state, limit, request, baseline, start_ns, oom_kills, raw_id = fields
        return SlotState(
            seq,
            pid,
            state in (RUNNING, RUNNING_SPARE),
            # A custom id cut at ID_BYTES bytes may end inside a UTF-8 character: drop that fragment.
            raw_id.rstrip(b"\0").decode(errors="ignore"),
            _opt(limit),
            _opt(request),
            baseline,
            start_ns,
            oom_kills,
            state == RUNNING_SPARE,
            _opt(held),
        )

    def finished(self, index: int, task_id: str) -> Finished | None:
        """The ring entry of ``task_id`` in row ``index``, if still there."""
        off = index * _ROW
        want = task_id.encode()[:ID_BYTES]
        for _ in range(_SPINS):
            seq = struct.unpack_from("<Q", self._mem, off)[0]
            pos = struct.unpack_from("<q", self._mem, off + _HEAD.size)[0]
            ring = bytes(self._mem[off + _HEAD.size + 8 : off + _ROW])
            if seq & 1 == 0 and struct.unpack_from("<Q", self._mem, off)[0] == seq:
                break
        # Newest first: Celery's retry() re-runs a task under the same id, and the
        # latest run's peak is the one being asked for.
        for back in range(1, _RING + 1):
            raw_id, peak, limit, size = _DONE.unpack_from(ring, ((pos - back) % _RING) * _DONE.size)
            if raw_id.rstrip(b"\0") == want:
                return Finished(task_id, peak, _opt(limit), _opt(size))
        return None

    # -- the watchdog's view of a task's whole tree ---------------------------
    def publish_tree_peak(self, index: int, seq: int, peak: int) -> None:
        """Monitor side: the tree of the task that started at row sequence ``seq`` peaked at ``peak``."""
        # Two aligned 8-byte stores; the reader matches seq, and only the
        # task's own start changes seq, so a torn read pairs values of one task.
        _TREE.pack_into(self._mem, index * _ROW + _TREE_OFF, seq, peak)

    def tree_peak(self, index: int, seq: int) -> int | None:
        """Child side: the monitor's peak for the task that started at ``seq``, if it published one."""
        got, peak = _TREE.unpack_from(self._mem, index * _ROW + _TREE_OFF)
        return peak if got == seq else None

    def index_of(self, pid: int) -> int | None:
        for index in range(self.size):
            if struct.unpack_from("<q", self._mem, index * _ROW + 8)[0] == pid:
                return index
        return None

    def close(self) -> None:
        self._mem.close()
