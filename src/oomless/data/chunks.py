"""``chunks()``: read a file in one pass as frames that each fit a memory budget.

For when the work is one process's loop rather than a fan-out (``plan()``):
the file is streamed, never seeked, so compressed CSV works too.  The first
chunk is small (``FIRST`` bytes of file, or less for a small budget; 1,000
rows with pandas); each
chunk's real size in memory is measured and the next chunk is sized from it,
so the estimate corrects itself as the data changes along the file.

The budget bounds the process's *peak* above what it used before (its
baseline), not only the frame: while the next chunk is parsed the caller's
loop variable still holds the previous frame, the chunk's raw bytes are
alive, and the parser has its own buffers.  A CSV chunk gets
``(budget − RESERVE) / (RAW + FRAMES × expansion)`` bytes of file
(``expansion``: bytes of frame per byte of file, measured on the last
chunk), with the three numbers per engine in ``PEAK_FACTORS``.  They were
measured, not guessed: peak RSS (VmHWM) of a fresh interpreter iterating a
2.2 GiB CSV (expansion ≈ 1) with memory="256MiB", minus the same process
reading a tiny file (bench/chunking.py, bench/RESULTS.md, issue 7), and a
~250 MiB file at 8, 32, 64 and 128 MiB (tests/data/test_peak.py).  The
first rule, ``budget / (1 + 2 × expansion)``, peaked at 1.7–2.1 × the
budget; what it missed, per chunk: the caller's previous frame; the raw
bytes copied twice when cut from the read buffer (now once) and a full
8 MiB read block on top of small chunks (now reads stop at what the chunk
needs); pandas' C tokenizer (a copy of the bytes plus a pointer per field),
pyarrow's parsed blocks and polars' parse buffers (about one frame each);
the allocators keeping freed chunks; and fixed costs of each parser's
threads (~20 MiB for pyarrow, a few MiB for pandas and polars), hence
``RESERVE``.  Budgets near ``RESERVE`` cannot be honoured (a warning says
so).

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
``(budget − PARQUET_RESERVE) / PARQUET_FRAMES`` bytes of Arrow data, sized
from a decoded sample (the metadata's sizes are of encoded pages: 4× too
small for dictionary-encoded strings) and then from each batch.  The reader
costs ~40–55 MiB whatever the chunk (mostly what pyarrow's mimalloc pool
keeps per thread; ``release_unused()`` after each chunk takes back part of
it).  Gathering several batches of one reader into a chunk made RSS grow
chunk after chunk, far past the live data, with every pyarrow pool: it is
not done.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

from ..units import format_size, parse_size
from .csvsplit import RecordReader
from .plan import _check_csv_options, _check_engine, _from_arrow, _kind, _memory_of, _open, _parse_csv

__all__ = ["chunks", "chunk_bytes", "FIRST", "PEAK_FACTORS", "PARQUET_FRAMES", "PARQUET_RESERVE"]

log = logging.getLogger("oomless.data")

FIRST = 1 << 20

#: engine -> (RESERVE, RAW, FRAMES): reading a CSV chunk of B bytes with expansion e peaks at about
#: RESERVE + B × (RAW + FRAMES × e) above the baseline.  RESERVE: the parser's fixed costs (threads' buffers).
PEAK_FACTORS = {"pandas": (8 << 20, 2.0, 4.0), "pyarrow": (24 << 20, 5.0, 7.0), "polars": (8 << 20, 3.0, 6.0)}

#: engine -> a Parquet chunk of A bytes of Arrow data peaks at about A × this (the batch, the converted
#: frame, the caller's previous frame, the decoded pages and what the memory pool keeps of them).
PARQUET_FRAMES = {"pandas": 6.0, "pyarrow": 6.0, "polars": 6.0}

#: What reading Parquet costs whatever the chunk (the reader, its threads, the pages it decodes).
PARQUET_RESERVE = 64 << 20


def _stream(url: str, compression: str | None = "infer") -> Any:
    import fsspec

    return fsspec.open(url, "rb", compression=compression).open()


def _release_arrow_memory() -> None:
    """Hand the memory pyarrow's pool keeps for reuse back to the system (once per chunk).

    pyarrow's default pool (mimalloc in pyarrow 26) keeps freed pages per thread: reading Parquet with
    memory="32MiB" peaked ~25 MiB higher with it than with jemalloc or the system allocator; releasing
    after each chunk took back about half of that.
    """
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()


def chunk_bytes(budget: int, expansion: float, engine: str) -> int:
    """Bytes of CSV per chunk so that the process's peak while parsing it stays within ``budget``."""
    reserve, raw, frames = PEAK_FACTORS[engine]
    return max(4096, math.floor(_usable(budget, reserve) / (raw + frames * max(expansion, 0.1))))


def _usable(budget: int, reserve: int) -> int:
    """The budget left for chunks once the reader's fixed costs are set aside (an eighth at least)."""
    return max(budget - reserve, budget // 8)


def _warn_if_small(budget: int, reserve: int, engine: str, kind: str) -> None:
    if budget - reserve < budget // 8:
        log.warning(
            "memory=%s is close to what reading %s with %s costs whatever the chunk (~%s): the peak may "
            "exceed the budget; give chunks() at least %s",
            format_size(budget), kind, engine, format_size(reserve), format_size(2 * reserve))


def chunks(
    source: str | os.PathLike[str], memory: int | str = "256MiB", engine: str = "pandas", **reader_kwargs: Any
) -> Iterator[Any]:
    """Frames of ``source`` in order (pandas or polars DataFrames, or pyarrow Tables), sized so that the
    process's peak while reading stays within ``memory`` above what it used before.

    CSV (plain or compressed: .gz, .bz2, .xz; .zst with the zstandard package) and Parquet; local paths or fsspec URLs.
    """
    url = os.fspath(source)
    budget = parse_size(memory, "memory=")
    _check_engine(engine)
    kind = _kind(url, reader_kwargs.pop("format", None))
    if kind == "parquet":
        yield from _parquet(url, budget, engine, reader_kwargs)
        return
    # The stream is decompressed here (by the name's suffix, or as told), so no parser sees compression=.
    compression = reader_kwargs.pop("compression", "infer")
    quote, sep, has_header = _check_csv_options(url, reader_kwargs)
    options = {k: v for k, v in reader_kwargs.items() if k not in ("header", "names")}
    _warn_if_small(budget, PEAK_FACTORS[engine][0], engine, "CSV")
    with _stream(url, compression) as stream:
        if engine == "pandas":
            yield from _pandas_csv(stream, budget, reader_kwargs)
            return
        reader = RecordReader(stream, quote)
        columns: list[str] | None = reader_kwargs.get("names")
        if has_header:
            head = reader.take(1).decode(options.get("encoding") or "utf-8")
            columns = next(csv.reader(io.StringIO(head), delimiter=sep, quotechar=quote.decode()), [])
        step = min(FIRST, chunk_bytes(budget, 1.0, engine))
        while True:
            data = reader.take(step)
            if not data:
                return
            frame = _parse_csv(data, columns, engine, dict(options))
            step = chunk_bytes(budget, _memory_of(frame) / len(data), engine)
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
            rows = max(1, int(chunk_bytes(budget, _memory_of(frame) / read, "pandas") / per_row))
            _release_arrow_memory()
            yield frame
            del frame


def _parquet(url: str, budget: int, engine: str, options: dict[str, Any]) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _warn_if_small(budget, PARQUET_RESERVE, engine, "Parquet")
    share = _usable(budget, PARQUET_RESERVE) / PARQUET_FRAMES[engine]
    with _open(url) as f:
        # Pages are read through a 1 MiB buffer, not a whole row group's column chunks at once.
        pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
        groups = [i for i in range(pf.metadata.num_row_groups) if pf.metadata.row_group(i).num_rows]
        if not groups:
            return
        # Bytes per row from a small decoded sample: the metadata's sizes are of encoded pages, which
        # for dictionary-encoded strings are several times smaller than the decoded arrays.
        sample = next(pf.iter_batches(batch_size=1000, row_groups=groups[:1], **options))
        per_row = max(1.0, sample.nbytes / max(1, sample.num_rows))
        del sample
        for group in groups:
            # One reader per row group, one batch per chunk: holding batches of one reader while it reads
            # on made RSS grow chunk after chunk (pyarrow 26, any memory pool), far past the live data.
            rows = max(1, int(share / per_row))
            for batch in pf.iter_batches(batch_size=rows, row_groups=[group], **options):
                per_row = max(1.0, batch.nbytes / max(1, batch.num_rows))
                out = _from_arrow(pa.Table.from_batches([batch]), engine)
                del batch
                _release_arrow_memory()
                yield out
                del out
