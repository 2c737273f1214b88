"""What the data readers share about files: opening them, their kind, CSV options, parsing, a frame's memory.

* **Opening**: a local path (or ``file://``) with ``open()``, any other URL
  with fsspec; :func:`open_url` seeks, :func:`open_stream` decompresses and
  need not seek.
* **Kind**: :func:`file_kind` tells CSV, Parquet and compressed CSV apart by
  the name's suffix (or takes the caller's word).
* **CSV**: :func:`check_csv_options` refuses what byte-range chunks cannot
  honour (:class:`NotSplittable`) and says how to find records;
  :func:`parse_csv` parses whole records with pandas, pyarrow or polars.
* **Frames**: :func:`from_arrow` turns an Arrow table into the engine's
  frame; :func:`memory_of` is a frame's bytes in memory and
  :func:`decoded_bytes_per_row` a Parquet file's decoded bytes per row.

Not here: where a CSV record starts (:mod:`oomless.data.csvsplit`), how many
bytes a chunk may hold for a budget (:mod:`oomless.data.sizing`), and how a
file is cut (:mod:`oomless.data.chunks` streams it, :mod:`oomless.data.plan`
cuts it into specs).  pandas, pyarrow, polars and fsspec are imported only
when used (the ``data`` extra).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, NamedTuple

__all__ = [
    "ENGINES",
    "NotSplittable",
    "CsvDialect",
    "check_engine",
    "open_url",
    "open_stream",
    "url_size",
    "file_kind",
    "check_csv_options",
    "parser_options",
    "header_columns",
    "parse_csv",
    "from_arrow",
    "memory_of",
    "decoded_bytes_per_row",
    "sample_bytes_per_row",
]

#: The engines a chunk can be read with: what each returns is a pandas DataFrame, a pyarrow Table or a
#: polars DataFrame.
ENGINES = ("pandas", "pyarrow", "polars")

# Reader options that count rows or stream (and compression, which forbids seeking): byte ranges cannot honour them.
_ROW_OPTIONS = ("skiprows", "nrows", "skipfooter", "chunksize", "iterator", "compression")

# Options the planner consumes itself (the header is read once), never passed on to a chunk's parser.
_HEADER_OPTIONS = ("header", "names")


class NotSplittable(ValueError):
    """The source cannot be cut into independent chunks safely."""


class CsvDialect(NamedTuple):
    """How to find a CSV file's records: its quote byte, its separator, and whether it starts with a header row."""

    quote: bytes
    sep: str
    has_header: bool


def check_engine(engine: str) -> None:
    """Refuse an engine name that is not one of :data:`ENGINES` (``ValueError``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not one of {', '.join(ENGINES)}")


def _local_path(url: str) -> str | None:
    """The path of a local file (a plain path or ``file://``), or ``None`` for a URL fsspec must open."""
    if "://" in url and not url.startswith("file://"):
        return None
    return url.removeprefix("file://")


def open_url(url: str) -> Any:
    """A seekable binary file for ``url``: ``open()`` for a local path, fsspec for any other URL."""
    path = _local_path(url)
    if path is None:
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(path, "rb")


def open_stream(url: str, compression: str | None = "infer") -> Any:
    """A binary stream of ``url``'s bytes, decompressed (by the name's suffix with ``"infer"``); it need not seek."""
    import fsspec

    return fsspec.open(url, "rb", compression=compression).open()


def url_size(url: str) -> int:
    """The length of ``url``'s file in bytes."""
    path = _local_path(url)
    if path is None:
        import fsspec

        fs, remote = fsspec.core.url_to_fs(url)
        return int(fs.size(remote))
    return os.path.getsize(path)


def file_kind(url: str, given: str | None) -> str:
    """``given`` if the caller named a format, else ``"compressed"``, ``"parquet"`` or ``"csv"`` by the suffix."""
    if given is not None:
        return given
    name = url.lower()
    if name.endswith((".gz", ".bz2", ".xz", ".zst", ".zip")):
        return "compressed"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def check_csv_options(url: str, options: dict[str, Any]) -> CsvDialect:
    """The dialect of a CSV read with ``options``; :class:`NotSplittable` for an option that chunks of
    ``url`` cannot honour (row counts, ``escapechar``, a ``lineterminator`` other than ``\\n``, a header
    row other than the first)."""
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
    return CsvDialect(quote.encode(), options.get("sep", options.get("delimiter", ",")), has_header)


def parser_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without ``header`` and ``names``: what each chunk's parser gets (the header is read once)."""
    return {k: v for k, v in options.items() if k not in _HEADER_OPTIONS}


def header_columns(head: bytes, dialect: CsvDialect, encoding: str | None) -> list[str]:
    """The column names in ``head``, a CSV file's header record."""
    text = head.decode(encoding or "utf-8")
    return next(csv.reader(io.StringIO(text), delimiter=dialect.sep, quotechar=dialect.quote.decode()), [])


def parse_csv(data: bytes, columns: list[str] | None, engine: str, options: dict[str, Any]) -> Any:
    """Parse whole CSV records without a header row.  ``sep``/``delimiter`` and ``quotechar`` work for every
    engine; other options go as given to pandas' ``read_csv``, polars' ``read_csv`` or pyarrow's
    ``ConvertOptions``.  ``options`` is consumed (pass a copy)."""
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


def from_arrow(table: Any, engine: str) -> Any:
    """``table`` (a pyarrow Table) as the engine's frame: a pandas or polars DataFrame, or the table itself."""
    if engine == "pandas":
        return table.to_pandas()
    if engine == "polars":
        import polars as pl

        # polars has no reader for chosen row groups; pyarrow reads them and polars takes the buffers.
        return pl.from_arrow(table)
    return table


def memory_of(frame: Any) -> int:
    """Bytes a frame holds: pandas ``memory_usage(deep=True)``, polars ``estimated_size()``, pyarrow ``nbytes``."""
    if hasattr(frame, "estimated_size"):  # polars
        return int(frame.estimated_size())
    if hasattr(frame, "memory_usage"):  # pandas
        return int(frame.memory_usage(deep=True).sum())
    return int(frame.nbytes)  # pyarrow


def decoded_bytes_per_row(batch: Any) -> float:
    """Bytes of Arrow data per row of ``batch`` (a pyarrow RecordBatch), at least 1."""
    return max(1.0, batch.nbytes / max(1, batch.num_rows))


def sample_bytes_per_row(parquet: Any, row_group: int, options: dict[str, Any]) -> float:
    """Decoded bytes per row from the first 1,000 rows of ``row_group`` of ``parquet`` (a pyarrow ParquetFile).

    The metadata's sizes are of encoded pages, several times smaller than the decoded arrays for
    dictionary-encoded strings (4× in bench/RESULTS.md), so a sample is decoded instead.
    """
    return decoded_bytes_per_row(next(parquet.iter_batches(batch_size=1000, row_groups=[row_group], **options)))
