"""The store's SQL connection: SQLAlchemy Core, tuned for SQLite shared by many processes.

SQLite settings: WAL (readers never block the writer), a busy timeout, ``BEGIN IMMEDIATE`` for every write (the
write lock is taken up front, so two writers never deadlock upgrading a read lock) and ``synchronous=FULL`` for
publishes (a committed version survives power loss) while run metrics use ``NORMAL`` (they survive a crash of the
process). On other databases the same code runs in plain transactions; rows that serialise writers are taken with
``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from ..errors import StoreError

__all__ = ["Database"]

T = TypeVar("T")
Mode = Literal["read", "write", "durable"]

BUSY_TIMEOUT_MS = 30_000
_RETRY_FOR_S = 120.0  # past the busy timeout, retry with backoff this long before giving up


def _is_busy(error: OperationalError) -> bool:
    text = str(error.orig).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would otherwise open transactions lazily).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _on_begin(connection: Connection) -> None:
    mode: Mode = connection.get_execution_options().get("kiln_mode", "read")
    if mode == "read":
        connection.exec_driver_sql("BEGIN")
        return
    connection.exec_driver_sql(f"PRAGMA synchronous = {'FULL' if mode == 'durable' else 'NORMAL'}")
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine and the two ways to use it: ``read(fn)`` and ``write(fn, durable=...)``.

    ``fn`` gets a Connection inside a transaction; when SQLite reports the database busy past the busy timeout
    the whole transaction is retried with backoff, so "database is locked" never reaches the caller.

    Example:
        >>> db = Database("sqlite:///.kiln/kiln.db")
        >>> db.write(lambda conn: conn.execute(runs.insert().values(...)), durable=True)
    """

    def __init__(self, url: str | sa.engine.URL) -> None:
        self.engine: Engine = sa.create_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _on_connect)
            sa.event.listen(self.engine, "begin", _on_begin)

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction (one consistent snapshot)."""
        return self._run(fn, "read")

    def write(self, fn: Callable[[Connection], T], *, durable: bool = False) -> T:
        """Run ``fn`` holding the write lock; commit when it returns, roll back when it raises."""
        return self._run(fn, "durable" if durable else "write")

    def _run(self, fn: Callable[[Connection], T], mode: Mode) -> T:
        deadline = time.monotonic() + _RETRY_FOR_S
        delay = 0.005
        while True:
            try:
                with self.engine.connect() as connection:
                    connection.execution_options(kiln_mode=mode)
                    with connection.begin():
                        return fn(connection)
            except OperationalError as error:
                if not _is_busy(error):
                    raise StoreError(f"the store's database failed: {error.orig}") from error
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"the store's database stayed locked for over {_RETRY_FOR_S:.0f} s; another process holds "
                        "a write transaction open. Close it (or remove a stale process) and retry."
                    ) from error
            time.sleep(delay * (0.5 + random.random()))  # backoff between retries, not synchronisation
            delay = min(delay * 2, 0.25)

    def close(self) -> None:
        self.engine.dispose()
