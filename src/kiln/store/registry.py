"""Models, versions and aliases: the SQL side of the registry.

A version is published in one durable transaction holding the model's lock (SQLite: the database write lock;
PostgreSQL: the model's row, ``SELECT ... FOR UPDATE``): the next number is ``max(version) + 1`` read under that
lock, so concurrent publishers get 1, 2, 3... with no gap and no duplicate. Every write to a model's versions and
aliases takes the same lock, so a reader sees an alias move whole: before it or after it. Deleted versions stay as
tombstones, so a number is never handed out twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from ..errors import NotFoundError, StoreError
from . import dialects
from .blobs import Blob, BlobStore, BlobWriter
from .database import Database
from .faults import crash_point
from .names import Reference, check_alias, check_name, parse_reference
from .schema import alias_history, aliases, models, run_artifacts, version_files, versions

__all__ = [
    "AliasMove",
    "ModelSummary",
    "ModelVersion",
    "alias_moves",
    "delete_model",
    "delete_version",
    "list_models",
    "list_versions",
    "promote",
    "publish",
    "remove_alias",
    "resolve",
]


@dataclass(frozen=True, kw_only=True)
class ModelVersion:
    """One published version of a model: its files (name -> blob), signature, metrics and lineage."""

    name: str
    version: int
    created: float
    files: dict[str, Blob]
    aliases: tuple[str, ...] = ()
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    signature: dict[str, Any] | None = None
    run_id: str | None = None
    data_fingerprint: str | None = None
    parent: str | None = None

    @property
    def reference(self) -> str:
        """``name@version``: the reference that always means exactly this version."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, kw_only=True)
class ModelSummary:
    """A model in the listing: how many live versions, the newest, and where each alias points."""

    name: str
    created: float
    versions: int
    latest: int | None
    updated: float | None
    aliases: dict[str, int]


@dataclass(frozen=True, kw_only=True)
class AliasMove:
    """One move of an alias (``old_version`` None: created; ``new_version`` None: removed)."""

    alias: str
    old_version: int | None
    new_version: int | None
    time: float


def _model_id(connection: Connection, name: str, *, create: bool = False, lock: bool = False) -> int:
    """The model's id; ``lock``: hold its row until the transaction ends (every writer of the model does)."""
    query = sa.select(models.c.id).where(models.c.name == name)
    if lock:
        query = query.with_for_update()
    found = connection.execute(query).scalar()
    if found is None and create:  # two first publishes at once: one row is created, both then lock it
        dialects.insert_ignore(connection, models, {"name": name, "created": time.time()})
        found = connection.execute(query).scalar()
    if found is None:
        raise NotFoundError(f"no model named {name!r} in this store; list them with 'kiln models list'.")
    return int(found)


def _version_row(connection: Connection, model_id: int, reference: Reference) -> Row[Any]:
    query = sa.select(versions).where(versions.c.model_id == model_id)
    if reference.alias is not None:
        target = connection.execute(
            sa.select(aliases.c.version).where(aliases.c.model_id == model_id, aliases.c.alias == reference.alias)
        ).scalar()
        if target is None:
            known = connection.execute(sa.select(aliases.c.alias).where(aliases.c.model_id == model_id)).scalars()
            raise NotFoundError(
                f"model {reference.name!r} has no alias {reference.alias!r} (aliases: {sorted(known) or 'none'}); "
                f"set one with 'kiln models promote {reference.name} VERSION {reference.alias}'."
            )
        query = query.where(versions.c.version == target)
    elif reference.version is not None:
        query = query.where(versions.c.version == reference.version)
    else:
        query = query.where(versions.c.status == "ready").order_by(versions.c.version.desc()).limit(1)
    row = connection.execute(query).first()
    if row is None:
        what = "has no versions" if reference.version is None else f"has no version {reference.version}"
        raise NotFoundError(f"model {reference.name!r} {what}; list them with 'kiln models show {reference.name}'.")
    if row.status != "ready":
        raise NotFoundError(
            f"{reference.name}@{row.version} was deleted; list live versions with 'kiln models show {reference.name}'."
        )
    return row


def _build(connection: Connection, name: str, rows: Sequence[Row[Any]]) -> list[ModelVersion]:
    ids = [row.id for row in rows]
    files: dict[int, dict[str, Blob]] = {i: {} for i in ids}
    for f in connection.execute(sa.select(version_files).where(version_files.c.version_id.in_(ids))):
        files[f.version_id][f.name] = Blob(f.sha256, int(f.size))
    by_version: dict[int, list[str]] = {}
    if rows:
        query = sa.select(aliases.c.alias, aliases.c.version).where(aliases.c.model_id == rows[0].model_id)
        for alias, version in connection.execute(query):
            by_version.setdefault(version, []).append(alias)
    return [
        ModelVersion(
            name=name,
            version=row.version,
            created=row.created,
            files=files[row.id],
            aliases=tuple(sorted(by_version.get(row.version, ()))),
            description=row.description,
            tags=dict(row.tags or {}),
            metrics=dict(row.metrics or {}),
            signature=row.signature,
            run_id=row.run_id,
            data_fingerprint=row.data_fingerprint,
            parent=row.parent,
        )
        for row in rows
    ]


def resolve(database: Database, reference: str | Reference) -> ModelVersion:
    """The live version a reference names (``name``: the newest; ``name@3``; ``name@production``)."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference

    def run(connection: Connection) -> ModelVersion:
        model_id = _model_id(connection, ref.name)
        return _build(connection, ref.name, [_version_row(connection, model_id, ref)])[0]

    return database.read(run)


def list_versions(database: Database, name: str) -> list[ModelVersion]:
    """Every live version of ``name``, oldest first."""
    check_name(name)

    def run(connection: Connection) -> list[ModelVersion]:
        model_id = _model_id(connection, name)
        query = sa.select(versions).where(versions.c.model_id == model_id, versions.c.status == "ready")
        return _build(connection, name, connection.execute(query.order_by(versions.c.version)).all())

    return database.read(run)


def list_models(database: Database) -> list[ModelSummary]:
    def run(connection: Connection) -> list[ModelSummary]:
        live = versions.c.status == "ready"
        stats = (
            sa.select(
                versions.c.model_id,
                sa.func.count().label("n"),
                sa.func.max(versions.c.version).label("latest"),
                sa.func.max(versions.c.created).label("updated"),
            )
            .where(live)
            .group_by(versions.c.model_id)
            .subquery()
        )
        query = sa.select(models, stats.c.n, stats.c.latest, stats.c.updated).outerjoin(
            stats, stats.c.model_id == models.c.id
        )
        by_model: dict[int, dict[str, int]] = {}
        for model_id, alias, version in connection.execute(
            sa.select(aliases.c.model_id, aliases.c.alias, aliases.c.version)
        ):
            by_model.setdefault(model_id, {})[alias] = version
        return [
            ModelSummary(
                name=row.name,
                created=row.created,
                versions=int(row.n or 0),
                latest=row.latest,
                updated=row.updated,
                aliases=by_model.get(row.id, {}),
            )
            for row in connection.execute(query.order_by(models.c.name))
        ]

    return database.read(run)


def publish(
    database: Database,
    blobs: BlobStore,
    name: str,
    files: Mapping[str, BlobWriter],
    *,
    metadata: Mapping[str, Any],
) -> int:
    """Record committed blobs as the next version of ``name``; returns the version number."""
    check_name(name)
    assert all(writer.blob is not None for writer in files.values()), "publish takes committed blobs only"

    def run(connection: Connection) -> int:
        dialects.lock_blobs(connection, exclusive=False)
        crash_point("publish:locked")
        lost = [file for file, writer in files.items() if not blobs.restore(writer)]
        if lost:
            raise StoreError(f"blobs of {lost} vanished before {name!r} was published (a concurrent delete); retry.")
        model_id = _model_id(connection, name, create=True, lock=True)
        last = connection.execute(sa.select(sa.func.max(versions.c.version)).where(versions.c.model_id == model_id))
        version = int(last.scalar() or 0) + 1
        result = connection.execute(
            versions.insert().values(
                model_id=model_id, version=version, status="ready", created=time.time(), **metadata
            )
        )
        version_id = result.inserted_primary_key[0]  # type: ignore[index]
        rows = [
            {"version_id": version_id, "name": file, "sha256": writer.blob.sha256, "size": writer.blob.size}
            for file, writer in files.items()
            if writer.blob is not None  # always (asserted above); narrows the type
        ]
        connection.execute(version_files.insert(), rows)
        crash_point("publish:inserted")
        return version

    version = database.write(run, durable=True)
    crash_point("publish:committed")
    return version


def promote(database: Database, name: str, version: int, alias: str) -> int | None:
    """Point ``alias`` at ``name@version``; returns the version it pointed at before (None if new)."""
    check_name(name)
    check_alias(alias)

    def run(connection: Connection) -> int | None:
        model_id = _model_id(connection, name, lock=True)
        _version_row(connection, model_id, Reference(name, version=version))
        key = (aliases.c.model_id == model_id) & (aliases.c.alias == alias)
        old = connection.execute(sa.select(aliases.c.version).where(key)).scalar()
        if old == version:
            return old
        now = time.time()
        if old is None:
            connection.execute(aliases.insert().values(model_id=model_id, alias=alias, version=version, updated=now))
        else:
            connection.execute(aliases.update().where(key).values(version=version, updated=now))
        connection.execute(
            alias_history.insert().values(
                model_id=model_id, alias=alias, old_version=old, new_version=version, time=now
            )
        )
        return old

    return database.write(run, durable=True)


def _drop_alias(connection: Connection, model_id: int, alias: str, old: int) -> None:
    connection.execute(aliases.delete().where(aliases.c.model_id == model_id, aliases.c.alias == alias))
    connection.execute(
        alias_history.insert().values(
            model_id=model_id, alias=alias, old_version=old, new_version=None, time=time.time()
        )
    )


def remove_alias(database: Database, name: str, alias: str) -> int:
    """Remove ``alias`` from ``name``; returns the version it pointed at."""
    check_name(name)
    check_alias(alias)

    def run(connection: Connection) -> int:
        model_id = _model_id(connection, name, lock=True)
        old = connection.execute(
            sa.select(aliases.c.version).where(aliases.c.model_id == model_id, aliases.c.alias == alias)
        ).scalar()
        if old is None:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}.")
        _drop_alias(connection, model_id, alias, old)
        return int(old)

    return database.write(run, durable=True)


def alias_moves(database: Database, name: str) -> list[AliasMove]:
    """Every move of every alias of ``name``, oldest first."""
    check_name(name)

    def run(connection: Connection) -> list[AliasMove]:
        model_id = _model_id(connection, name)
        query = sa.select(alias_history).where(alias_history.c.model_id == model_id).order_by(alias_history.c.id)
        return [
            AliasMove(alias=r.alias, old_version=r.old_version, new_version=r.new_version, time=r.time)
            for r in connection.execute(query)
        ]

    return database.read(run)


def delete_version(database: Database, blobs: BlobStore, reference: str, *, force: bool = False) -> ModelVersion:
    """Delete one version (``name@3`` or ``name@alias``); its number is never reused. Returns what was deleted."""
    ref = parse_reference(reference)
    if ref.version is None and ref.alias is None:
        raise StoreError(
            f"delete needs a version: pass {ref.name}@VERSION (or {ref.name}@ALIAS); to delete every "
            f"version use delete_model({ref.name!r}) or 'kiln models delete {ref.name} --all'."
        )

    def run(connection: Connection) -> ModelVersion:
        model_id = _model_id(connection, ref.name, lock=True)
        row = _version_row(connection, model_id, ref)
        deleted = _build(connection, ref.name, [row])[0]
        if deleted.aliases and not force:
            raise StoreError(
                f"{deleted.reference} is aliased as {', '.join(deleted.aliases)}; move the alias first "
                f"('kiln models promote {ref.name} VERSION ALIAS') or pass force=True / --force to remove it too."
            )
        for alias in deleted.aliases:
            _drop_alias(connection, model_id, alias, deleted.version)
        connection.execute(
            versions.update().where(versions.c.id == row.id).values(status="deleted", deleted=time.time())
        )
        connection.execute(version_files.delete().where(version_files.c.version_id == row.id))
        return deleted

    deleted = database.write(run, durable=True)
    crash_point("delete:committed")
    unlink_unreferenced(database, blobs, {blob.sha256 for blob in deleted.files.values()})
    return deleted


def delete_model(database: Database, blobs: BlobStore, name: str, *, force: bool = False) -> list[int]:
    """Delete every live version of ``name`` (numbering continues after them); returns the deleted numbers."""
    check_name(name)

    def run(connection: Connection) -> tuple[list[int], set[str]]:
        model_id = _model_id(connection, name, lock=True)
        rows = connection.execute(
            sa.select(versions).where(versions.c.model_id == model_id, versions.c.status == "ready")
        ).all()
        doomed = _build(connection, name, rows)
        aliased = {alias: v.version for v in doomed for alias in v.aliases}
        if aliased and not force:
            raise StoreError(f"model {name!r} has aliases {aliased}; pass force=True / --force to delete them too.")
        for alias, version in aliased.items():
            _drop_alias(connection, model_id, alias, version)
        ids = [row.id for row in rows]
        connection.execute(
            versions.update().where(versions.c.id.in_(ids)).values(status="deleted", deleted=time.time())
        )
        connection.execute(version_files.delete().where(version_files.c.version_id.in_(ids)))
        return [v.version for v in doomed], {b.sha256 for v in doomed for b in v.files.values()}

    numbers, digests = database.write(run, durable=True)
    crash_point("delete:committed")
    unlink_unreferenced(database, blobs, digests)
    return numbers


def referenced_digests(connection: Connection, digests: set[str] | None = None) -> set[str]:
    """Which of ``digests`` (or of all blobs) a live version or a run artifact still references."""
    found: set[str] = set()
    for table in (version_files, run_artifacts):
        query = sa.select(table.c.sha256).distinct()
        if digests is not None:
            query = query.where(table.c.sha256.in_(digests))
        found.update(connection.execute(query).scalars())
    return found


def unlink_unreferenced(database: Database, blobs: BlobStore, digests: set[str]) -> int:
    """Under the write lock, unlink those of ``digests`` that nothing references any more; returns how many."""
    if not digests:
        return 0

    def run(connection: Connection) -> int:
        dialects.lock_blobs(connection, exclusive=True)
        doomed = digests - referenced_digests(connection, digests)
        for digest in sorted(doomed):
            blobs.unlink(digest)
            crash_point("delete:unlinking")
        return len(doomed)

    return database.write(run)
