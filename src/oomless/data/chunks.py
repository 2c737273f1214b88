"""``chunks()``: read a file in one pass as frames that each fit a memory budget.

For when the work is one process's loop rather than a fan-out (``plan()``):
the file is streamed, never seeked, so compressed CSV works too.  The first
chunk is small (``FIRST`` bytes of file, or less for a small budget; 1,000
rows with pandas); each chunk's real size in memory is measured and the next
chunk is sized from it, so the estimate corrects itself as the data changes
along the file.

The budget bounds the process's *peak* above what it used before (its
baseline), not only the frame: the caller's previous frame, the chunk's raw
bytes and the parser's buffers are alive while the next chunk is parsed.
How many bytes of file that leaves a chunk, per engine and as measured, is
:mod:`oomless.data.sizing`'s (``chunk_bytes``, ``parquet_share``); opening,
parsing and measuring frames is :mod:`oomless.data.formats`'.

How the bytes are cut, for speed (the target: within 1.2 × a whole-file
``pandas.read_csv``).  pandas streams with its own reader
(``read_csv(iterator=True).get_chunk(rows)``), the rows per chunk set from
the byte rule and the bytes per row the stream's position shows: pandas
finds record ends while it tokenizes, and the raw-bytes term drops.
pyarrow and polars get whole records cut by
:class:`oomless.data.csvsplit.RecordReader` (quotes counted once per byte,
one copy), and pyarrow parses a chunk as one block (its block-boundary
search with ``newlines_in_values`` cost half again the parse).

Parquet is streamed with pyarrow's ``ParquetFile.iter_batches``, one reader
per row group and one record batch per chunk (row groups may be larger than
a budget), pages read through a 1 MiB buffer.  A chunk holds
``sizing.parquet_share`` bytes of Arrow data, sized from a decoded sample
(the metadata's sizes are of encoded pages: 4× too small for
dictionary-encoded strings) and then from each batch.  The reader costs
~40–55 MiB whatever the chunk (mostly what pyarrow's mimalloc pool keeps per
thread; ``release_unused()`` after each chunk takes back part of it).
Gathering several batches of one reader into a chunk made RSS grow chunk
after chunk, far past the live data, with every pyarrow pool: it is not
done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

from ..units import parse_size
from .csvsplit import RecordReader
from .formats import (
    check_csv_options,
    check_engine,
    decoded_bytes_per_row,
    file_kind,
    from_arrow,
    header_columns,
    memory_of,
    open_stream,
    open_url,
    parse_csv,
    parser_options,
    sample_bytes_per_row,
)
from .sizing import PARQUET_RESERVE, PEAK_FACTORS, chunk_bytes, parquet_share, warn_if_small

__all__ = ["chunks", "FIRST"]

FIRST = 1 << 20


def _release_arrow_memory() -> None:
    """Hand the memory pyarrow's pool keeps for reuse back to the system (once per chunk).

    pyarrow's default pool (mimalloc in pyarrow 26) keeps freed pages per thread: reading Parquet with
    memory="32MiB" peaked ~25 MiB higher with it than with jemalloc or the system allocator; releasing
    after each chunk took back about half of that.
    """
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()


def chunks(
    source: str | os.PathLike[str], memory: int | str = "256MiB", engine: str = "pandas", **reader_kwargs: Any
) -> Iterator[Any]:
    """Frames of ``source`` in order (pandas or polars DataFrames, or pyarrow Tables), sized so that the
    process's peak while reading stays within ``memory`` above what it used before.

    CSV (plain or compressed: .gz, .bz2, .xz; .zst with the zstandard package) and Parquet; local paths or fsspec URLs.
    """
    url = os.fspath(source)
    budget = parse_size(memory, "memory=")
    check_engine(engine)
    kind = file_kind(url, reader_kwargs.pop("format", None))
    if kind == "parquet":
        yield from _parquet(url, budget, engine, reader_kwargs)
        return
    # The stream is decompressed here (by the name's suffix, or as told), so no parser sees compression=.
    compression = reader_kwargs.pop("compression", "infer")
    dialect = check_csv_options(url, reader_kwargs)
    options = parser_options(reader_kwargs)
    warn_if_small(budget, PEAK_FACTORS[engine][0], engine, "CSV")
    with open_stream(url, compression) as stream:
        if engine == "pandas":
            yield from _pandas_csv(stream, budget, reader_kwargs)
            return
        reader = RecordReader(stream, dialect.quote)
        columns: list[str] | None = reader_kwargs.get("names")
        if dialect.has_header:
            columns = header_columns(reader.take(1), dialect, options.get("encoding"))
        step = min(FIRST, chunk_bytes(budget, 1.0, engine))
        while True:
            data = reader.take(step)
            if not data:
                return
            frame = parse_csv(data, columns, engine, dict(options))
            step = chunk_bytes(budget, memory_of(frame) / len(data), engine)
            del data  # not alive while the caller works on the frame
            _release_arrow_memory()
            yield frame
            del frame  # the caller may hold it; this generator need not while it parses the next


def _pandas_csv(stream: Any, budget: int, options: dict[str, Any]) -> Iterator[Any]:
    """pandas' own streaming reader, asked for as many rows as fit the budget at the last chunk's measured
    bytes of file and of frame per row (the stream's position tells the bytes of file read).

    Cutting the bytes ourselves cost a third more time than pandas' whole-file read (counting quotes,
    joining blocks); pandas' reader finds record ends while it tokenizes, for free.
    """
    import pandas as pd

    reader = pd.read_csv(stream, iterator=True, **options)
    rows = 1000
    start = stream.tell()
    with reader:
        while True:
            try:
                frame = reader.get_chunk(rows)
            except StopIteration:
                return
            read = max(1, stream.tell() - start)  # pandas reads ahead by at most 256 KiB: close enough
            start = stream.tell()
            per_row = max(1.0, read / max(1, len(frame)))
            rows = max(1, int(chunk_bytes(budget, memory_of(frame) / read, "pandas") / per_row))
            _release_arrow_memory()
            yield frame
            del frame


def _parquet(url: str, budget: int, engine: str, options: dict[str, Any]) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    warn_if_small(budget, PARQUET_RESERVE, engine, "Parquet")
    share = parquet_share(budget, engine)
    with open_url(url) as f:
        # Pages are read through a 1 MiB buffer, not a whole row group's column chunks at once.
        pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
        groups = [i for i in range(pf.metadata.num_row_groups) if pf.metadata.row_group(i).num_rows]
        if not groups:
            return
        per_row = sample_bytes_per_row(pf, groups[0], options)
        for group in groups:
            # One reader per row group, one batch per chunk: holding batches of one reader while it reads
            # on made RSS grow chunk after chunk (pyarrow 26, any memory pool), far past the live data.
            rows = max(1, int(share / per_row))
            for batch in pf.iter_batches(batch_size=rows, row_groups=[group], **options):
                per_row = decoded_bytes_per_row(batch)
                out = from_arrow(pa.Table.from_batches([batch]), engine)
                del batch
                _release_arrow_memory()
                yield out
                del out
