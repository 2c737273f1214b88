"""chunks() keeps the process's peak within its budget: peak RSS of a fresh interpreter iterating a
~250 MiB CSV (and its Parquet twin) with memory="128MiB", minus the peak of the same reading of a tiny
file (the baseline).  128 MiB, not less: each engine's reader has fixed costs (PEAK_FACTORS' and
PARQUET_RESERVE's reserves, up to 64 MiB) that a smaller budget is mostly spent on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MiB = 2**20
BUDGET = 128 * MiB
ROWS = 3_500_000

CHILD = """
import json, sys
from oomless.data import chunks
rows = 0
for frame in chunks(sys.argv[1], memory=sys.argv[2], engine=sys.argv[3]):
    rows += len(frame)
with open("/proc/self/status") as fh:
    hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
print(json.dumps({"rows": rows, "peak": hwm}), flush=True)
# Skip the interpreter's teardown: pyarrow's threads sometimes abort it ("terminate called without an
# active exception", apache/arrow#34314; seen here once in ~10 runs, after the result was printed).
import os; os._exit(0)
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A ~250 MiB CSV of ints, floats, a key and free text, its Parquet twin, and tiny copies of both."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("peak")
    rng = np.random.default_rng(3)
    words = np.array(["order", "late", "refund, again", 'said "ok"', "box", "north", "customer"])
    notes = pa.array([" ".join(rng.choice(words, int(k))) for k in rng.integers(1, 9, 5000)])
    table = pa.table({
        "id": np.arange(ROWS), "qty": rng.integers(0, 1000, ROWS), "price": rng.gamma(2.0, 30.0, ROWS),
        "key": pa.array([f"k{i}" for i in range(40)]).take(pa.array(rng.integers(0, 40, ROWS))),
        "note": notes.take(pa.array(rng.integers(0, len(notes), ROWS))),
    })
    out = {}
    for name, part in (("big", table), ("tiny", table.slice(0, 1000))):
        pacsv.write_csv(part, folder / f"{name}.csv")
        pq.write_table(part, folder / f"{name}.parquet", row_group_size=100_000)
        out[name] = folder / name
    return out


def _peak(path, engine: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(BUDGET), engine],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("engine", ["pandas", "pyarrow", "polars"])
def test_the_peak_above_the_baseline_stays_within_the_budget(files, engine, fmt):
    base = _peak(files["tiny"].with_suffix(f".{fmt}"), engine)
    big = _peak(files["big"].with_suffix(f".{fmt}"), engine)
    assert big["rows"] == ROWS
    over = big["peak"] - base["peak"]
    print(f"{engine} {fmt}: peak {big['peak'] / MiB:.0f} MiB, baseline {base['peak'] / MiB:.0f} MiB, "
          f"over {over / MiB:.1f} MiB of a {BUDGET / MiB:.0f} MiB budget")
    assert over <= BUDGET
