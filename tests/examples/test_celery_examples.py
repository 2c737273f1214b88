"""The Celery examples run as written: a real worker started from examples/celery_app, the client as a script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "celery_app"


def test_the_chunked_example_fans_out_over_a_plan_and_fetches_a_large_result_by_claim_check(tmp_path, redis_url):
    env = dict(os.environ, OOMLESS_BROKER=redis_url, OOMLESS_BACKEND=redis_url, OOMLESS_CLAIMS=str(tmp_path / "claims"),
               OOMLESS_QUEUE=f"oomless-example-{uuid.uuid4().hex[:8]}", TMPDIR=str(tmp_path))
    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "chunked", "worker", "--concurrency", "2", "--memory-budget", "2GiB",
             "-l", "info", "--without-gossip", "--without-mingle"],
            cwd=EXAMPLES, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        out = subprocess.run([sys.executable, "chunked_client.py", "300000"], cwd=EXAMPLES, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "totals match pandas: True" in out.stdout, out.stdout
        assert "300000 orders" in out.stdout, out.stdout
        chunks = int(out.stdout.split(" chunks")[0].rsplit(" ", 1)[1])
        assert chunks > 1, out.stdout
        # The customer table (several MiB of JSON) came back through the claim store.
        assert list((tmp_path / "claims" / "results").glob("*/*")), "no result went through the claim store"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
