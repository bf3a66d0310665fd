"""The store's SQL connection: SQLAlchemy Core, on SQLite (embedded) or PostgreSQL (a team store).

Everything that differs between the two lives in :mod:`kiln.store.dialects`. On SQLite: WAL (readers never block
the writer), a busy timeout, ``BEGIN IMMEDIATE`` for every write (the write lock is taken up front, so two writers
never deadlock upgrading a read lock) and ``synchronous=FULL`` for publishes (a committed version survives power
loss) while run metrics use ``NORMAL`` (they survive a crash of the process). On PostgreSQL: a connection pool that
pings before use, snapshot reads, and rows that serialise writers locked with ``SELECT ... FOR UPDATE``.

A transaction that finds the database busy (SQLite's lock, PostgreSQL's serialisation failures and deadlocks) is
retried whole, with backoff, so "database is locked" never reaches the caller. So is one whose connection was lost
(PostgreSQL restarted, a network blip) once the database has answered at least once: the work waits for the server
to come back, for up to ``reconnect_seconds``, or for as long as a :meth:`Database.waiting` block in the calling
thread says (a server's alias poll and a training run's periodic metric write wait not at all: they try again
later and carry on meanwhile). A database that never answered fails at once, in one line.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ..errors import StoreError
from . import dialects
from .dialects import Mode

__all__ = ["Database", "DatabaseUnavailable"]

T = TypeVar("T")

BUSY_TIMEOUT_MS = dialects.BUSY_TIMEOUT_MS
_RETRY_FOR_S = 120.0  # past the busy timeout, retry with backoff this long before giving up
RECONNECT_SECONDS = 60.0


class DatabaseUnavailable(StoreError):
    """The store's database server cannot be reached (refused, restarting, network down)."""


class Database:
    """One engine and the two ways to use it: ``read(fn)`` and ``write(fn, durable=...)``.

    ``fn`` gets a Connection inside a transaction, and may be called more than once (a retried transaction runs
    from the start): it must not have effects outside the database that a second call would repeat.

    Example:
        >>> db = Database("sqlite:///.kiln/kiln.db")
        >>> db.write(lambda conn: conn.execute(runs.insert().values(...)), durable=True)
    """

    def __init__(
        self,
        url: str | sa.engine.URL,
        *,
        describe: str | None = None,
        secrets: Sequence[str] = (),
        reconnect_seconds: float = RECONNECT_SECONDS,
    ) -> None:
        url = sa.engine.make_url(url)
        self.engine: Engine = dialects.create_engine(url)
        self.dialect = url.get_backend_name()
        self.is_sqlite = self.dialect == "sqlite"
        self.where = describe if describe is not None else url.render_as_string(hide_password=True)
        self._secrets = [s for s in (*secrets, url.password) if isinstance(s, str) and s]
        self.reconnect_seconds = reconnect_seconds
        self._waiting = threading.local()  # .seconds: this thread's own limit, inside a waiting() block
        self._answered = False  # the database has answered once: a lost connection is waited for, not fatal
        # A store nobody closed (a CLI verb, a short script) still closes its pooled connections when collected.
        weakref.finalize(self, self.engine.dispose)

    @contextlib.contextmanager
    def waiting(self, seconds: float) -> Iterator[None]:
        """Within this block, in this thread, wait at most ``seconds`` for a lost connection (0: fail at once).

        For callers that have something better to do than wait: a server polling its alias keeps serving and polls
        again; a training run keeps its metric rows in memory and writes them later. Other threads are unaffected.

        Example:
            >>> with store.database.waiting(0):
            ...     version = store.version("digits@production")  # DatabaseUnavailable at once if it is down
        """
        before = getattr(self._waiting, "seconds", None)
        self._waiting.seconds = seconds
        try:
            yield
        finally:
            self._waiting.seconds = before

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction (one consistent snapshot)."""
        return self._run(fn, "read")

    def write(self, fn: Callable[[Connection], T], *, durable: bool = False) -> T:
        """Run ``fn`` as a write transaction; commit when it returns, roll back when it raises."""
        return self._run(fn, "durable" if durable else "write")

    def _run(self, fn: Callable[[Connection], T], mode: Mode) -> T:
        limit = getattr(self._waiting, "seconds", None)
        patience = self.reconnect_seconds if limit is None else limit
        start = time.monotonic()
        delay = 0.005
        while True:
            try:
                with self.engine.connect() as connection:
                    dialects.begin(connection, mode)
                    with connection.begin():
                        dialects.started(connection, mode)
                        result = fn(connection)
                self._answered = True
                return result
            except DBAPIError as error:
                trouble = dialects.trouble(error)
                waited = time.monotonic() - start
                if trouble == "busy" and waited > _RETRY_FOR_S:
                    raise StoreError(
                        f"the store's database stayed locked for over {_RETRY_FOR_S:.0f} s; another process holds "
                        "a write transaction open. Close it (or remove a stale process) and retry."
                    ) from error
                if trouble == "disconnected" and (not self._answered or waited >= patience):
                    raise DatabaseUnavailable(self._unavailable(error, waited, mode)) from error
                if trouble not in ("busy", "disconnected"):
                    raise StoreError(self.explain(error)) from error
            time.sleep(delay * (0.5 + random.random()))  # backoff between retries, not synchronisation
            delay = min(delay * 2, 0.25 if self.is_sqlite else 1.0)

    def scrub(self, text: str) -> str:
        """``text`` with every secret of the URL (the password) replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _first_line(self, error: DBAPIError) -> str:
        lines = [line.strip() for line in str(error.orig).splitlines() if line.strip()]
        return self.scrub(lines[0] if lines else type(error.orig).__name__)

    def _unavailable(self, error: DBAPIError, waited: float, mode: Mode) -> str:
        detail = self._first_line(error)
        if self._answered:
            gone = f" and has not come back in {waited:.0f} s" if waited >= 1 else ""
            written = "; nothing was written by this call" if mode != "read" else ""
            return (
                f"the store's database at {self.where} stopped answering{gone} ({detail}){written}. Retry when the "
                "server is back."
            )
        return (
            f"cannot reach the store's database at {self.where} ({detail}); check that the server runs and that "
            "--store / KILN_STORE names the right host and port."
        )

    def explain(self, error: DBAPIError) -> str:
        """One line that says what failed and what to do about it (the password never appears)."""
        trouble, detail = dialects.trouble(error), self._first_line(error)
        if trouble == "credentials":
            return (
                f"the database at {self.where} refused the credentials ({detail}); put the password in PGPASSWORD or "
                "~/.pgpass (or the URL), and check the user name."
            )
        if trouble == "no-database":
            return (
                f"the database named in {self.where} does not exist ({detail}); create it (createdb NAME), then "
                "'kiln store migrate --store URL' creates the store's tables."
            )
        return f"the store's database at {self.where} failed: {detail}"

    def close(self) -> None:
        self.engine.dispose()
