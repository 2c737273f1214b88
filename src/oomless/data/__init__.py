"""Shrink the work: chunk plans sized by a memory budget, and a claim-check store.

``chunks(source, memory=...)`` streams a file as frames that each fit the
budget; ``plan(source, memory=...)`` cuts a CSV or Parquet file into JSON-serializable
chunk specs that cover it exactly once; ``read(spec)`` loads one.  Needs the
``data`` extra (pandas, pyarrow, polars, fsspec).  :class:`ClaimStore` keeps large
values that Celery messages carry by reference (see :mod:`oomless.celery.offload`).
"""

from .chunks import chunks
from .claim import ClaimStore
from .plan import NotSplittable, plan, read

__all__ = ["chunks", "plan", "read", "NotSplittable", "ClaimStore"]
