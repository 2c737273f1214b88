"""Build the report: read the store, count, draw, and write the page whole.

:func:`build_report` is the one entry point: one query finds the period (so the time buckets are
fixed before any row is read), one streamed pass over :meth:`Store.timeline` fills the figures
(:func:`.aggregate.aggregate`), :func:`~oomless.history.recommend.recommend_all` makes its own
pass over :meth:`Store.samples`, and the page is written to a temporary file and renamed
(:func:`oomless.paths.write_atomic`).

Not here: what is counted and how (:mod:`.aggregate`), the figures (:mod:`.charts`), the page
(:mod:`.page`), the ``oomless report`` command (:mod:`oomless.cli.report`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...paths import write_atomic
from ...urls import redact
from ..recommend import recommend_all
from .aggregate import aggregate, choose_grid
from .page import Page, empty_page, report_page

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["build_report", "ReportSummary", "Progress"]

#: ``progress(rows read, rows to read)``
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`build_report` wrote."""

    path: str
    size: int  # bytes of the HTML file
    store: str  # the store's URL, password hidden
    attempts: int
    outcomes: dict[str, int]
    first: float | None  # earliest start (seconds since the epoch); None: no attempts
    last: float | None  # latest end
    workers: int
    task_names: int
    figures: int  # plotly figures on the page
    bucket: float | None  # seconds per bucket of the memory charts
    markers: int  # kills, evictions and refusals drawn
    markers_left_out: int  # beyond MAX_MARKERS
    recommendations: int


def build_report(store: Store, out_path: str | os.PathLike[str], since: float | None = None,
                 progress: Progress | None = None, bucket: float | None = None) -> ReportSummary:
    """Write the HTML report of ``store`` (attempts started at or after ``since``) to ``out_path``.

    ``progress(done, total)`` is called every 10,000 rows read; ``total`` is
    twice the number of attempts (the store is read twice).
    ``bucket`` is the width of a memory chart's time bucket in seconds
    (default: a round width that gives at most 600 buckets); raises
    :class:`~.aggregate.TooManyBuckets` when it would give more than
    :data:`~.aggregate.MAX_BUCKETS`.
    The file is written whole or not at all (a temporary file, then renamed).
    """
    url = redact(store.url)
    generated = time.time()
    # version 0: an empty database; counting would create the tables, and a report never writes
    count, first, last = store.span(since) if store.version() else (0, None, None)
    total = 2 * count

    def tick_at(offset: int) -> Callable[[int], None]:
        if progress is None:
            return lambda _: None
        return lambda done: progress(offset + done, total)

    if first is None or last is None:
        return _write(out_path, empty_page(url, generated, since), url, first=None, last=None, outcomes={},
                      workers=0, task_names=0, bucket=None, markers=0, markers_left_out=0, recommendations=0)
    grid = choose_grid(first, last, bucket)
    data = aggregate(store.timeline(since), grid, tick_at(0))
    # The same rows and numbers as `oomless recommend` (a read of its own: it needs them oldest first).
    recs = recommend_all(store.samples(since=since), progress=tick_at(count))
    page = report_page(data, recs, url, generated, first, last, since)
    return _write(out_path, page, url, first=first, last=last, outcomes=data.outcomes, workers=data.workers,
                  task_names=data.task_names, bucket=grid.width, markers=len(data.marks),
                  markers_left_out=data.marks_left_out, recommendations=len(recs))


def _write(out_path: str | os.PathLike[str], page: Page, url: str, *, first: float | None, last: float | None,
           outcomes: dict[str, int], workers: int, task_names: int, bucket: float | None, markers: int,
           markers_left_out: int, recommendations: int) -> ReportSummary:
    path = os.path.abspath(os.fspath(out_path))
    write_atomic(path, page.html(), mode=0o644)  # readable by whoever serves or opens it, like any page
    return ReportSummary(
        path=path, size=os.path.getsize(path), store=url, attempts=sum(outcomes.values()), outcomes=dict(outcomes),
        first=first, last=last, workers=workers, task_names=task_names, figures=page.figures, bucket=bucket,
        markers=markers, markers_left_out=markers_left_out, recommendations=recommendations,
    )
