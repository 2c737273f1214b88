"""A worker in a container's view of cgroup v2: its own group as ``/sys/fs/cgroup``, mounted
read-only, with a ``memory.max`` (what a Kubernetes container sees).  Runs in the cgroup-v2 guest
of ``tests/v2vm/run``; on a host without a writable cgroup v2 hierarchy it is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .harness import V2, MemoryCgroup, start_worker

pytestmark = pytest.mark.skipif(not V2, reason="needs a writable cgroup v2 hierarchy to make the container's group")

GiB = 2**30

#: A new mount and cgroup namespace: the process's own group becomes the cgroup2 root it mounts,
#: read-only, as a container runtime does.
CONTAINER = (
    "unshare", "--mount", "--cgroup", "--propagation", "private", "sh", "-c",
    'umount /sys/fs/cgroup && mount -t cgroup2 -o ro,nosuid,nodev,noexec cgroup2 /sys/fs/cgroup && exec "$@"', "sh",
)


@pytest.fixture
def container():
    group = MemoryCgroup(2 * GiB)
    yield group
    group.remove()


def test_a_worker_in_a_read_only_container_cgroup_picks_the_watchdog_with_the_containers_limit(
    tmp_path, redis_url, container
):
    worker = start_worker(tmp_path, redis_url, redis_url, mode="auto", cgroup=container.path, wrap=CONTAINER)
    try:
        log = worker.text()
    finally:
        worker.stop()
    assert "enforcement watchdog (cgroups unusable (cgroup v2 group /sys/fs/cgroup is mounted read-only" in log
    assert "worker cgroup limit 2.0 GiB" in log


def test_doctor_in_a_read_only_container_cgroup_explains_the_watchdog_and_the_limit(container):
    done = subprocess.run(
        [*CONTAINER, sys.executable, "-m", "oomless.cli", "doctor"], capture_output=True, text=True, timeout=120,
        preexec_fn=container.join, env=dict(os.environ, COLUMNS="200"),
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "mounted read-only" in out and "watchdog" in out
    assert "2.0 GiB" in out
