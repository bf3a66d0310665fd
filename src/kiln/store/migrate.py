"""Schema migrations: the Alembic revisions in ``migrations/versions/``, run inside the store's own transaction.

Opening a store reads its revision without a lock (one query when it is current). Only when it is behind does the
opener take the write lock (SQLite) or the schema's advisory lock (PostgreSQL), read the revision again and
upgrade, in one transaction, so any number of processes can open a store at once and exactly one of them creates
or upgrades it.

What opening does with a store that is not at this kiln's head revision:

- an empty database: creates the tables when the caller may create a store (``Store(..., create=True)``), else
  says to run ``kiln store migrate``;
- older (or written by kiln 0.1, before Alembic): the embedded SQLite store is upgraded in place, as kiln has
  always done (one process, one machine: whoever opens it runs this kiln); a PostgreSQL store is refused with a
  message offering ``kiln store migrate``, since upgrading a shared database locks every older kiln on the team
  out of it, which nobody should do by accident;
- newer than this kiln knows: refused, asking for a newer kiln.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreError
from . import dialects
from .database import Database
from .location import locate
from .schema import kiln_schema, metadata

__all__ = [
    "HEAD",
    "VERSION_TABLE",
    "SchemaState",
    "head",
    "migrate",
    "migrate_store",
    "open_schema",
    "schema_state",
    "upgrade",
]

# The newest revision in migrations/versions/: opening a current store compares with it and never imports Alembic
# (0.4 s of start-up for every command, server and worker otherwise). Move it with every new revision.
HEAD = "0002"
VERSION_TABLE = "kiln_alembic_version"  # not "alembic_version": the database may hold another application's too
_SCRIPTS = Path(__file__).resolve().parent / "migrations"


@functools.lru_cache(maxsize=1)
def _alembic() -> tuple[Any, Any]:
    """Alembic's config and script directory for ``migrations/`` (imported on first use: opening is the hot path
    only when a store needs migrating)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config, ScriptDirectory.from_config(config)


def head() -> str:
    """The newest revision this kiln knows (:data:`HEAD`; a test checks that it is Alembic's head)."""
    return HEAD


def _known(revision: str) -> bool:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        return _alembic()[1].get_revision(revision) is not None
    except (RevisionError, CommandError):  # "Can't locate revision": written by a newer kiln
        return False


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema is: its Alembic revision and kiln 0.1's ``kiln_schema`` version (None: absent)."""

    revision: str | None
    legacy: int | None

    @property
    def empty(self) -> bool:
        return self.revision is None and self.legacy is None

    @property
    def current(self) -> bool:
        return self.revision == head()

    @property
    def newer(self) -> bool:
        return self.revision is not None and not _known(self.revision)

    def describe(self) -> str:
        if self.empty:
            return "no kiln tables"
        if self.revision is None:
            return f"kiln 0.1's schema version {self.legacy}"
        return f"revision {self.revision}"


def schema_state(connection: Connection) -> SchemaState:
    """Read the revision (and the legacy version) of the database ``connection`` is on."""
    tables = set(sa.inspect(connection).get_table_names())
    revision = None
    if VERSION_TABLE in tables:
        version_table = sa.table(VERSION_TABLE, sa.column("version_num", sa.String))
        revision = connection.execute(sa.select(version_table.c.version_num)).scalar()
    legacy = None
    if kiln_schema.name in tables:
        value = connection.execute(sa.select(kiln_schema.c.version).where(kiln_schema.c.id == 1)).scalar()
        legacy = int(value) if value is not None else None
    return SchemaState(revision, legacy)


def upgrade(connection: Connection) -> None:
    """Run every revision between the database's and :func:`head` on ``connection``, in its open transaction."""
    from alembic.runtime.environment import EnvironmentContext

    config, script = _alembic()

    def steps(revision: Any, _context: Any) -> Any:
        return script._upgrade_revs("head", revision)  # what alembic.command.upgrade passes too

    with EnvironmentContext(config, script, fn=steps) as environment:
        environment.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
        with environment.begin_transaction():  # joins the caller's transaction: nothing commits before it does
            environment.run_migrations()


def _refuse(found: SchemaState, *, where: str, create: bool, auto_upgrade: bool) -> None:
    """Raise when opening may not bring ``found`` to the head revision; return when it may."""
    if found.newer:
        raise StoreError(
            f"the store at {where} has schema {found.describe()}, newer than this kiln knows ({head()}); "
            "upgrade kiln (pip install -U kiln) to open it."
        )
    if found.empty and not create:
        raise StoreError(
            f"the database at {where} has no kiln store (no kiln tables); create them with "
            "'kiln store migrate --store URL', or open it with kiln.store.Store(URL)."
        )
    if not found.empty and not auto_upgrade:
        raise StoreError(
            f"the store at {where} has schema {found.describe()}, older than this kiln's ({head()}); run "
            "'kiln store migrate --store URL' to upgrade it (every kiln that uses it must then be this version "
            "or newer)."
        )


def open_schema(database: Database, *, where: str, create: bool, auto_upgrade: bool) -> None:
    """Bring the database to the head revision if the rules above allow; one read when it is there already."""
    found = database.read(schema_state)
    if found.current:
        return
    _refuse(found, where=where, create=create, auto_upgrade=auto_upgrade)
    migrate(database, where=where, create=create, auto_upgrade=auto_upgrade)


def migrate(database: Database, *, where: str, create: bool = True, auto_upgrade: bool = True) -> SchemaState:
    """Upgrade (or create) the schema under the schema lock; returns the state it found before."""

    def locked(connection: Connection) -> SchemaState:
        dialects.lock_schema(connection)
        found = schema_state(connection)  # read again under the lock: another process may have migrated
        if not found.current:
            _refuse(found, where=where, create=create, auto_upgrade=auto_upgrade)
            upgrade(connection)
        return found

    return database.write(locked, durable=True)


def migrate_store(reference: str | os.PathLike[str] | None, *, blobs: str | os.PathLike[str] | None = None) -> str:
    """``kiln store migrate``: create or upgrade the schema of the store ``reference`` names; says what it did.

    An embedded store must exist already (a directory with ``kiln.db``); a database may be empty.
    """
    location = locate(reference, blobs=blobs)
    where = location.describe()
    if location.directory is not None and not (location.directory / "kiln.db").exists():
        raise StoreError(f"no kiln store at {where}; kiln.store.Store(path) creates one (at the current schema).")
    database = Database(location.url, describe=where, secrets=location.secrets())
    try:
        before = migrate(database, where=where)
    finally:
        database.close()
    if before.current:
        return f"{where}: already at revision {HEAD}"
    return f"{where}: {before.describe()} -> revision {HEAD}"
