"""Run the chunked example: write a CSV, fan out over its chunks, and fetch a large result."""

import os
import sys
import tempfile

import numpy as np
import pandas as pd
from celery import chord
from chunked import combine, customer_table, region_totals, split

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
path = os.path.join(tempfile.gettempdir(), f"oomless-orders-{rows}.csv")
rng = np.random.default_rng(7)
frame = pd.DataFrame({
    "order": np.arange(rows),
    "customer": rng.integers(0, 200_000, rows),
    "region": rng.choice(["north", "south", "east", "west"], rows),
    "amount": rng.integers(1, 10_000, rows),
})
frame.to_csv(path, index=False)

specs = split.delay(path).get(timeout=120)
totals = chord(region_totals.s(spec) for spec in specs)(combine.s()).get(timeout=600)
expected = frame.groupby("region")["amount"].sum().to_dict()
print(f"{os.path.getsize(path) / 2**20:.1f} MiB of CSV in {len(specs)} chunks; totals match pandas: "
      f"{totals == expected}")

table = customer_table.delay(path).get(timeout=300)
print(f"customer table: {len(table)} rows, {sum(r['count'] for r in table)} orders")
