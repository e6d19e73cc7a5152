"""The store's ground floor: the engine, the database specifics, retries, the base class.

:class:`StoreBase` opens the database and upgrades its schema; the per-concern parts of
:class:`legend_core.data.store.Store` (data sets, runs, reviews, the embedding cache, ...)
subclass it. The only database-specific code in the project is the marked "Database
specifics" section below (SQLite's pragmas and file folder; a statistics refresh for
PostgreSQL's planner; the dialect's ``INSERT ... ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, insert, inspect, make_url, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from legend_core.config import database_url
from legend_core.data.schema import (
    ContrastItemRow,
    ContrastSet,
    Dataset,
    DirectionRow,
    EmbeddingKey,
    EmbeddingSpaceRow,
    Margin,
    MarginRun,
    Pair,
    Review,
)

T = TypeVar("T")

#: Rows per bulk INSERT statement when adding a data set.
INSERT_CHUNK = 2_000
#: Values per ``IN (...)`` list: stays under SQLite's old 999-parameter limit.
IN_CHUNK = 900
#: Inserts at least this large refresh the planner's statistics (PostgreSQL).
BIG_INSERT = 5_000
#: Alembic's ``context`` and ``op`` are module globals: one migration per process at a time.
_MIGRATION_LOCK = threading.Lock()


class NotFoundError(KeyError):
    """A row asked for by id does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


# --- Database specifics: the only dialect-specific code in the project ----------------------


#: Values per ``IN (...)`` list on the bulk paths (margins, embedding cache): SQLite allows
#: 32,766 parameters since 3.32 and PostgreSQL 65,535; fewer, longer statements cost less.
BULK_IN_CHUNK = 4_000 if sqlite3.sqlite_version_info >= (3, 32) else IN_CHUNK


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_prepare_file(url: str) -> None:
    """Create the folder of a SQLite file database (not for ``:memory:`` or ``file:`` URIs)."""
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """Per connection: wait on locks, write-ahead log, enforce foreign keys."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _refresh_statistics(engine: Engine, tables: Sequence[str]) -> None:
    """After a bulk insert, let PostgreSQL's planner see the new rows (it picks a sort over
    the queue's index walk on stale statistics); SQLite plans well without them."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in tables:
                conn.execute(text(f"ANALYZE {table}"))


def insert_or_skip(conn: Any, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for ``table`` in the connection's dialect: rows
    whose key is already there are skipped, so two writers of the same rows never collide
    (no check-then-insert window, no IntegrityError to retry)."""
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif name in ("mysql", "mariadb"):
        return insert(table).prefix_with("IGNORE")
    else:
        raise NotImplementedError(
            f"the {name} database is not supported (use SQLite or PostgreSQL)"
        )
    return dialect_insert(table).on_conflict_do_nothing()


def insert_rows_or_skip(
    conn: Any, table: Any, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """:func:`insert_or_skip` of many rows given as tuples of ``columns``' values.

    The statement goes to the driver as it is: SQLAlchemy compiling and binding one dict
    per row cost as much as the insert itself (100,000 margins, BENCHMARKS.md §3). SQLite
    takes the rows through ``executemany``; PostgreSQL takes each column as one array,
    unnested in one statement (a quarter less time than 8,192 statements in a pipeline).
    Values must already be what the driver takes (ints, floats, str, bytes): no type's
    bind processing runs.
    """
    if not rows:
        return
    dialect = conn.dialect
    quote = dialect.identifier_preparer
    names = ", ".join(quote.quote(c) for c in columns)
    head = f"INSERT INTO {quote.format_table(table)} ({names}) "
    if dialect.name == "sqlite" and dialect.paramstyle == "qmark":
        marks = ", ".join("?" * len(columns))
        conn.exec_driver_sql(f"{head}VALUES ({marks}) ON CONFLICT DO NOTHING", list(rows))
    elif dialect.name == "postgresql" and dialect.paramstyle in ("format", "pyformat"):
        arrays = ", ".join(f"%s::{table.c[c].type.compile(dialect=dialect)}[]" for c in columns)
        values = tuple(list(column) for column in zip(*rows, strict=True))
        conn.exec_driver_sql(f"{head}SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING", values)
    else:
        conn.execute(insert_or_skip(conn, table), [dict(zip(columns, row)) for row in rows])


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets its pragmas and its folder created."""
    if not _is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    _sqlite_prepare_file(url)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# --- end of database specifics ---------------------------------------------------------------


def _transient(exc: OperationalError) -> bool:
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return any(
        s in text for s in ("locked", "busy", "deadlock", "could not serialize", "serialization")
    )


def _retry(fn: Callable[[], T], attempts: int = 40) -> T:
    """Run ``fn`` (one whole transaction) again while the database reports lock contention."""
    delay = 0.005
    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            if attempt == attempts - 1 or not _transient(exc):
                raise
        time.sleep(delay * (1.0 + random.random()))
        delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a name must be a non-empty string")
    return name.strip()


_S = TypeVar("_S", bound="StoreBase")


class StoreBase:
    """The Legend database: open it with a URL, use it from any thread or process.

    The engine, the session factory, the schema upgrade, and the lookups every part of the
    store shares; :class:`legend_core.data.store.Store` adds the parts.
    """

    engine: Engine
    _session: sessionmaker[Session]

    def __init__(self, url: str | None = None) -> None:
        """Open (creating if needed) the database at ``url`` and upgrade it to head.

        Args:
            url: Any SQLAlchemy URL; ``None`` uses :func:`legend_core.config.database_url`.
        """
        self.url = url or database_url()
        self.engine = make_engine(self.url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._migrate()

    def _revision(self) -> str | None:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def _migrate(self) -> None:
        """Upgrade to head (a cheap check first: Alembic loads only when there is work)."""
        from legend_core.data.migrations import HEAD, alembic_config

        if self._revision() == HEAD:
            return
        from alembic import command

        for attempt in range(5):
            try:
                with _MIGRATION_LOCK, self.engine.begin() as conn:
                    command.upgrade(alembic_config(conn), "head")
                return
            except DBAPIError:
                # Another process may be creating the same schema right now: look again.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
                if self._revision() == HEAD:
                    return

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    # --- lookups every part shares ------------------------------------------------------------

    def _require(self, model: type, row_id: int) -> None:
        with self._session() as s:
            if s.get(model, row_id) is None:
                raise NotFoundError(f"no {model.__tablename__[:-1].replace('_', ' ')} {row_id}")

    def _run(self, s: Session, run_id: int) -> MarginRun:
        run = s.get(MarginRun, run_id)
        if run is None:
            raise NotFoundError(f"no margin run {run_id}")
        return run

    # --- overview ----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Row counts of every table (home page, and "nothing changed" checks in tests)."""
        tables = {
            "datasets": Dataset,
            "pairs": Pair,
            "contrast_sets": ContrastSet,
            "contrast_items": ContrastItemRow,
            "directions": DirectionRow,
            "runs": MarginRun,
            "margins": Margin,
            "reviews": Review,
            "embedding_spaces": EmbeddingSpaceRow,
            "embeddings": EmbeddingKey,  # one row per cached vector
        }
        with self._session() as s:
            return {
                name: int(s.scalar(select(func.count()).select_from(model)) or 0)
                for name, model in tables.items()
            }
