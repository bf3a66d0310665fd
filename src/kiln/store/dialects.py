"""What differs between SQLite and PostgreSQL, in one place; every other module writes dialect-neutral Core.

============================  ===============================================  =========================================
                              SQLite (embedded)                                PostgreSQL (team store)
============================  ===============================================  =========================================
engine                        one file; WAL, busy_timeout, foreign keys        a pool (pre-ping, recycle), psycopg 3
read transaction              ``BEGIN``: one snapshot (WAL)                    REPEATABLE READ, READ ONLY: one snapshot
write transaction             ``BEGIN IMMEDIATE``: the one writer at a time    READ COMMITTED; rows that order writers
                                                                               are locked (``SELECT ... FOR UPDATE``)
durable vs metrics write      ``synchronous`` FULL vs NORMAL                   ``synchronous_commit`` on vs off
next version number           ``max + 1`` under the database write lock        ``max + 1`` under the model row's lock
creating a model row          the write lock                                   ``INSERT ... ON CONFLICT DO NOTHING``
blobs vs their rows           the write lock                                   advisory lock: shared by publishes,
                                                                               exclusive for unlinking (gc, delete)
schema migration              the write lock                                   advisory lock
retried transparently         "database is locked"                             serialisation failure, deadlock, a lost
                                                                               connection (after the first connect)
============================  ===============================================  =========================================

A transaction that loses its connection is rolled back by the server and retried whole; only a commit whose
acknowledgement is lost (the server restarts between committing and answering) can be applied twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

__all__ = [
    "Mode",
    "Trouble",
    "begin",
    "create_engine",
    "insert_ignore",
    "insert_rows",
    "lock_blobs",
    "lock_schema",
    "started",
    "trouble",
    "upsert",
]

Mode = Literal["read", "write", "durable"]
Trouble = Literal["busy", "disconnected", "credentials", "no-database", "other"]

BUSY_TIMEOUT_MS = 30_000
_BLOBS_LOCK = 0x6B696C6E_626C6F62  # "kilnblob": PostgreSQL advisory lock keys, one per purpose
_SCHEMA_LOCK = 0x6B696C6E_73636865  # "kilnsche"
_POOL = {"pool_size": 5, "max_overflow": 10, "pool_pre_ping": True, "pool_recycle": 1800, "pool_timeout": 60}


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would otherwise open transactions lazily).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    mode: Mode = connection.get_execution_options().get("kiln_mode", "read")
    if mode == "read":
        connection.exec_driver_sql("BEGIN")
        return
    synchronous = "FULL" if mode == "durable" else "NORMAL"
    info = connection.connection.info  # lives with the pooled SQLite connection: set the pragma when it changes
    if info.get("kiln_synchronous") != synchronous:
        connection.exec_driver_sql(f"PRAGMA synchronous = {synchronous}")
        info["kiln_synchronous"] = synchronous
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: sa.engine.URL) -> Engine:
    """An engine for ``url`` with the settings of the table above."""
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        sa.event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    try:
        import psycopg  # noqa: F401 - checked here so the error names the extra
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("a PostgreSQL store needs psycopg 3: pip install 'kiln[postgres]'.") from None
    # No server-side prepared statements: they break behind a transaction-pooling PgBouncer, and cost as much here.
    connect_args = {"connect_timeout": 10, "application_name": "kiln", "prepare_threshold": None}
    return sa.create_engine(url, connect_args=connect_args, **_POOL)


def begin(connection: Connection, mode: Mode) -> None:
    """Set up ``connection`` for a transaction of ``mode``; called before ``connection.begin()``."""
    if connection.dialect.name == "sqlite":
        connection.execution_options(kiln_mode=mode)  # the "begin" listener emits BEGIN [IMMEDIATE]
    elif mode == "read":
        connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    else:
        connection.execution_options(isolation_level="READ COMMITTED", postgresql_readonly=False)


def started(connection: Connection, mode: Mode) -> None:
    """First statement of a transaction: metric writes need not wait for the WAL flush (SQLite's NORMAL)."""
    if connection.dialect.name == "postgresql" and mode == "write":
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def insert_ignore(connection: Connection, table: sa.Table, values: dict[str, Any]) -> None:
    """Insert ``values`` into ``table`` unless a row with the same unique key exists (created concurrently)."""
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(insert(table).values(**values).on_conflict_do_nothing())


_UPSERTS: dict[tuple[Any, ...], tuple[str, list[str] | None]] = {}  # compiled: SQL, positional parameter order


def upsert(
    connection: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    merge: Callable[[Any], dict[str, Any]],
) -> None:
    """Insert ``rows``, or where a row with the same primary key exists, set its columns to ``merge(excluded)``.

    ``merge`` gets the proposed row (``excluded``) and returns column -> expression; the table's own columns stand
    for the row in place. ``INSERT ... ON CONFLICT DO UPDATE`` on both databases: atomic on PostgreSQL under
    concurrent writers too. ``rows`` must not repeat a key (PostgreSQL refuses to update one row twice).

    The statement is compiled once per dialect (SQLAlchemy's execution of a statement this size, its cache key
    walking every CASE, cost more than the database's work for a metric flush) and run by the driver: SQLite's
    executemany; on PostgreSQL one ``INSERT ... SELECT ... FROM json_populate_recordset(...)`` with the rows as one
    JSON parameter (executemany took a round trip per row, ~1 ms each here; column arrays spent ~8 ms per 200 rows
    in psycopg's array adaptation, the standard library's JSON encoder a fraction of one). Values must be JSON:
    finite floats, integers (exact), strings, None.
    """
    if not rows:
        return
    name = connection.dialect.name
    columns = list(rows[0])
    cache_key = (name, table.name, merge, tuple(columns))
    found = _UPSERTS.get(cache_key)
    if found is None:
        keys = [column.name for column in table.primary_key.columns]
        if name == "postgresql":  # every row in one statement, the rows as one JSON document (see above)
            quote = connection.dialect.identifier_preparer
            rows_sql = (f"SELECT {', '.join(quote.quote(c) for c in columns)} FROM json_populate_recordset("
                        f"NULL::{quote.format_table(table)}, CAST(:kiln_rows AS json))")  # fmt: skip
            source = sa.text(rows_sql).columns(*(table.c[c] for c in columns))
            statement: Any = postgresql.insert(table).from_select(columns, source)
        else:  # in-process: executemany costs no round trips
            statement = sqlite.insert(table)
        compiled: Any = statement.on_conflict_do_update(index_elements=keys, set_=merge(statement.excluded)).compile(
            dialect=connection.dialect, column_keys=columns
        )
        found = _UPSERTS[cache_key] = (
            str(compiled),
            list(compiled.positiontup) if compiled.positional else None,
        )
    sql, order = found
    if name == "postgresql":
        connection.exec_driver_sql(sql, {"kiln_rows": json.dumps(rows, allow_nan=False)})
    elif order is None:
        connection.exec_driver_sql(sql, rows)
    else:
        connection.exec_driver_sql(sql, [tuple(row[c] for c in order) for row in rows])


_COMPILED: dict[tuple[Any, ...], tuple[str, list[str] | None]] = {}  # (dialect, key) -> SQL, positional order


def execute_cached(
    connection: Connection, key: Any, build: Callable[[], Any], params: dict[str, Any] | list[dict[str, Any]]
) -> None:
    """Run the statement ``build()`` makes, compiled once per dialect and ``key``, through the driver.

    For the statements a training run repeats every flush (its heartbeat, its metric rows): SQLAlchemy's execution
    walks a statement's cache key on every call, which cost more CPU than SQLite's own work for a small flush.
    ``params`` is one row of bind values (or a list of them, for executemany), by bind-parameter name.
    """
    cache_key = (connection.dialect.name, key)
    found = _COMPILED.get(cache_key)
    if found is None:
        columns = list(params[0] if isinstance(params, list) else params)
        compiled: Any = build().compile(dialect=connection.dialect, column_keys=columns)
        found = _COMPILED[cache_key] = (str(compiled), list(compiled.positiontup) if compiled.positional else None)
    sql, order = found
    rows = params if isinstance(params, list) else [params]
    if order is not None:
        arguments: Any = [tuple(row[c] for c in order) for row in rows]
    else:
        arguments = rows
    connection.exec_driver_sql(sql, arguments if isinstance(params, list) else arguments[0])


def insert_rows(connection: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows at once: an executemany on SQLite, ``COPY ... FROM STDIN`` on PostgreSQL.

    COPY streams the rows in one command: a flush of 2000 metric rows took about a tenth of the time of 2000
    pipelined INSERTs here, and one INSERT with 2000 VALUES spends longer still in the driver's parameter handling.
    """
    if not rows:
        return
    if connection.dialect.name != "postgresql":
        execute_cached(connection, ("insert", table.name, tuple(rows[0])), table.insert, rows)
        return
    quote = connection.dialect.identifier_preparer.quote
    columns = list(rows[0])
    command = f"COPY {quote(table.name)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"
    driver = connection.connection.driver_connection  # the psycopg connection, inside this transaction
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(command) as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def lock_blobs(connection: Connection, *, exclusive: bool) -> None:
    """Order blob files against the rows that reference them: publishes share the lock, unlinking takes it alone.

    SQLite's write lock already does (one writer at a time).
    """
    if connection.dialect.name == "postgresql":
        function = sa.func.pg_advisory_xact_lock if exclusive else sa.func.pg_advisory_xact_lock_shared
        connection.execute(sa.select(function(_BLOBS_LOCK)))


def lock_schema(connection: Connection) -> None:
    """One migration at a time (on SQLite the write lock is held already)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))


# Client-side failures to reach or keep the server (psycopg gives them no SQLSTATE).
_LOST = (
    "connection refused", "could not connect", "connection failed", "server closed the connection",
    "terminating connection", "the database system is", "connection timeout", "consuming input failed",
    "connection is closed", "ssl connection has been closed",
)  # fmt: skip


def trouble(error: DBAPIError) -> Trouble:
    """What went wrong, in the terms the retry loop and the error messages need."""
    original = error.orig
    text = str(original).lower()
    if "database is locked" in text or "database is busy" in text or "database table is locked" in text:
        return "busy"
    state = getattr(original, "sqlstate", None) or ""
    if state in ("40001", "40P01"):  # serialization failure, deadlock: retry the whole transaction
        return "busy"
    if state in ("28P01", "28000") or "password authentication failed" in text or "no password supplied" in text:
        return "credentials"
    if state == "3D000" or ("database" in text and "does not exist" in text):
        return "no-database"
    if error.connection_invalidated or state.startswith("08") or state in ("57P01", "57P02", "57P03"):
        return "disconnected"
    if any(marker in text for marker in _LOST):
        return "disconnected"
    return "other"
