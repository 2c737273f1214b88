"""Large data on Celery with oomless: a chord over byte-budgeted chunks, large values by claim check.

    cd examples/celery_app
    celery -A chunked worker --concurrency 2 --memory-budget 2GiB -l info     # terminal 1
    python chunked_client.py                                                   # terminal 2

Both sides must reach the same claim store: a local directory here
(OOMLESS_CLAIMS, default $XDG_STATE_HOME/oomless/claims); an s3:// or other
fsspec URL across machines.  Needs the data extra (pandas, pyarrow, fsspec).
"""

import os

import pandas as pd
from celery import Celery

import oomless
from oomless.data import plan, read

BROKER = os.environ.get("OOMLESS_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("chunked", broker=BROKER, backend=os.environ.get("OOMLESS_BACKEND", "redis://127.0.0.1:6379/1"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    result_expires=3600,
    task_default_queue=os.environ.get("OOMLESS_QUEUE", "celery"),
    # Values over 1 MiB (arguments and results) travel by reference through this store.
    oomless_offload=os.environ.get("OOMLESS_CLAIMS") or True,
)
oomless.install(app)

# Small on purpose, so that the demo file makes several chunks; size it to your tasks in real use.
CHUNK_MEMORY = "16MiB"


@app.task(memory="1GiB")
def split(path: str) -> list:
    """The chunk specs of ``path``: small dicts, each chunk sized to fit CHUNK_MEMORY when read."""
    return plan(path, memory=CHUNK_MEMORY)


@app.task(memory="256MiB")
def region_totals(spec: dict) -> dict:
    """One chunk's totals per region."""
    frame = read(spec)
    return frame.groupby("region")["amount"].sum().to_dict()


@app.task(memory="256MiB")
def combine(partials: list) -> dict:
    """The chord's callback: the partial totals added up."""
    total: dict = {}
    for part in partials:
        for region, amount in part.items():
            total[region] = total.get(region, 0) + amount
    return total


@app.task(memory="512MiB")
def customer_table(path: str) -> list:
    """A large result (several MiB of JSON): it reaches the client through the claim store."""
    frame = pd.read_csv(path, usecols=["customer", "amount"])
    table = frame.groupby("customer")["amount"].agg(["sum", "count"]).reset_index()
    return table.to_dict("records")
