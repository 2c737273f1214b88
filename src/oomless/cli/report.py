"""``oomless report``: the memory history as one HTML file that opens anywhere, offline.

Reads the history store a governed worker writes (``oomless_history``) and
writes :func:`oomless.history.report.build_report`'s page: memory over time
per worker, requested vs peak per task name, kills and evictions on the
timeline, and the recommendations.  A progress bar runs while the store is
read (a million attempts take some seconds per pass; there are two).

``--history`` and ``--since`` mean what they mean for ``oomless recommend``
(the same options, parsed by the same code).

Exit status: 0 when the file was written; 2 for a usage error (no store at
that URL, an unknown ``--since`` form, a ``--bucket`` too small for the
period); 1 when the file cannot be written.
"""

from __future__ import annotations

import click

from ..urls import redact
from .common import history_option, progress_bar, since_option

__all__ = ["report"]


@click.command()
@history_option
@since_option
@click.option("-o", "--output", default="oomless-report.html", show_default=True,
              type=click.Path(dir_okay=False, writable=True), help="HTML file to write.")
@click.option("--bucket", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Width of a time bucket in the memory charts (default: a round width, at most 600 buckets).")
def report(url: str | None, since: str | None, output: str, bucket: float | None) -> None:
    """Write the memory history as one HTML file: charts and recommendations, no network needed to open it."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "oomless report draws its charts with plotly, which is not installed: pip install 'oomless[report]'"
        ) from None
    from rich.console import Console
    from sqlalchemy.exc import SQLAlchemyError

    from ..history.report import TooManyBuckets, build_report
    from ..units import format_size
    from .recommend import open_store, parse_since

    when = parse_since(since)
    store = open_store(url)
    shown = redact(store.url)
    try:
        with progress_bar("reading the history") as bar:
            job = bar.add_task("rows", total=None)
            summary = build_report(
                store, output, since=when, bucket=bucket,
                progress=lambda done, total: bar.update(job, completed=done, total=total or None),
            )
    except TooManyBuckets as exc:
        raise click.BadParameter(str(exc), param_hint="--bucket") from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot read the history store at {shown}: {_first_line(exc)}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        store.close()
    if summary.attempts:
        what = (f"{_count(summary.attempts, 'attempt')} of {_count(summary.task_names, 'task name')} on "
                f"{_count(summary.workers, 'worker')}, {_count(summary.figures, 'chart')}")
    else:
        what = "no attempts recorded yet" + (" in that period" if since is not None else "")
    out = Console(highlight=False)
    out.print(f"wrote {summary.path} ({format_size(summary.size)}): {what}", soft_wrap=True, markup=False)
    out.print(f"open it in a browser: file://{summary.path}", soft_wrap=True, markup=False)


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
