"""The memory model of reading in chunks: how many bytes a chunk may hold so that the peak fits a budget.

Covers each engine's measured peak factors, the budget left once a reader's
fixed costs are set aside, a CSV chunk's bytes of file
(:func:`chunk_bytes`), a Parquet chunk's bytes of Arrow data
(:func:`parquet_share`) and the warning for a budget too small to honour.  It
reads no file and measures no frame (:mod:`oomless.data.formats` does:
``memory_of``), and it does not cut files (:mod:`oomless.data.chunks` streams
one, :mod:`oomless.data.plan` cuts one into specs); both size their chunks
here.

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

A Parquet chunk holds ``(budget − PARQUET_RESERVE) / PARQUET_FRAMES`` bytes
of Arrow data.  The reader costs ~40–55 MiB whatever the chunk (mostly what
pyarrow's mimalloc pool keeps per thread), hence ``PARQUET_RESERVE``.
"""

from __future__ import annotations

import logging
import math

from ..units import format_size

__all__ = ["PEAK_FACTORS", "PARQUET_FRAMES", "PARQUET_RESERVE", "chunk_bytes", "parquet_share", "usable",
           "warn_if_small"]

log = logging.getLogger(__name__)

#: engine -> (RESERVE, RAW, FRAMES): reading a CSV chunk of B bytes with expansion e peaks at about
#: RESERVE + B × (RAW + FRAMES × e) above the baseline.  RESERVE: the parser's fixed costs (threads' buffers).
PEAK_FACTORS = {"pandas": (8 << 20, 2.0, 4.0), "pyarrow": (24 << 20, 5.0, 7.0), "polars": (8 << 20, 3.0, 6.0)}

#: engine -> a Parquet chunk of A bytes of Arrow data peaks at about A × this (the batch, the converted
#: frame, the caller's previous frame, the decoded pages and what the memory pool keeps of them).
PARQUET_FRAMES = {"pandas": 6.0, "pyarrow": 6.0, "polars": 6.0}

#: What reading Parquet costs whatever the chunk (the reader, its threads, the pages it decodes).
PARQUET_RESERVE = 64 << 20


def chunk_bytes(budget: int, expansion: float, engine: str) -> int:
    """Bytes of CSV per chunk so that the process's peak while parsing it stays within ``budget``."""
    reserve, raw, frames = PEAK_FACTORS[engine]
    return max(4096, math.floor(usable(budget, reserve) / (raw + frames * max(expansion, 0.1))))


def parquet_share(budget: int, engine: str) -> float:
    """Bytes of Arrow data per Parquet chunk so that the process's peak while reading it stays within ``budget``."""
    return usable(budget, PARQUET_RESERVE) / PARQUET_FRAMES[engine]


def usable(budget: int, reserve: int) -> int:
    """The budget left for chunks once the reader's fixed costs are set aside (an eighth at least)."""
    return max(budget - reserve, budget // 8)


def warn_if_small(budget: int, reserve: int, engine: str, kind: str) -> None:
    """Log a warning when ``reserve`` (a reader's fixed costs) leaves less than an eighth of ``budget``:
    the peak may then exceed the budget whatever the chunk."""
    if budget - reserve < budget // 8:
        log.warning(
            "memory=%s is close to what reading %s with %s costs whatever the chunk (~%s): the peak may "
            "exceed the budget; give chunks() at least %s",
            format_size(budget), kind, engine, format_size(reserve), format_size(2 * reserve))
