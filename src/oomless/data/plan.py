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
file that :func:`oomless.data.sizing.chunk_bytes` gives for the budget,
a rule measured against real process peaks (see :mod:`oomless.data.sizing`;
it also counts a previous frame, which a task reading one spec does not
hold, so a plan's chunks are on the safe side).  Parquet row groups are
grouped by their decoded size (from a decoded sample) up to the same share
of the budget as ``chunks()`` uses (:func:`oomless.data.sizing.parquet_share`);
a row group larger than that cannot be split by a plan and is logged.

Refused, with a message that says why and what to do instead (never wrong
chunks): compressed CSV (no seeking: stream it with ``chunks()`` or convert
it to Parquet), ``escapechar`` (a backslash-escaped quote breaks the quote
parity), a ``lineterminator`` other than ``\\n``, ``skiprows``/``nrows``/
``skipfooter``/``chunksize``/``iterator`` (they count rows, which byte ranges
cannot), and a ``header`` row other than the first
(:func:`oomless.data.formats.check_csv_options`).

Opening files, parsing CSV bytes and converting Arrow tables is
:mod:`oomless.data.formats`'; finding record boundaries is
:mod:`oomless.data.csvsplit`'s.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..units import format_size, parse_size
from . import sizing  # as a module: plan() takes a chunk_bytes= argument, sizing.chunk_bytes is the rule
from .csvsplit import record_starts
from .formats import (
    NotSplittable,
    check_csv_options,
    check_engine,
    file_kind,
    from_arrow,
    header_columns,
    memory_of,
    open_url,
    parse_csv,
    parser_options,
    sample_bytes_per_row,
    url_size,
)

__all__ = ["plan", "read", "NotSplittable", "SAMPLE"]

log = logging.getLogger(__name__)

SAMPLE = 4 << 20


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
    check_engine(engine)
    try:
        json.dumps(reader_kwargs)
    except TypeError as exc:
        raise ValueError(
            f"reader options travel inside each chunk spec and must be JSON-serializable ({exc}); "
            f"write types as strings, e.g. dtype='str' or dtype={{'id': 'int64'}}"
        ) from None
    kind = file_kind(url, format)
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


def _plan_csv(
    url: str, budget: int, engine: str, chunk_bytes: int | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    dialect = check_csv_options(url, options)
    quote = dialect.quote
    size = url_size(url)
    with open_url(url) as f:
        first = record_starts(f, [1], size, quote)[0] if dialect.has_header else 0
        columns: list[str] | None = options.get("names")
        if dialect.has_header:
            f.seek(0)
            columns = header_columns(f.read(first), dialect, options.get("encoding"))
        if chunk_bytes is None:
            chunk_bytes = _csv_chunk_bytes(f, url, first, size, quote, budget, engine, columns, options)
        step = max(1, int(chunk_bytes))
        targets = list(range(first + step, size, step))
        cuts = [first, *record_starts(f, targets, size, quote), size] if targets else [first, size]
    bounds = sorted(set(cuts))
    ranges = [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    opts = parser_options(options)
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
            "options": parser_options(options)}
    frame = read(spec)
    return sizing.chunk_bytes(budget, memory_of(frame) / (end - first), engine)


def _plan_parquet(url: str, budget: int, engine: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    share = sizing.parquet_share(budget, engine)
    with open_url(url) as f:
        pf = pq.ParquetFile(f)
        meta = pf.metadata
        nonempty = [i for i in range(meta.num_row_groups) if meta.row_group(i).num_rows]
        per_row = sample_bytes_per_row(pf, nonempty[0], options) if nonempty else 1.0
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

        with open_url(spec["url"]) as f:
            table = pq.ParquetFile(f).read_row_groups(spec["row_groups"], **spec.get("options", {}))
        return from_arrow(table, engine)
    if spec.get("format") != "csv":
        raise ValueError(f"not a chunk spec: {spec!r}")
    if data is None:
        with open_url(spec["url"]) as f:
            f.seek(spec["start"])
            data = f.read(spec["end"] - spec["start"])
    return parse_csv(data, spec["columns"], engine, dict(spec.get("options", {})))
