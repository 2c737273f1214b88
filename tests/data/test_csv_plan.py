"""Chunk plans of tricky CSV files cover every record exactly once (checked against Python's csv
module and pandas on the whole file)."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomless.data import NotSplittable, plan, read
from oomless.data.csvsplit import record_starts

field = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\u00e9x1')), max_size=12)


def _write(rows: list[list[str]], newline: str, trailing: bool) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=newline, quoting=csv.QUOTE_MINIMAL).writerows(rows)
    text = buf.getvalue()
    if not trailing:
        text = text[: -len(newline)]
    return text.encode()


def _rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.lists(field, min_size=3, max_size=3), min_size=1, max_size=40),
    newline=st.sampled_from(["\n", "\r\n"]),
    trailing=st.booleans(),
    step=st.integers(1, 60),
)
def test_record_starts_cut_only_between_records(rows, newline, trailing, step):
    data = _write(rows, newline, trailing)
    f = io.BytesIO(data)
    cuts = sorted(set([0, *record_starts(f, list(range(step, len(data), step)), len(data)), len(data)]))
    pieces = [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    assert b"".join(pieces) == data
    got = [row for piece in pieces for row in _rows(piece)]
    assert got == _rows(data)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(field, min_size=3, max_size=3), min_size=1, max_size=30),
    newline=st.sampled_from(["\n", "\r\n"]),
    trailing=st.booleans(),
    step=st.integers(1, 80),
)
def test_a_plan_with_a_header_reads_back_the_whole_file_with_pandas(tmp_path_factory, rows, newline, trailing, step):
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_bytes(_write([["a", "b", "c"], *rows], newline, trailing))
    specs = plan(path, chunk_bytes=step, dtype="str", keep_default_na=False)
    assert json.loads(json.dumps(specs)) == specs  # small and JSON-serializable
    whole = pd.read_csv(path, dtype="str", keep_default_na=False)
    parts = pd.concat([read(s) for s in specs], ignore_index=True)
    pd.testing.assert_frame_equal(parts, whole)


def test_a_file_without_header_and_the_pyarrow_engine(tmp_path):
    path = tmp_path / "n.csv"
    path.write_bytes(b'1,"x\ny"\r\n2,z\r\n3,"q""r"')
    specs = plan(path, engine="pyarrow", chunk_bytes=3, header=None, names=["n", "s"])
    rows = [r for s in specs for r in read(s).to_pylist()]
    assert rows == [{"n": 1, "s": "x\ny"}, {"n": 2, "s": "z"}, {"n": 3, "s": 'q"r'}]


def test_the_chunk_size_comes_from_the_memory_budget(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("a,b\n" + "".join(f"{i},{'x' * 20}\n" for i in range(200_000)))
    small, large = plan(path, memory="4MiB"), plan(path, memory="64MiB")
    assert len(small) > len(large) >= 1
    assert sum(len(read(s)) for s in small) == 200_000
    biggest = max(small, key=lambda s: s["end"] - s["start"])
    assert read(biggest).memory_usage(deep=True).sum() <= 4 * 2**20


@pytest.mark.parametrize("name, kwargs, why", [
    ("t.csv.gz", {}, "is compressed"),
    ("t.csv", {"escapechar": "\\"}, "escapechar="),
    ("t.csv", {"skiprows": 3}, "skiprows=3 counts rows"),
    ("t.csv", {"header": 2}, "only a header in the first row"),
])
def test_what_cannot_be_split_safely_is_refused_with_the_reason(tmp_path, name, kwargs, why):
    path = tmp_path / name
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(NotSplittable, match=why):
        plan(path, **kwargs)


def test_parquet_plans_are_sets_of_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"n": list(range(100_000)), "s": [f"v{i}" for i in range(100_000)]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=10_000)
    specs = plan(path, memory="1MiB")
    assert [g for s in specs for g in s["row_groups"]] == list(range(10))
    assert len(specs) > 1
    assert pd.concat([read(s) for s in specs], ignore_index=True).equals(table.to_pandas())


def test_reader_options_must_travel_as_json(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(ValueError, match="dtype='str'"):
        plan(path, dtype=str)
