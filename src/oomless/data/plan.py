"""Chunk plans: small JSON-serializable specs that cover a file exactly once, each sized to a memory budget.

``plan(source, memory="256MiB")`` returns a list of dicts that a Celery
``group``/``chord`` or an Airflow ``.expand()`` maps over; ``read(spec)``
loads one chunk with the spec's engine: a pandas DataFrame, a pyarrow Table
or a polars DataFrame.

* **CSV**: byte ranges cut at record boundaries (quoted newlines, CRLF and a
  missing final newline are handled; see :mod:`oomless.data.csvsplit`).  The
  header, when there is one, is read once and each spec carries the column
  names.
* **Parquet**: sets of whole row groups, read by pyarrow (polars cannot pick
  row groups; ``engine="polars"`` converts with ``polars.from_arrow``).

How big a chunk is: the planner parses a sample (the first records of a CSV,
up to ``SAMPLE`` bytes) with the engine and measures how many bytes of memory
one byte of file becomes (the *expansion*); a chunk then gets the bytes of
file that :func:`oomless.data.chunks.chunk_bytes` gives for the budget,
a rule measured against real process peaks (see :mod:`oomless.data.chunks`;
it also counts a previous frame, which a task reading one spec does not
hold, so a plan's chunks are on the safe side).  Parquet row groups are
grouped by their decoded size (from a decoded sample) up to the same share
of the budget as ``chunks()`` uses; a row group larger than that cannot be
split by a plan and is logged.

Refused, with a message that says why and what to do instead (never wrong
chunks): compressed CSV (no seeking: stream it with ``chunks()`` or convert
it to Parquet), ``escapechar`` (a backslash-escaped quote breaks the quote
parity), a ``lineterminator`` other than ``\\n``, ``skiprows``/``nrows``/
``skipfooter``/``chunksize``/``iterator`` (they count rows, which byte ranges
cannot), and a ``header`` row other than the first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import Any

from ..units import format_size, parse_size
from .csvsplit import record_starts

__all__ = ["plan", "read", "NotSplittable", "SAMPLE"]

log = logging.getLogger("oomless.data")

SAMPLE = 4 << 20
_ROW_OPTIONS = ("skiprows", "nrows", "skipfooter", "chunksize", "iterator", "compression")
_ENGINES = ("pandas", "pyarrow", "polars")


class NotSplittable(ValueError):
    """The source cannot be cut into independent chunks safely."""


def _open(url: str) -> Any:
    if "://" in url and not url.startswith("file://"):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


def _size(url: str) -> int:
    if "://" in url and not url.startswith("file://"):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return int(fs.size(path))
    return os.path.getsize(url.removeprefix("file://"))


def _kind(url: str, given: str | None) -> str:
    if given is not None:
        return given
    name = url.lower()
    if name.endswith((".gz", ".bz2", ".xz", ".zst", ".zip")):
        return "compressed"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def plan(
    source: str | os.PathLike[str],
    memory: int | str = "256MiB",
    engine: str = "pandas",
    *,
    format: str | None = None,
    chunk_bytes: int | None = None,
    **reader_kwargs: Any,
) -> list[dict[str, Any]]:
    """Chunk specs covering ``source`` exactly once, each expected to fit in ``memory`` when read.

    ``chunk_bytes`` overrides the estimate (bytes of file per CSV chunk).
    ``reader_kwargs`` go to the engine's reader (e.g. ``sep``, ``dtype``,
    ``usecols``) in every chunk.
    """
    url = os.fspath(source)
    budget = parse_size(memory, "memory=")
    _check_engine(engine)
    try:
        json.dumps(reader_kwargs)
    except TypeError as exc:
        raise ValueError(
            f"reader options travel inside each chunk spec and must be JSON-serializable ({exc}); "
            f"write types as strings, e.g. dtype='str' or dtype={{'id': 'int64'}}"
        ) from None
    kind = _kind(url, format)
    if kind == "compressed":
        raise NotSplittable(
            f"{url} is compressed: a compressed stream cannot be cut into byte ranges that start mid-file. "
            f"Read it in one pass with oomless.data.chunks(...), or convert it once to Parquet and plan that."
        )
    if kind == "parquet":
        return _plan_parquet(url, budget, engine, reader_kwargs)
    if kind != "csv":
        raise ValueError(f"format={kind!r} is not understood; use 'csv' or 'parquet'")
    return _plan_csv(url, budget, engine, chunk_bytes, reader_kwargs)


def _check_csv_options(url: str, options: dict[str, Any]) -> tuple[bytes, str, bool]:
    for name in _ROW_OPTIONS:
        if options.get(name) not in (None, False, "infer"):
            raise NotSplittable(
                f"{name}={options[name]!r} counts rows or streams, which byte-range chunks of {url} cannot honour; "
                f"drop it (filter each chunk instead) or read the file in one pass with oomless.data.chunks(...)"
            )
    if options.get("escapechar") is not None:
        raise NotSplittable(
            f"escapechar={options['escapechar']!r}: a quote escaped with it looks like the end of a quoted field, "
            f"so record boundaries in {url} cannot be found without reading it from the start; "
            f"use oomless.data.chunks(...), or write the file with doubled quotes (RFC 4180)"
        )
    if options.get("lineterminator") not in (None, "\n"):
        raise NotSplittable(f"lineterminator={options['lineterminator']!r} is not supported for planning; only \\n")
    quote = options.get("quotechar", '"')
    header = options.get("header", "infer")
    if header not in ("infer", 0, None):
        raise NotSplittable(f"header={header!r}: only a header in the first row (0) or none (None) can be planned")
    has_header = header in ("infer", 0) and options.get("names") is None
    return quote.encode(), options.get("sep", options.get("delimiter", ",")), has_header


def _plan_csv(
    url: str, budget: int, engine: str, chunk_bytes: int | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    quote, sep, has_header = _check_csv_options(url, options)
    size = _size(url)
    with _open(url) as f:
        first = record_starts(f, [1], size, quote)[0] if has_header else 0
        columns: list[str] | None = options.get("names")
        if has_header:
            f.seek(0)
            head = f.read(first).decode(options.get("encoding") or "utf-8")
            columns = next(csv.reader(io.StringIO(head), delimiter=sep, quotechar=quote.decode()), [])
        if chunk_bytes is None:
            chunk_bytes = _csv_chunk_bytes(f, url, first, size, quote, budget, engine, columns, options)
        step = max(1, int(chunk_bytes))
        targets = list(range(first + step, size, step))
        cuts = [first, *record_starts(f, targets, size, quote), size] if targets else [first, size]
    bounds = sorted(set(cuts))
    ranges = [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    opts = {k: v for k, v in options.items() if k not in ("header", "names")}
    return [
        {"format": "csv", "url": url, "start": a, "end": b, "columns": columns, "engine": engine,
         "options": opts, "index": i, "count": len(ranges)}
        for i, (a, b) in enumerate(ranges)
    ]


def _csv_chunk_bytes(
    f: Any, url: str, first: int, size: int, quote: bytes, budget: int, engine: str,
    columns: list[str] | None, options: dict[str, Any],
) -> int:
    """Bytes of file per chunk so that parsing one stays within ``budget`` (from a parsed sample)."""
    end = record_starts(f, [min(size, first + SAMPLE)], size, quote)[0]
    if end <= first:
        return max(1, size - first)
    spec = {"format": "csv", "url": url, "start": first, "end": end, "columns": columns, "engine": engine,
            "options": {k: v for k, v in options.items() if k not in ("header", "names")}}
    frame = read(spec)
    from .chunks import chunk_bytes

    return chunk_bytes(budget, _memory_of(frame) / (end - first), engine)


def _check_engine(engine: str) -> None:
    if engine not in _ENGINES:
        raise ValueError(f"engine={engine!r} is not one of {', '.join(_ENGINES)}")


def _memory_of(frame: Any) -> int:
    """Bytes a frame holds: pandas ``memory_usage(deep=True)``, polars ``estimated_size()``, pyarrow ``nbytes``."""
    if hasattr(frame, "estimated_size"):  # polars
        return int(frame.estimated_size())
    if hasattr(frame, "memory_usage"):  # pandas
        return int(frame.memory_usage(deep=True).sum())
    return int(frame.nbytes)  # pyarrow


def _plan_parquet(url: str, budget: int, engine: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from .chunks import PARQUET_FRAMES, PARQUET_RESERVE, _usable

    share = _usable(budget, PARQUET_RESERVE) / PARQUET_FRAMES[engine]
    with _open(url) as f:
        pf = pq.ParquetFile(f)
        meta = pf.metadata
        nonempty = [i for i in range(meta.num_row_groups) if meta.row_group(i).num_rows]
        per_row = 1.0
        if nonempty:
            # Decoded bytes per row from a sample: the metadata's sizes are of encoded pages, several
            # times smaller than the arrays for dictionary-encoded strings.
            sample = next(pf.iter_batches(batch_size=1000, row_groups=nonempty[:1], **options))
            per_row = max(1.0, sample.nbytes / max(1, sample.num_rows))
    groups: list[list[int]] = []
    current: list[int] = []
    held = 0.0
    for i in range(meta.num_row_groups):
        need = meta.row_group(i).num_rows * per_row
        if need > share:
            log.warning(
                "row group %d of %s holds ~%s when read, more than a chunk's share (%s) of memory=%s; "
                "its chunk may exceed the budget (rewrite the file with smaller row groups, or stream it "
                "with oomless.data.chunks(), which splits row groups)",
                i, url, format_size(int(need)), format_size(int(share)), format_size(budget))
        if current and held + need > share:
            groups.append(current)
            current, held = [], 0.0
        current.append(i)
        held += need
    if current:
        groups.append(current)
    return [
        {"format": "parquet", "url": url, "row_groups": g, "engine": engine, "options": dict(options), "index": i,
         "count": len(groups)}
        for i, g in enumerate(groups)
    ]


def read(spec: dict[str, Any], data: bytes | None = None) -> Any:
    """Load one chunk of a plan: a pandas DataFrame, a pyarrow Table (``engine="pyarrow"``) or a polars
    DataFrame (``engine="polars"``).

    ``data``: the chunk's bytes when the caller already has them (``chunks()``).
    """
    engine = spec["engine"]
    if spec.get("format") == "parquet":
        import pyarrow.parquet as pq

        with _open(spec["url"]) as f:
            table = pq.ParquetFile(f).read_row_groups(spec["row_groups"], **spec.get("options", {}))
        return _from_arrow(table, engine)
    if spec.get("format") != "csv":
        raise ValueError(f"not a chunk spec: {spec!r}")
    if data is None:
        with _open(spec["url"]) as f:
            f.seek(spec["start"])
            data = f.read(spec["end"] - spec["start"])
    return _parse_csv(data, spec["columns"], engine, dict(spec.get("options", {})))


def _from_arrow(table: Any, engine: str) -> Any:
    if engine == "pandas":
        return table.to_pandas()
    if engine == "polars":
        import polars as pl

        # polars has no reader for chosen row groups; pyarrow reads them and polars takes the buffers.
        return pl.from_arrow(table)
    return table


def _parse_csv(data: bytes, columns: list[str] | None, engine: str, options: dict[str, Any]) -> Any:
    """Parse whole CSV records without a header row.  ``sep``/``delimiter`` and ``quotechar`` work for every
    engine; other options go as given to pandas' ``read_csv``, polars' ``read_csv`` or pyarrow's
    ``ConvertOptions``."""
    sep = options.pop("sep", options.pop("delimiter", ","))
    quote = options.pop("quotechar", '"')
    if engine == "pyarrow":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        types = options.pop("column_types", None)
        if isinstance(types, dict):  # JSON spells a type by its alias: {"id": "int64", "note": "string"}
            options["column_types"] = {k: pa.type_for_alias(v) if isinstance(v, str) else v for k, v in types.items()}
        return pacsv.read_csv(
            io.BytesIO(data),
            # One block for the whole chunk: with newlines_in_values pyarrow's search for block boundaries
            # is slow (0.48 s for 40 MiB, 0.30 s as one block; measured with pyarrow 26).
            read_options=pacsv.ReadOptions(column_names=columns, autogenerate_column_names=not columns,
                                           block_size=len(data) + 1),
            parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=quote, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(**options),
        )
    if engine == "polars":
        import polars as pl

        if str(options.get("encoding", "utf-8")).lower().replace("-", "") == "utf8":
            options.pop("encoding", None)  # polars spells it "utf8"; other encodings go through as given
        return pl.read_csv(data, has_header=False, new_columns=columns, separator=sep, quote_char=quote,
                           raise_if_empty=False, **options)
    import pandas as pd

    return pd.read_csv(io.BytesIO(data), header=None, names=columns, sep=sep, quotechar=quote, **options)
