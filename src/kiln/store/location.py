"""Where a store lives: a directory (the embedded SQLite store) or a database URL, and where its blobs are.

A store reference is a URL when it has a scheme, and a path otherwise; it is never both:

- ``PATH``: the embedded store, a directory holding ``kiln.db`` (SQLite) and ``blobs/``; also ``sqlite:///PATH``
  (``sqlite:////abs/path`` for an absolute one; a path ending in ``kiln.db`` names its directory);
- ``postgresql://USER@HOST:PORT/DB`` (also ``postgresql+psycopg://``, ``postgres://``): a PostgreSQL database, through
  psycopg 3, with blobs on a path every machine shares. Parts left out (user, host, database, password) come from
  the ``PG*`` environment variables and ``~/.pgpass``, as in ``psql``.

Any other scheme is an error, and so is a string that names a known scheme but is not a URL (``postgresql:/db``).
This module is the one place that reads ``KILN_HOME``, ``KILN_STORE`` and ``KILN_BLOBS``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigError

__all__ = ["StoreLocation", "default_path", "default_reference", "describe_store", "locate", "mask_url"]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_NEAR_URL = re.compile(r"^(sqlite|postgres|postgresql)(\+[a-z0-9_]+)?:", re.IGNORECASE)
_POSTGRES_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg"}
_HELP = "a store is a directory path, sqlite:///PATH or postgresql://USER@HOST/DATABASE"


def default_path() -> Path:
    """``$KILN_HOME`` when set, else ``./.kiln``."""
    return Path(os.environ.get("KILN_HOME") or ".kiln")


def default_reference() -> str | Path:
    """``$KILN_STORE`` when set (a path or a URL), else :func:`default_path`."""
    return os.environ.get("KILN_STORE") or default_path()


def _env_blobs() -> Path | None:
    """``$KILN_BLOBS`` when set."""
    found = os.environ.get("KILN_BLOBS")
    return Path(found) if found else None


def mask_url(url: sa.engine.URL) -> str:
    """``url`` as text with its password (in the authority or the query) replaced by ``***``."""
    if "password" in url.query:
        url = url.update_query_dict({"password": "***"})
    return url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class StoreLocation:
    """A resolved store reference: the database URL, the store directory (embedded only) and the blob directory.

    ``blobs`` holds ``sha256/`` (and ``tmp/``, except in an embedded store's own directory, where ``tmp/`` sits
    beside ``blobs/`` as it always has).
    """

    url: sa.engine.URL
    directory: Path | None  # the embedded store's directory; None for a database server
    blobs: Path
    tmp: Path

    @property
    def embedded(self) -> bool:
        return self.directory is not None

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def describe(self) -> str:
        """What to show a person: the directory, or the URL with its password masked."""
        return str(self.directory) if self.directory is not None else mask_url(self.url)

    def identity(self) -> str:
        """Which store this is, whatever credentials reach it: the directory, or the URL without a password."""
        if self.directory is not None:
            return str(self.directory)
        url = self.url.difference_update_query(["password"])
        parts = (url.drivername, url.username, None, url.host, url.port, url.database, url.query)
        return sa.engine.URL.create(*parts).render_as_string()  # URL.set() cannot unset a part

    def secrets(self) -> list[str]:
        """Strings that must never be shown (the password), for scrubbing error text."""
        found = [self.url.password, self.url.query.get("password")]
        return [str(s) for s in found if isinstance(s, str) and s]


def _embedded(directory: Path, blobs: Path | None) -> StoreLocation:
    directory = directory.absolute()
    url = sa.engine.URL.create("sqlite", database=str(directory / "kiln.db"))
    if blobs is None:  # the layout embedded stores have always had
        return StoreLocation(url, directory, directory / "blobs", directory / "tmp")
    return StoreLocation(url, directory, blobs.absolute(), blobs.absolute() / "tmp")


def _parse_url(text: str) -> sa.engine.URL:
    try:
        return sa.engine.make_url(text)
    except (ArgumentError, ValueError) as error:
        scheme = text.split(":", 1)[0]
        raise ConfigError(
            f"malformed store URL {scheme}://... ({error}); write it as postgresql://USER@HOST:PORT/DATABASE "
            "(the password is best left to PGPASSWORD or ~/.pgpass)."
        ) from None


def locate(
    reference: str | os.PathLike[str] | None = None, *, blobs: str | os.PathLike[str] | None = None
) -> StoreLocation:
    """Resolve a store reference (``None``: ``$KILN_STORE``, else ``$KILN_HOME``, else ``./.kiln``).

    ``blobs`` is where the store's blobs are. An embedded store keeps them in its own directory unless ``blobs``
    says otherwise (``$KILN_BLOBS`` is not read for it: a scratch store must never share, and garbage-collect, a
    team's blob directory); a database server's default is ``$KILN_BLOBS``, else ``$KILN_HOME/blobs``, else
    ``./.kiln/blobs``.

    Example:
        >>> locate("postgresql://kiln:secret@db.lab/kiln", blobs="/shared/kiln-blobs").describe()
        'postgresql+psycopg://kiln:***@db.lab/kiln'
    """
    if reference is None:
        reference = default_reference()
    chosen = Path(blobs) if blobs is not None else None
    if isinstance(reference, os.PathLike):
        return _embedded(Path(reference), chosen)
    if not isinstance(reference, str) or not reference:
        raise ConfigError(f"store must be a path or a URL; got {reference!r}. {_HELP}.")
    scheme = _URL.match(reference)
    if scheme is None:
        if _NEAR_URL.match(reference):
            raise ConfigError(f"store {reference.split(':', 1)[0]}:... is not a URL (no '//'); {_HELP}.")
        return _embedded(Path(reference), chosen)
    name = scheme.group(1).lower()
    if name == "sqlite":
        url = _parse_url(reference)
        if not url.database or url.database == ":memory:":
            raise ConfigError(f"sqlite:// needs a directory: sqlite:///PATH (relative) or sqlite:////PATH; {_HELP}.")
        path = Path(url.database)
        return _embedded(path.parent if path.name == "kiln.db" else path, chosen)
    if name in _POSTGRES_DRIVERS:
        url = _parse_url(reference).set(drivername="postgresql+psycopg")
        where = (chosen or _env_blobs() or default_path() / "blobs").absolute()
        return StoreLocation(url, None, where, where / "tmp")
    if name.startswith("postgresql+"):
        raise ConfigError(
            f"store URL scheme {name!r}: kiln talks to PostgreSQL through psycopg 3; write postgresql://... instead."
        )
    raise ConfigError(f"store URL scheme {name!r} is not one kiln knows; {_HELP}.")


def describe_store() -> str:
    """The default store (``$KILN_STORE`` / ``$KILN_HOME``), fit to show: never connects, never shows a password."""
    try:
        location = locate()
    except ConfigError as error:
        return f"(KILN_STORE is not usable: {error})"
    if location.embedded:
        return location.describe()
    return f"{location.describe()} (blobs {location.blobs})"
