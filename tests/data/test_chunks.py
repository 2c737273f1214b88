"""chunks(): one pass over plain, gzip and fsspec CSV and Parquet, frames within the budget, for every engine."""

from __future__ import annotations

import gzip

import fsspec
import pandas as pd
import pytest

from oomless.data import chunks, plan, read
from oomless.data.formats import memory_of

from .test_csv_plan import assert_same, concat

MiB = 2**20
ENGINES = ["pandas", "pyarrow", "polars"]


def _csv(rows: int) -> bytes:
    return ("id,name,note\n" + "".join(f'{i},"n{i}","a, ""quoted""\nnote {i}"\r\n' for i in range(rows))).encode()


def _whole(path, engine: str):
    """The whole (uncompressed) file read by the engine itself."""
    if engine == "pyarrow":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    if engine == "polars":
        import polars as pl

        return pl.read_csv(path)
    return pd.read_csv(path)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("compressed", [False, True])
def test_chunks_cover_the_file_once_and_each_frame_fits_the_budget(tmp_path, compressed, engine):
    data = _csv(200_000)
    (tmp_path / "plain.csv").write_bytes(data)
    path = tmp_path / ("t.csv.gz" if compressed else "t.csv")
    path.write_bytes(gzip.compress(data) if compressed else data)
    frames = list(chunks(path, memory="4MiB", engine=engine))
    assert len(frames) > 3
    assert_same(concat(frames, engine), _whole(tmp_path / "plain.csv", engine), engine)
    assert max(memory_of(f) for f in frames) <= 4 * MiB


@pytest.mark.parametrize("engine", ENGINES)
def test_a_parquet_source_streams_row_groups_once(tmp_path, engine):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"n": list(range(50_000)), "s": [f"v{i}" for i in range(50_000)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=5_000)
    # 66 MiB: 64 of them are what the Parquet reader costs whatever the chunk (PARQUET_RESERVE).
    got = list(chunks(tmp_path / "t.parquet", memory="66MiB", engine=engine))
    assert len(got) > 1
    back = concat(got, engine)
    rows = {"pyarrow": "to_pylist", "polars": "to_dicts"}.get(engine)
    rows = getattr(back, rows)() if rows else back.to_dict("records")
    assert rows == table.to_pylist()


@pytest.mark.parametrize("engine", ENGINES)
def test_fsspec_urls_work_for_chunks_and_plans(engine):
    url = f"memory://oomless-test/{engine}.csv"
    with fsspec.open(url, "wb") as f:
        f.write(_csv(5000))
    frames = list(chunks(url, memory="1MiB", engine=engine))
    specs = plan(url, chunk_bytes=50_000, engine=engine)
    assert len(specs) > 2
    assert_same(concat(frames, engine), concat([read(s) for s in specs], engine), engine)
    assert sum(len(f) for f in frames) == 5000


@pytest.mark.parametrize("engine", ENGINES)
def test_compression_can_be_named_when_the_suffix_does_not_say(tmp_path, engine):
    data = _csv(2000)
    (tmp_path / "plain.csv").write_bytes(data)
    (tmp_path / "t.data").write_bytes(gzip.compress(data))
    frames = list(chunks(tmp_path / "t.data", memory="1MiB", engine=engine, compression="gzip", format="csv"))
    assert_same(concat(frames, engine), _whole(tmp_path / "plain.csv", engine), engine)
