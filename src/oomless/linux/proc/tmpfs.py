"""tmpfs memory a process tree holds without mapping it: files in /dev/shm, memfds.

Pages written to a tmpfs file with ``write()`` are in nobody's RSS, yet they are
memory all the same, and they outlive the process that wrote them unless the
file is deleted.  The watchdog adds what :class:`TmpfsFiles` finds to a tree's
RSS.  Not here: RSS and mapped shared memory (:mod:`.memory`); on cgroups the
kernel charges tmpfs pages to the slot's group itself (:mod:`oomless.linux.cgroup`).
"""

from __future__ import annotations

import os

from .files import UNREADABLE, path
from .mounts import MOUNTINFO, mounts

__all__ = ["tmpfs_devices", "TmpfsFiles"]


def tmpfs_devices(mountinfo: str = MOUNTINFO) -> frozenset[int]:
    """Device numbers of every tmpfs mount here (/dev/shm, /run, a tmpfs /tmp), plus the kernel's
    internal one behind ``memfd_create`` and ``shm_open`` files that are not in any mount."""
    devices = set()
    for mount in mounts(mountinfo):
        if mount.fstype in ("tmpfs", "shm"):
            major, minor = mount.device.split(":")
            devices.add(os.makedev(int(major), int(minor)))
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("oomless-probe", os.MFD_CLOEXEC)
        try:
            devices.add(os.fstat(fd).st_dev)
        finally:
            os.close(fd)
    return frozenset(devices)


class TmpfsFiles:
    """Bytes held by tmpfs files a process tree has open, or had open and did not delete.

    tmpfs (``/dev/shm``, memfd) pages written with ``write()`` and never mapped
    are in nobody's RSS; they are memory all the same.  This looks through the
    members' open files (``/proc/PID/fd``) and keeps the files it found, by path,
    while they exist.  ``bytes()`` is what those files hold beyond their size
    when first seen.  A file written and closed between two looks is not seen.
    """

    __slots__ = ("devices", "files", "counts", "dirs")

    def __init__(self, devices: frozenset[int]) -> None:
        self.devices = devices
        #: (dev, inode) -> [a path that reaches it, bytes when first seen, bytes now]
        self.files: dict[tuple[int, int], list] = {}
        self.counts: dict[int, int] = {}  # member pid -> its number of open files at the last look
        #: member pid -> its kept-open ``/proc/PID/fd`` (an ``fstat`` gives the count: 4 µs less than a
        #: ``stat`` by path, every poll), -1 when it could not be opened (then: by path)
        self.dirs: dict[int, int] = {}

    def look(self, pid: int, force: bool, new: bool = True) -> None:
        """Find tmpfs files ``pid`` has open.

        ``force``: list its descriptors; else only when its number of open files
        changed (Linux >= 6.2 reports it as the size of ``/proc/PID/fd``; older
        kernels report 0, and their files are found only on forced looks).
        ``new``: files found now are the task's own, all of their bytes count;
        else (the task's first look) only what they grow by.
        """
        base = path(pid, "fd")
        fd = self.dirs.get(pid)
        if fd is None:
            try:
                fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:  # gone, another user's, or out of descriptors: by path, as before
                fd = -1
            self.dirs[pid] = fd
        try:
            count = os.fstat(fd).st_size if fd >= 0 else os.stat(base).st_size
            if not force and (count == 0 or self.counts.get(pid) == count):
                return
            self.counts[pid] = count
            names = os.listdir(base)
        except UNREADABLE:
            return
        files, devices = self.files, self.devices
        for name in names:
            fd_path = f"{base}/{name}"
            try:
                st = os.stat(fd_path)
            except OSError:
                continue
            if st.st_dev not in devices or (st.st_mode & 0o170000) != 0o100000:
                continue
            key = (st.st_dev, st.st_ino)
            if key not in files:
                try:
                    target = os.readlink(fd_path)
                except OSError:
                    continue
                # A deleted or anonymous (memfd) file is reachable only through the descriptor.
                reach = fd_path if target.endswith(" (deleted)") or not target.startswith("/") else target
                size = st.st_blocks * 512
                files[key] = [reach, 0 if new else size, size]

    def forget(self, pid: int) -> None:
        """``pid`` left the tree: let its files go (the tmpfs files it left stay watched)."""
        self.counts.pop(pid, None)
        fd = self.dirs.pop(pid, -1)
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        for pid in list(self.dirs):
            self.forget(pid)

    def refresh(self) -> int:
        """Re-read the size of every file found; forget the ones that are gone. Returns :meth:`bytes`."""
        gone = []
        for key, entry in self.files.items():
            try:
                st = os.stat(entry[0])
            except OSError:
                gone.append(key)
                continue
            if (st.st_dev, st.st_ino) != key:
                gone.append(key)
                continue
            entry[2] = st.st_blocks * 512
        for key in gone:
            del self.files[key]
        return self.bytes()

    def bytes(self) -> int:
        """What the files found hold beyond their size when first seen (or at the last :meth:`rebase`)."""
        return sum(max(0, now - first) for _, first, now in self.files.values())

    def rebase(self) -> None:
        """A new task starts: from now on only growth beyond the files' current sizes counts."""
        for entry in self.files.values():
            entry[1] = entry[2]

    def known(self) -> bool:
        """Whether any tmpfs file has been found (else :meth:`refresh` has nothing to do)."""
        return bool(self.files)
