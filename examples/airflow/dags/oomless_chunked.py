"""Large data on the CeleryExecutor: a chunked fan-out over a memory-sized plan, and a large XCom in object storage.

Runs as written (see examples/airflow/README.md); the guide's section "Large
data: chunked fan-out and XComs in object storage" (docs/airflow.md) explains it.

* ``orders_csv``: writes a CSV of orders (``rows`` of them, seeded, so every
  run writes the same file) into ``$OOMLESS_DATA_DIR`` (default: the system
  temp dir) and returns its path; with the ``source`` param set to a CSV path
  or fsspec URL that has the columns ``customer, region, amount, qty``, it
  uses that file instead.  Every worker must see the path: one machine, a
  shared volume, or a URL such as ``s3://bucket/orders.csv``.
* ``plan_chunks``: ``oomless.data.plan(path, memory=CHUNK_MEMORY)``, a list of
  small chunk specs (byte ranges cut at record boundaries) that cover the file
  exactly once, each expected to need at most CHUNK_MEMORY when read.
* ``region_totals``: mapped over the plan (``.expand(spec=...)``), one try per
  chunk; it reads its chunk with ``oomless.data.read(spec)`` and groups it by
  region.  It declares its memory: the chunk's budget plus what Airflow and
  pandas take in a task runner.
* ``combine``: adds the partial aggregates up into totals per region.
* ``customer_totals``: the orders per customer, streamed with
  ``oomless.data.chunks``, returned as a table (a dict of columns): a few MiB
  of JSON, above the XCom object-storage threshold, so the metadata database
  keeps only its path.
* ``top_customers``: reads that table back (the XCom backend fetches it from
  object storage) and returns the five biggest customers: small again.

The tasks that return a dict say ``multiple_outputs=False``: Airflow infers
``multiple_outputs=True`` from a ``-> dict[...]`` annotation and would push every
key as an XCom of its own besides the whole value, storing it twice.

Without the object-storage XCom backend configured, ``customer_totals`` still
works; its few MiB then go into the metadata database, which is what the
backend is there to prevent.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from oomless.airflow import memory

# What one chunk may take when read (the planner's budget).  Small so that the
# example's default file makes a handful of chunks (7); a real DAG would use e.g. 1GiB.
# Below about twice a reader's fixed costs (16-48 MiB for CSV) no budget can be a bound.
CHUNK_MEMORY = "32MiB"
# A chunk's try carries the task runner besides the chunk: Airflow (~45 MiB) and the
# pandas/pyarrow imports; it peaked at ~125 MiB here (docs/airflow.md §10).  A try
# killed for memory anyway is retried with twice as much.
CHUNK_TASK_MEMORY = memory("256MiB", escalate=2, max="1GiB")
REGIONS = ("north", "south", "east", "west", "centre", "islands", "coast", "hills")
CUSTOMERS = 100_000
BLOCK = 100_000  # rows generated and written at a time


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 1, "executor_config": memory("320MiB")},
    params={
        "rows": Param(600_000, type="integer", minimum=1, description="orders to generate"),
        "source": Param("", type="string", description="a CSV path or URL to use instead (empty: generate)"),
    },
    tags=["oomless", "data"],
)
def oomless_chunked():
    @task
    def orders_csv() -> str:
        params = get_current_context()["params"]
        if params["source"]:
            return params["source"]
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        rows = int(params["rows"])
        folder = os.environ.get("OOMLESS_DATA_DIR") or os.path.join(tempfile.gettempdir(), "oomless-chunked")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"orders-{rows}.csv")
        # Written under a temporary name and renamed: a concurrent run never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        rng = np.random.default_rng(7)
        with os.fdopen(fd, "wb") as f:
            f.write(b"order_id,customer,region,amount,qty\n")
            for start in range(0, rows, BLOCK):
                n = min(BLOCK, rows - start)
                ids = pa.array(rng.integers(0, CUSTOMERS, n)).cast(pa.string())
                block = pa.table({
                    "order_id": np.arange(start, start + n),
                    "customer": pc.binary_join_element_wise("c", pc.utf8_lpad(ids, 6, "0"), ""),
                    "region": np.array(REGIONS)[rng.integers(0, len(REGIONS), n)],
                    "amount": rng.integers(100, 100_000, n) / 100,
                    "qty": rng.integers(1, 20, n),
                })
                pacsv.write_csv(block, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
        os.replace(tmp, path)
        return path

    @task
    def plan_chunks(path: str) -> list[dict[str, Any]]:
        from oomless.data import plan

        return plan(path, memory=CHUNK_MEMORY)

    @task(executor_config=CHUNK_TASK_MEMORY, multiple_outputs=False)
    def region_totals(spec: dict[str, Any]) -> dict[str, dict[str, float]]:
        from oomless.data import read

        frame = read(spec)
        grouped = frame.groupby("region").agg(orders=("amount", "size"), amount=("amount", "sum"), qty=("qty", "sum"))
        return {
            region: {"orders": int(row.orders), "amount": float(row.amount), "qty": int(row.qty)}
            for region, row in grouped.iterrows()
        }

    @task(multiple_outputs=False)
    def combine(partials: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        totals: dict[str, dict[str, float]] = {}
        for partial in partials:
            for region, agg in partial.items():
                into = totals.setdefault(region, {"orders": 0, "amount": 0.0, "qty": 0})
                for name, value in agg.items():
                    into[name] += value
        return {region: {**t, "amount": round(t["amount"], 2)} for region, t in sorted(totals.items())}

    @task(multiple_outputs=False)
    def customer_totals(path: str) -> dict[str, list]:
        import pandas as pd

        from oomless.data import chunks

        parts = [
            frame.groupby("customer").agg(orders=("amount", "size"), amount=("amount", "sum"))
            for frame in chunks(path, memory=CHUNK_MEMORY)
        ]
        table = pd.concat(parts).groupby(level=0).sum().sort_index()
        return {
            "customer": table.index.tolist(),
            "orders": table["orders"].astype(int).tolist(),
            "amount": table["amount"].round(2).tolist(),
        }

    @task(multiple_outputs=False)
    def top_customers(table: dict[str, list]) -> dict[str, Any]:
        rows = sorted(zip(table["customer"], table["amount"], strict=True), key=lambda r: (-r[1], r[0]))
        return {"customers": len(table["customer"]), "top": [[c, a] for c, a in rows[:5]]}

    path = orders_csv()
    combine(region_totals.expand(spec=plan_chunks(path)))
    top_customers(customer_totals(path))


oomless_chunked()
