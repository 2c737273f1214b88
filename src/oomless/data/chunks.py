"""``chunks()``: read a file in one pass as frames that each fit a memory budget.

For when the work is one process's loop rather than a fan-out (``plan()``):
the file is streamed, never seeked, so compressed CSV works too.  The first
chunk is small (``FIRST`` bytes of file, or less for a small budget); each
chunk's real size in memory is measured and the next chunk's byte count is
set from it: ``budget / (1 + 2 × expansion)``, the same rule as ``plan()``
(raw bytes + result + parser buffers).  So the estimate corrects itself as
the data changes along the file.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterator
from typing import Any

from ..units import parse_size
from .csvsplit import RecordReader
from .plan import _check_csv_options, _check_engine, _kind, _memory_of, _parse_csv, _plan_parquet, read

__all__ = ["chunks", "FIRST"]

FIRST = 1 << 20


def _stream(url: str) -> Any:
    import fsspec

    return fsspec.open(url, "rb", compression="infer").open()


def chunks(
    source: str | os.PathLike[str], memory: int | str = "256MiB", engine: str = "pandas", **reader_kwargs: Any
) -> Iterator[Any]:
    """Frames (pandas, polars) or Tables (pyarrow) of ``source`` in order, each sized to stay within ``memory``.

    CSV (plain or compressed: .gz, .bz2, .xz, .zst) and Parquet; local paths or fsspec URLs.
    """
    url = os.fspath(source)
    budget = parse_size(memory, "memory=")
    _check_engine(engine)
    kind = _kind(url, reader_kwargs.pop("format", None))
    if kind == "parquet":
        for spec in _plan_parquet(url, budget, engine, reader_kwargs):
            yield read(spec)
        return
    quote, sep, has_header = _check_csv_options(url, {k: v for k, v in reader_kwargs.items() if k != "compression"})
    options = {k: v for k, v in reader_kwargs.items() if k not in ("header", "names")}
    with _stream(url) as stream:
        reader = RecordReader(stream, quote)
        columns: list[str] | None = reader_kwargs.get("names")
        if has_header:
            head = reader.take(1).decode(options.get("encoding") or "utf-8")
            columns = next(csv.reader(io.StringIO(head), delimiter=sep, quotechar=quote.decode()), [])
        step = max(4096, min(FIRST, budget // 8))
        while True:
            data = reader.take(step)
            if not data:
                return
            frame = _parse_csv(data, columns, engine, dict(options))
            expansion = max(_memory_of(frame) / len(data), 0.1)
            step = max(4096, math.floor(budget / (1 + 2 * expansion)))
            yield frame
