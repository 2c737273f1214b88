"""chunks(): one pass over plain, gzip and fsspec CSV and Parquet, frames within the budget."""

from __future__ import annotations

import gzip
import io

import fsspec
import pandas as pd
import pytest

from oomless.data import chunks, plan, read

MiB = 2**20


def _csv(rows: int) -> bytes:
    return ("id,name,note\n" + "".join(f'{i},"n{i}","a, ""quoted""\nnote {i}"\r\n' for i in range(rows))).encode()


@pytest.mark.parametrize("compressed", [False, True])
def test_chunks_cover_the_file_once_and_each_frame_fits_the_budget(tmp_path, compressed):
    data = _csv(200_000)
    path = tmp_path / ("t.csv.gz" if compressed else "t.csv")
    path.write_bytes(gzip.compress(data) if compressed else data)
    frames = list(chunks(path, memory="4MiB"))
    assert len(frames) > 3
    whole = pd.read_csv(io.BytesIO(data))
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), whole)
    assert max(int(f.memory_usage(deep=True).sum()) for f in frames) <= 4 * MiB


def test_pyarrow_engine_and_a_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.csv"
    path.write_bytes(_csv(1000))
    tables = list(chunks(path, memory="1MiB", engine="pyarrow"))
    assert sum(t.num_rows for t in tables) == 1000
    table = pa.table({"n": list(range(50_000))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=5_000)
    got = list(chunks(tmp_path / "t.parquet", memory="256KiB", engine="pyarrow"))
    assert len(got) > 1 and pa.concat_tables(got).equals(table)


def test_fsspec_urls_work_for_chunks_and_plans():
    with fsspec.open("memory://oomless-test/t.csv", "wb") as f:
        f.write(_csv(5000))
    frames = list(chunks("memory://oomless-test/t.csv", memory="1MiB"))
    specs = plan("memory://oomless-test/t.csv", chunk_bytes=50_000)
    assert len(specs) > 2
    assert pd.concat(frames, ignore_index=True).equals(pd.concat([read(s) for s in specs], ignore_index=True))
    assert sum(len(f) for f in frames) == 5000
