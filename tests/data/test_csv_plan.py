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
from oomless.data.formats import memory_of

field = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\u00e9x1')), max_size=12)


def _write(rows: list[list[str]], newline: str, trailing: bool, quoting: int = csv.QUOTE_MINIMAL) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=newline, quoting=quoting).writerows(rows)
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


# Each engine reads every field as a string without turning empty fields into nulls differently per chunk.
ALL_STRINGS = {
    "pandas": {"dtype": "str", "keep_default_na": False},
    "pyarrow": {"column_types": {"a": "string", "b": "string", "c": "string"}},
    "polars": {"infer_schema": False},
}


def read_whole(path, engine: str, **options):
    """The whole file read by the engine itself, as the reference a plan must reproduce."""
    if engine == "pyarrow":
        import pyarrow.csv as pacsv

        types = {k: "string" for k in options.get("column_types", {})}
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                              convert_options=pacsv.ConvertOptions(column_types=types))
    if engine == "polars":
        import polars as pl

        return pl.read_csv(path, **options)
    return pd.read_csv(path, **options)


def concat(frames, engine: str):
    if engine == "pyarrow":
        import pyarrow as pa

        return pa.concat_tables(frames)
    if engine == "polars":
        import polars as pl

        return pl.concat(frames)
    return pd.concat(frames, ignore_index=True)


def assert_same(got, want, engine: str) -> None:
    if engine == "pandas":
        pd.testing.assert_frame_equal(got, want)
    else:
        assert got.equals(want), f"{got}\n!=\n{want}"


@pytest.mark.parametrize("engine", ["pandas", "pyarrow", "polars"])
@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(field, min_size=3, max_size=3), min_size=1, max_size=30),
    newline=st.sampled_from(["\n", "\r\n"]),
    trailing=st.booleans(),
    step=st.integers(1, 80),
)
def test_a_plan_with_a_header_reads_back_the_whole_file(tmp_path_factory, engine, rows, newline, trailing, step):
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    # Python's writer leaves a bare \r unquoted when the line ends in \n; pyarrow reads that \r as a line end.
    quoting = csv.QUOTE_ALL if engine == "pyarrow" else csv.QUOTE_MINIMAL
    path.write_bytes(_write([["a", "b", "c"], *rows], newline, trailing, quoting))
    specs = plan(path, engine=engine, chunk_bytes=step, **ALL_STRINGS[engine])
    assert json.loads(json.dumps(specs)) == specs  # small and JSON-serializable
    whole = read_whole(path, engine, **ALL_STRINGS[engine])
    assert_same(concat([read(s) for s in specs], engine), whole, engine)


@pytest.mark.parametrize("engine", ["pyarrow", "polars"])
def test_a_file_without_header(tmp_path, engine):
    path = tmp_path / "n.csv"
    path.write_bytes(b'1,"x\ny"\r\n2,z\r\n3,"q""r"')
    specs = plan(path, engine=engine, chunk_bytes=3, header=None, names=["n", "s"])
    rows = [r for s in specs for r in (read(s).to_pylist() if engine == "pyarrow" else read(s).to_dicts())]
    assert rows == [{"n": 1, "s": "x\ny"}, {"n": 2, "s": "z"}, {"n": 3, "s": 'q"r'}]


@pytest.mark.parametrize("engine", ["pandas", "pyarrow", "polars"])
def test_the_chunk_size_comes_from_the_memory_budget(tmp_path, engine):
    path = tmp_path / "big.csv"
    path.write_text("a,b\n" + "".join(f"{i},{'x' * 20}\n" for i in range(200_000)))
    small, large = plan(path, memory="4MiB", engine=engine), plan(path, memory="64MiB", engine=engine)
    assert len(small) > len(large) >= 1
    assert sum(len(read(s)) for s in small) == 200_000
    biggest = max(small, key=lambda s: s["end"] - s["start"])
    assert memory_of(read(biggest)) <= 4 * 2**20


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


@pytest.mark.parametrize("engine", ["pandas", "pyarrow", "polars"])
def test_parquet_plans_are_sets_of_row_groups(tmp_path, engine):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"n": list(range(100_000)), "s": [f"v{i}" for i in range(100_000)]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=10_000)
    specs = plan(path, memory="1MiB", engine=engine)
    assert [g for s in specs for g in s["row_groups"]] == list(range(10))
    assert len(specs) > 1
    import polars as pl

    whole = {"pandas": table.to_pandas(), "pyarrow": table, "polars": pl.from_arrow(table)}[engine]
    assert_same(concat([read(s) for s in specs], engine), whole, engine)


def test_reader_options_must_travel_as_json(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(ValueError, match="dtype='str'"):
        plan(path, dtype=str)


def test_an_unknown_engine_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(ValueError, match="engine='dask' is not one of pandas, pyarrow, polars"):
        plan(path, engine="dask")
