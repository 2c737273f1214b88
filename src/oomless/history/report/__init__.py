"""The memory report: one self-contained HTML file drawn from the history store.

:func:`build_report` reads a :class:`~oomless.history.store.Store` and writes
one HTML page that opens with no network (plotly.js is inlined once), with:

1. **Memory over time per worker, tasks stacked.**  For every bucket of time,
   the sum of the peaks of the attempts that were running in it, stacked by
   task name (the 12 names with the most byte-seconds on that worker; the
   rest as "other").  The history holds one peak per attempt, not a series of
   samples: an attempt counts with its whole peak in every bucket it ran in,
   so a chart is an upper bound of what was in use, never a measured curve.
   An attempt without a measured peak counts with its request.
2. **Requested vs peak per task name**: mean request, p95 and max of the
   measured peaks (``ok`` and ``failed`` attempts), and the waste: the mean of
   request − peak.
3. **Kills, evictions and refusals on the timeline**, per worker (the newest
   5,000; the page says how many more there were).
4. **Recommendations**: :func:`oomless.history.recommend.recommend_all`.

Scale: the store is never loaded; what is kept is bounded by workers × task
names × buckets, never by the number of attempts (see :mod:`.aggregate`).

The modules, one concern each: :mod:`.build` (read the store, write the
file), :mod:`.aggregate` (rows into plain numbers), :mod:`.charts` (numbers
into plotly figures), :mod:`.page` (the HTML around them), :mod:`.text`
(times as the page writes them).

What is not here: how recommendations are computed (:mod:`oomless.history.recommend`),
the ``oomless report`` command and its options (:mod:`oomless.cli.report`).
"""

from __future__ import annotations

from .aggregate import MAX_BUCKETS, MAX_MARKERS, TooManyBuckets
from .build import ReportSummary, build_report

__all__ = ["build_report", "ReportSummary", "TooManyBuckets", "MAX_BUCKETS", "MAX_MARKERS"]
