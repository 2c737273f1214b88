"""``oomless recommend``: right sizes per task from the history store (table, JSON or a snippet)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from ..units import format_size, parse_duration
from .common import history_option, progress_bar, since_option

__all__ = ["recommend", "parse_since"]

def parse_since(value: str | None) -> float | None:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` (ago) or an ISO date/time -> seconds since the epoch."""
    if value is None:
        return None
    text = value.strip()
    if text[-1:].isalpha():  # a duration ago; a bare number would be read as a year or an ISO date
        try:
            return time.time() - parse_duration(text, "--since", longest=float("inf"))
        except ValueError:
            pass
    try:
        from datetime import datetime, timezone

        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)  # as the report shows times: UTC unless an offset is given
        return when.timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration (7d, 12h, 30m, 45s, 2w) nor an ISO date such as 2026-11-01",
            param_hint="--since",
        ) from None


def open_store(url: str | None) -> Any:
    """The store at ``url`` (read-only use: an empty database is not given tables), or a usage
    error that says what is wrong and what to do."""
    from ..history.store import StoreUnavailable, open_reader

    try:
        return open_reader(url)
    except StoreUnavailable as exc:
        message = str(exc)
        if url is not None and " is not an SQLAlchemy URL" in message:
            message = "--history " + message
        elif message.startswith("no history store at"):
            message += "; or give --history URL"
        raise click.UsageError(message) from None


def _size(n: int | None) -> str:
    return "—" if n is None else format_size(n)


def _celery_snippet(recs: list[Any]) -> str:
    lines = [
        "# Celery: paste into your app's config (task_annotations set each task's memory=).",
        "task_annotations = {",
    ]
    for r in recs:
        if r.dag_id is None:
            lines.append(
                f"    {r.task_name!r}: {{'memory': {{'request': {format_size(r.request)!r}, "
                f"'limit': {format_size(r.limit)!r}}}}},  # {r.samples} samples"
            )
    lines.append("}")
    return "\n".join(lines)


def _airflow_snippet(recs: list[Any]) -> str:
    lines = [
        "# Airflow: set each task's executor_config (import oomless.airflow).",
        "from oomless.airflow import memory",
    ]
    for r in recs:
        if r.dag_id is not None:
            lines.append(
                f"# DAG {r.dag_id!r}, task {r.af_task_id!r} ({r.samples} samples):\n"
                f"executor_config=memory(request={format_size(r.request)!r}, limit={format_size(r.limit)!r})"
            )
    return "\n".join(lines)


def _table(recs: list[Any]) -> Any:
    from rich.table import Table

    from ..history.recommend import RANGE_TOLERANCE

    table = Table(title="oomless recommend", title_justify="left")
    for col in ("task", "samples", "kills", "median peak", "max peak", "now: request/limit", "recommended",
                "waste/attempt", "lack"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in recs:
        fit = ""
        if r.by_size is not None:
            f = r.by_size
            fit = (f"\n  by input size: {f.describe()}, R² {f.r2:.2f}"
                   f"\n  inputs seen {format_size(f.smallest)}–{format_size(f.largest)}; above "
                   f"{format_size(int(f.largest * RANGE_TOLERANCE))}: ≥ this row")
        elif r.size_note:
            fit = f"\n  by input size: none, {r.size_note}"
        table.add_row(
            r.task_name + fit,
            f"{r.samples}" + (" (low)" if r.confidence == "low" else ""),
            str(r.kills),
            format_size(r.median_peak),
            format_size(r.max_peak),
            f"{_size(r.current_request)} / {_size(r.current_limit)}",
            f"{format_size(r.request)} / {format_size(r.limit)}",
            format_size(r.waste) if r.waste else "—",
            format_size(r.lack) if r.lack else "—",
        )
    return table


@click.command()
@history_option
@since_option
@click.option("--task", "task_name", metavar="NAME", default=None,
              help="Only this task (a Celery task name, or <dag_id>.<task_id> for Airflow).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "celery", "airflow"]), default="table",
              show_default=True,
              help="A table, JSON, or a snippet to paste (Celery config or Airflow executor_config).")
@click.option("--min-samples", type=click.IntRange(1), default=1, show_default=True,
              help="Leave out tasks with fewer samples.")
def recommend(url: str | None, since: str | None, task_name: str | None, fmt: str, min_samples: int) -> None:
    """A memory request and limit per task, from the peaks in the history store.

    request = median of the peaks × 1.15, limit = max × 1.2 (a memory-killed
    attempt counts as max(limit × 1.2, limit + 100 MiB)); fitted to the input
    size where one was recorded and explains the peaks; see docs/history.md.
    """
    from ..history.recommend import recommend_all

    when = parse_since(since)
    store = open_store(url)
    total = store.count(when) if store.version() else 0
    # quiet when stderr is not a terminal and the work is small
    with progress_bar("reading history", disable=total < 50_000 and not sys.stderr.isatty()) as bar:
        job = bar.add_task("rows", total=total)
        recs = recommend_all(
            store.samples(since=when) if total else iter(()), progress=lambda n: bar.update(job, completed=n)
        )
    recs = [r for r in recs if r.samples >= min_samples and (task_name is None or r.task_name == task_name)]
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in recs], indent=2))
        return
    if not recs:
        click.echo(f"no recorded peaks{'' if task_name is None else ' for ' + task_name} in {total} attempts", err=True)
        sys.exit(1)
    if fmt == "celery":
        click.echo(_celery_snippet(recs))
    elif fmt == "airflow":
        click.echo(_airflow_snippet(recs))
    else:
        from rich.console import Console

        # Piped or redirected: wide enough that task names are not folded (a terminal sets its own width).
        Console(width=None if sys.stdout.isatty() else 200).print(_table(recs))
        click.echo(f"{sum(r.samples for r in recs)} samples from {total} attempts; "
                   "'low': fewer than 20 samples. See docs/history.md for the method.")
