"""Shrink the work: chunk plans sized by a memory budget.

``chunks(source, memory=...)`` streams a file as frames that each fit the
budget; ``plan(source, memory=...)`` cuts a CSV or Parquet file into JSON-serializable
chunk specs that cover it exactly once; ``read(spec)`` loads one.  Needs the
``data`` extra (pandas, pyarrow, fsspec).
"""

from .chunks import chunks
from .plan import NotSplittable, plan, read

__all__ = ["chunks", "plan", "read", "NotSplittable"]
