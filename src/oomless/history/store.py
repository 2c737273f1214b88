"""The history store: one row per task attempt, in any database SQLAlchemy 2 speaks.

An SQLite file by default, PostgreSQL (or anything SQLAlchemy supports) by
URL.  The schema carries a version in ``oomless_schema``; :meth:`Store.migrate`
applies the steps in :data:`MIGRATIONS` that a database has not seen yet, in
one transaction each, so that a newer oomless upgrades an older store and an
older oomless refuses a newer one instead of writing rows it does not
understand.

What is not here: aggregation (``oomless recommend``), the report, metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    case,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
)

from .. import outcomes
from ..paths import history_url
from ..urls import redact
from .attempt import Attempt

__all__ = ["Attempt", "Store", "StoreUnavailable", "open_reader", "SCHEMA_VERSION"]

metadata = MetaData()

attempts = Table(
    "oomless_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_name", String(255), nullable=False),
    Column("task_id", String(155), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("started_at", Float, nullable=False),  # seconds since the epoch
    Column("duration", Float),  # seconds
    Column("request", BigInteger),  # bytes
    Column("limit", BigInteger),
    Column("peak_rss", BigInteger),
    Column("peak_pss", BigInteger),
    Column("input_size", BigInteger),
    Column("mode", String(16)),
    Column("worker_host", String(255)),
    Column("worker_pid", Integer),
    Column("dag_id", String(250)),
    Column("af_task_id", String(250)),
    Column("run_id", String(250)),
    Column("map_index", Integer),
    Column("try_number", Integer),
    Index("oomless_attempts_by_task", "task_name", "started_at"),
)

schema = Table("oomless_schema", metadata, Column("version", Integer, nullable=False))


_COLUMNS = [f.name for f in fields(Attempt)]


#: An Airflow DAG's tries, by task (the UI plugin's pages; created with the table from version 2 on).
by_dag = Index("oomless_attempts_by_dag", attempts.c.dag_id, attempts.c.af_task_id, attempts.c.started_at)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[attempts])


def _v2(conn: Connection) -> None:
    by_dag.create(conn, checkfirst=True)


#: Schema steps in order; step *n* brings a store from version *n - 1* to *n*.
MIGRATIONS: Sequence[Callable[[Connection], None]] = (_v1, _v2)
SCHEMA_VERSION = len(MIGRATIONS)
#: The oldest schema whose attempts a reader reads as they are (later steps only added indexes).
READABLE_FROM = 1


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    # WAL: readers (report, recommend) never block the worker's writer, and a
    # busy timeout instead of "database is locked" when two workers share a file.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


class StoreUnavailable(Exception):
    """A history store that cannot be read; the message names it (password hidden) and what to do."""


def open_reader(url: str | None = None) -> Store:
    """The store at ``url`` to read from: never created nor migrated here (a mistyped URL must not
    leave an empty store behind and read as "nothing recorded").  Raises :class:`StoreUnavailable`
    when it is missing, not a URL, unreachable, or newer than this oomless; an empty one opens, with
    ``version() == 0``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    url = url or history_url()
    try:
        make_url(url)
    except ArgumentError:
        raise StoreUnavailable(f"{url!r} is not an SQLAlchemy URL (e.g. sqlite:///path or "
                               f"postgresql+psycopg://user@host/db)") from None
    shown = redact(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path and path != ":memory:" and not path.startswith("file:") and not os.path.exists(path):
            raise StoreUnavailable(f"no history store at {path}: workers record there only with oomless_history "
                                   f"set to this URL (see docs/history.md)")
    try:
        store = Store(url, readonly=True)
        found = store.version()
    except (SQLAlchemyError, ImportError, OSError) as exc:
        raise StoreUnavailable(f"cannot open the history store {shown}: {exc}") from None
    if found > SCHEMA_VERSION:
        store.close()
        raise StoreUnavailable(f"the history store {shown} has schema version {found}, newer than this oomless "
                               f"understands ({SCHEMA_VERSION}); upgrade oomless")
    return store


class Store:
    """A history database at ``url`` (created and migrated on first use; ``readonly``: read as it is, an
    empty or older store never changed; see :func:`open_reader`)."""

    def __init__(self, url: str | None = None, readonly: bool = False) -> None:
        self.url = url or history_url()
        if self.url.startswith("sqlite:///"):
            path = self.url[len("sqlite:///"):]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrated = False
        self.readonly = readonly

    def version(self) -> int:
        """The schema version of the database (0: empty)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("oomless_schema"):
                return 0
            return int(conn.execute(select(schema.c.version)).scalar_one_or_none() or 0)

    def migrate(self) -> int:
        """Bring the database to :data:`SCHEMA_VERSION`; returns the version it was at."""
        if self.readonly:
            raise StoreUnavailable(f"the history store {redact(self.url)} has no attempts recorded by this "
                                   f"oomless's schema (version {self.version()} of {SCHEMA_VERSION})")
        with self.engine.begin() as conn:
            if not inspect(conn).has_table("oomless_schema"):
                metadata.create_all(conn, tables=[schema])
            found = int(conn.execute(select(schema.c.version)).scalar_one_or_none() or 0)
            if found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the history store at {redact(self.url)} has schema "
                    f"version {found}, newer than this oomless understands ({SCHEMA_VERSION}); upgrade oomless"
                )
            for step in MIGRATIONS[found:]:
                step(conn)
            if found == 0:
                conn.execute(insert(schema).values(version=SCHEMA_VERSION))
            elif found < SCHEMA_VERSION:
                conn.execute(schema.update().values(version=SCHEMA_VERSION))
        self._migrated = True
        return found

    def _readable(self) -> bool:
        """Whether there are tables to read: a writer creates them, a reader of an empty store finds none."""
        if not self._migrated:
            if self.readonly:  # read as it is: tables of a schema this oomless reads, or nothing to read
                self._migrated = READABLE_FROM <= self.version() <= SCHEMA_VERSION
                return self._migrated
            self.migrate()
        return True

    def add(self, rows: Iterable[Attempt]) -> int:
        """Insert ``rows`` in one transaction; returns how many."""
        # Not dataclasses.asdict: it deep-copies every value, and costs the worker's GIL 15× more.
        batch = [{name: getattr(r, name) for name in _COLUMNS} for r in rows]
        if not batch:
            return 0
        if not self._migrated:
            self.migrate()
        with self.engine.begin() as conn:
            conn.execute(insert(attempts), batch)
        return len(batch)

    def attempts(self, task_name: str | None = None) -> list[Attempt]:
        """Recorded attempts, oldest first (all, or of one task name)."""
        if not self._readable():
            return []
        query = select(*(attempts.c[name] for name in _COLUMNS)).order_by(attempts.c.started_at, attempts.c.id)
        if task_name is not None:
            query = query.where(attempts.c.task_name == task_name)
        with self.engine.connect() as conn:
            return [Attempt(**row._asdict()) for row in conn.execute(query)]

    def airflow_attempts(self, dag_id: str, task_id: str | None = None, run_id: str | None = None,
                         map_index: int | None = None, newest: int = 5000) -> list[Attempt]:
        """The recorded tries of one Airflow DAG (of one task, run, map index), oldest first: the
        ``newest`` most recent (the UI plugin's pages)."""
        if not self._readable():
            return []
        c = attempts.c
        query = select(*(c[name] for name in _COLUMNS)).where(c.dag_id == dag_id)
        for column, value in (("af_task_id", task_id), ("run_id", run_id), ("map_index", map_index)):
            if value is not None:
                query = query.where(c[column] == value)
        query = query.order_by(c.started_at.desc(), c.id.desc()).limit(newest)
        with self.engine.connect() as conn:
            return [Attempt(**row._asdict()) for row in conn.execute(query)][::-1]

    def airflow_dags(self) -> list[tuple[str, int, int, float]]:
        """``(dag_id, tries, memory kills, latest start)`` of every DAG with recorded tries."""
        if not self._readable():
            return []
        c = attempts.c
        kills = func.sum(case((c.outcome == outcomes.MEMORY_KILLED, 1), else_=0))
        query = select(c.dag_id, func.count(), kills, func.max(c.started_at)).where(
            c.dag_id.is_not(None)).group_by(c.dag_id).order_by(c.dag_id)
        with self.engine.connect() as conn:
            return [(str(d), int(n), int(k or 0), float(t)) for d, n, k, t in conn.execute(query)]

    def count(self, since: float | None = None) -> int:
        """How many attempts are recorded (since ``since``, seconds since the epoch)."""
        if not self._readable():
            return 0
        query = select(func.count()).select_from(attempts)
        if since is not None:
            query = query.where(attempts.c.started_at >= since)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def samples(self, since: float | None = None, task_name: str | None = None) -> Iterator[tuple[Any, ...]]:
        """``(task_name, dag_id, af_task_id, outcome, peak_rss, request, limit, input_size, started_at)`` rows, oldest
        first, streamed (a million rows are never all in memory; see :mod:`oomless.history.recommend`)."""
        if not self._readable():
            return
        c = attempts.c
        query = select(
            c.task_name, c.dag_id, c.af_task_id, c.outcome, c.peak_rss, c.request, c.limit, c.input_size, c.started_at
        )
        if since is not None:
            query = query.where(c.started_at >= since)
        if task_name is not None:
            query = query.where(c.task_name == task_name)
        query = query.order_by(c.started_at, c.id)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=10_000).execute(query):
                yield tuple(row)

    def last_id(self) -> int:
        """The id of the newest row (0: none)."""
        if not self._readable():
            return 0
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(attempts.c.id))).scalar_one_or_none() or 0)

    def kills(self, task_name: str, after_id: int) -> list[tuple[Any, ...]]:
        """``(id, dag_id, af_task_id, input_size, limit)`` of the memory-killed attempts of ``task_name``
        recorded after row ``after_id`` (a range of the primary key: cheap enough to ask every few seconds)."""
        if not self._readable():
            return []
        c = attempts.c
        query = select(c.id, c.dag_id, c.af_task_id, c.input_size, c.limit).where(
            c.id > after_id, c.task_name == task_name, c.outcome == outcomes.MEMORY_KILLED).order_by(c.id)
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def try_floor(self, mode: str = "cgroup") -> tuple[int | None, int]:
        """``(smallest peak, tries)`` of the Airflow tries that ended ok in ``mode``: what a try costs
        at least, measured (``None``: no such try recorded)."""
        if not self._readable():
            return None, 0
        c = attempts.c
        query = select(func.min(c.peak_rss), func.count()).where(
            c.dag_id.is_not(None), c.outcome == outcomes.OK, c.mode == mode, c.peak_rss.is_not(None))
        with self.engine.connect() as conn:
            smallest, tries = conn.execute(query).one()
        return (None if smallest is None else int(smallest)), int(tries)

    def span(self, since: float | None = None) -> tuple[int, float | None, float | None]:
        """``(attempts, earliest start, latest end)`` of the attempts started since ``since`` (one query)."""
        if not self._readable():
            return 0, None, None
        c = attempts.c
        query = select(func.count(), func.min(c.started_at), func.max(c.started_at + func.coalesce(c.duration, 0.0)))
        if since is not None:
            query = query.where(c.started_at >= since)
        with self.engine.connect() as conn:
            count, first, last = conn.execute(query).one()
        return int(count), first, last

    def timeline(self, since: float | None = None) -> Iterator[tuple[Any, ...]]:
        """``(task_name, outcome, started_at, duration, request, limit, peak_rss, worker_host, task_id, dag_id,
        af_task_id)`` rows, streamed, in no particular order (sorting a million rows would cost a report
        more than reading them)."""
        if not self._readable():
            return
        c = attempts.c
        query = select(c.task_name, c.outcome, c.started_at, c.duration, c.request, c.limit, c.peak_rss,
                       c.worker_host, c.task_id, c.dag_id, c.af_task_id)
        if since is not None:
            query = query.where(c.started_at >= since)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=10_000).execute(query):
                yield tuple(row)

    def close(self) -> None:
        self.engine.dispose()
