"""The second guest of ``tests/v2vm/run --qemu``: Debian's generic kernel under QEMU's TCG, for PSI.

User-mode-linux is quick but its kernel has no PSI (``CONFIG_PSI`` off, no
``memory.pressure``).  Debian's ``linux-image-amd64`` has it.  ``/dev/kvm`` on
these machines is a software PVM that will not run that kernel, so QEMU
emulates the CPU (TCG): boot ~3 s, Python ~20x slower than on the host; only a
few tests are worth running this way.

Everything comes from Debian's archive into the cache folder: the kernel
package (``apt-get download``, unpacked; the kernel and the eleven modules the
shares need are kept), ``qemu-system-x86`` and ``busybox-static``.  The
initramfs (written here, no ``cpio`` needed) loads virtio and 9p, mounts the
host's ``/`` read-only under a tmpfs overlay, the checkout and the state folder
read-write at their own paths, and hands over to ``tests/v2vm/init``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile

#: Loaded in this order from the initramfs: the 9p shares and the overlay root are modules in Debian's kernel.
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "9pnet", "9pnet_virtio", "netfs", "fscache", "9p", "overlay")

#: The initramfs's /init: the root.  ``tests/v2vm/init`` mounts the checkout and the state folder
#: (they may be under /tmp, which it covers with a tmpfs first).  ``cache=loose``: imports from the
#: venv over 9p without it take ~30x longer.
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do insmod /lib/$m.ko || echo "[v2vm] insmod $m failed"; done
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $o,cache=loose,ro hostroot /host
mount -t tmpfs tmpfs /up && mkdir /up/u /up/w
mount -t overlay overlay -o lowerdir=/host,upperdir=/up/u,workdir=/up/w /newroot
umount /proc
umount /dev
exec switch_root /newroot "$OOMLESS_V2VM_REPO/tests/v2vm/init"
echo "[v2vm] switch_root failed"
"""


class Unavailable(Exception):
    """A guest cannot run here (the reason is the message)."""


def apt_install(*packages: str) -> None:
    """Install Debian packages (both guests' tools), or say why that cannot be done here."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(packages)} is missing and apt-get cannot install it here (needs root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    for cmd in (["apt-get", "update", "-qq"], install):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")


def _static_busybox() -> str | None:
    found = shutil.which("busybox")
    if found is None:
        return None
    with open(found, "rb") as fh:  # a dynamic ELF names its loader (PT_INTERP): /lib64/ld-linux...
        return None if b"/ld-linux" in fh.read() else found


def tools() -> tuple[str, str]:
    """(qemu-system-x86_64, a static busybox), installed from Debian's archive when missing."""
    missing = [pkg for pkg, ok in (("qemu-system-x86", shutil.which("qemu-system-x86_64")),
                                   ("busybox-static", _static_busybox())) if not ok]
    if missing:
        apt_install(*missing)
    qemu, busybox = shutil.which("qemu-system-x86_64"), _static_busybox()
    if not qemu or not busybox:
        raise Unavailable("qemu-system-x86 or busybox-static was installed but is not on PATH")
    return qemu, busybox


def _kernel_package() -> tuple[str | None, str]:
    """(the package linux-image-amd64 depends on, e.g. linux-image-6.1.0-57-amd64, or None; apt-cache's complaint)."""
    depends = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
    package = next((line.split()[-1] for line in depends.stdout.splitlines()
                    if line.strip().startswith("Depends:") and "linux-image-" in line), None)
    return package, depends.stderr.strip()[-200:]


def kernel(cache: str) -> tuple[str, str]:
    """(the vmlinuz of Debian's current linux-image-amd64, the folder of its modules), fetched once."""
    package, why = _kernel_package()
    if package is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)  # a machine with no package lists yet
        package, why = _kernel_package()
    if package is None:
        raise Unavailable(f"apt-cache finds no linux-image-amd64 kernel package ({why})")
    home = os.path.join(cache, package)
    vmlinuz, modules = os.path.join(home, "vmlinuz"), os.path.join(home, "modules")
    if os.path.exists(vmlinuz):
        return vmlinuz, modules
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(dir=cache)
    try:
        done = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True)
        debs = glob.glob(os.path.join(work, "*.deb"))
        if done.returncode != 0 or not debs:
            raise Unavailable(f"apt-get download {package} failed: {done.stderr.strip()[-200:]}")
        tree = os.path.join(work, "x")
        subprocess.run(["dpkg-deb", "-x", debs[0], tree], check=True)
        staged = os.path.join(work, "kept")
        os.makedirs(os.path.join(staged, "modules"))
        shutil.copy(glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))[0], os.path.join(staged, "vmlinuz"))
        for name in MODULES:
            found = glob.glob(os.path.join(tree, "lib", "modules", "*", "kernel", "**", f"{name}.ko"), recursive=True)
            if not found:
                raise Unavailable(f"{package} has no module {name}.ko (compressed modules are not handled)")
            shutil.copy(found[0], os.path.join(staged, "modules"))
        os.rename(staged, home)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return vmlinuz, modules


def _cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive of (name, mode, data, rdev) entries."""
    out = bytearray()

    def add(ino: int, name: str, mode: int, data: bytes, rdev: int) -> None:
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(name) + 1, 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, 1):
        add(ino, name, mode, data, rdev)
    add(0, "TRAILER!!!", 0, b"", 0)
    return bytes(out)


def initramfs(cache: str, busybox: str, modules: str) -> str:
    """The initramfs (built once per busybox, kernel and /init)."""
    init = INIT.format(modules=" ".join(MODULES)).encode()
    with open(busybox, "rb") as fh:
        box = fh.read()
    kos = [(name, open(os.path.join(modules, f"{name}.ko"), "rb").read()) for name in MODULES]
    digest = hashlib.sha256(init + box + b"".join(data for _, data in kos)).hexdigest()[:12]
    target = os.path.join(cache, f"initramfs-{digest}.cpio")
    if os.path.exists(target):
        return target
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755
    entries = [(name, d, b"", 0) for name in ("bin", "dev", "lib", "proc", "sys", "host", "up", "newroot")]
    entries += [("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)), ("init", f, init, 0),
                ("bin/busybox", f, box, 0)]
    entries += [(f"lib/{name}.ko", stat.S_IFREG | 0o644, data, 0) for name, data in kos]
    partial = f"{target}.{os.getpid()}"
    with open(partial, "wb") as fh:
        fh.write(_cpio(entries))
    os.replace(partial, target)
    return target


def command(qemu: str, vmlinuz: str, initrd: str, repo: str, state: str, memory: str, args: list[str]) -> list[str]:
    """QEMU's command line: one vCPU (faster than two on a 2-core host), the console on stdout."""
    share = "local,security_model=none,path="
    return [
        qemu, "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", memory,
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", vmlinuz, "-initrd", initrd,
        "-append", " ".join(["console=ttyS0", "panic=-1", *args]),
        "-virtfs", f"{share}/,mount_tag=hostroot,readonly=on,multidevs=remap",
        "-virtfs", f"{share}{repo},mount_tag=repo",
        "-virtfs", f"{share}{state},mount_tag=state",
    ]
