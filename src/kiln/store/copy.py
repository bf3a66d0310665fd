"""``kiln store copy SRC DST``: a whole store from SQLite to PostgreSQL (or back, or between two of either).

Everything the database holds (runs with their params, tags, system info, process and heartbeat; metrics and their
rollups; artifacts; models; versions, deleted ones included so numbering continues; aliases; alias history) and
every blob a version or an artifact references. Blobs go first, each hashed on arrival and compared with its digest
(a blob already in the destination is hashed instead of copied); then the rows, in one transaction that also checks,
under the blobs lock, that every blob is still in place. A copy that fails leaves the destination's rows as they
were (blobs it copied are unreferenced, and ``kiln store gc`` sweeps them).

The destination must hold no runs and no models, unless ``force``: then runs and models it already has (same run
id, same model name) are left alone, and counted as skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import IntegrityError, StoreError
from . import dialects
from .blobs import Blob, BlobStore, hash_file
from .location import locate
from .schema import (
    alias_history,
    aliases,
    metric_rollups,
    metrics,
    models,
    run_artifacts,
    runs,
    version_files,
    versions,
)
from .store import Store

__all__ = ["CopyReport", "copy_store"]

Progress = Callable[[str, int, int], None]  # (what, done, total)
_CHUNK = 1 << 20
_BATCH = 5000  # metric rows per INSERT


@dataclass
class CopyReport:
    """What :func:`copy_store` copied (and, with ``force``, left alone because the destination had it)."""

    source: str
    destination: str
    runs: int = 0
    metrics: int = 0
    artifacts: int = 0
    models: int = 0
    versions: int = 0
    aliases: int = 0
    alias_moves: int = 0
    blobs_copied: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    skipped_runs: int = 0
    skipped_models: int = 0

    def describe(self) -> str:
        skipped = ""
        if self.skipped_runs or self.skipped_models:
            skipped = f"; left {self.skipped_runs} run(s) and {self.skipped_models} model(s) DST already had"
        return (
            f"copied {self.source} -> {self.destination}: {self.runs} run(s), {self.metrics} metric row(s), "
            f"{self.artifacts} artifact(s), {self.models} model(s), {self.versions} version(s), {self.aliases} "
            f"alias(es), {self.alias_moves} alias move(s); {self.blobs_copied} blob(s) copied "
            f"({self.bytes_copied} bytes), {self.blobs_present} already there, every one verified{skipped}"
        )


def _copy_blob(source: BlobStore, destination: BlobStore, blob: Blob) -> bool:
    """Put ``blob`` into ``destination``, hashing it on arrival; False when it was there (and whole) already."""
    if destination.exists(blob) and hash_file(destination.path(blob.sha256)) == blob:
        return False
    path = source.path(blob.sha256)
    if not path.exists():
        raise IntegrityError(f"blob {blob.sha256} is missing from the source ({path}); run 'kiln models verify' there.")
    with destination.writer() as writer, open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(_CHUNK):
            writer.write(chunk)
    arrived = writer.blob
    if arrived != blob:
        raise IntegrityError(
            f"blob {blob.sha256} arrived as {arrived}: the source's copy at {path} does not match its digest; run "
            "'kiln models verify' on the source."
        )
    writer.release()
    return True


def _referenced(connection: Connection) -> dict[str, int]:
    """Every blob the source references: digest -> size."""
    found: dict[str, int] = {}
    for table in (version_files, run_artifacts):
        for digest, size in connection.execute(sa.select(table.c.sha256, table.c.size).distinct()):
            found[digest] = int(size)
    return found


def _rows(connection: Connection, table: sa.Table, *order: Any) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in connection.execute(sa.select(table).order_by(*order))]


def _insert_rows(
    destination: Connection,
    table: sa.Table,
    rows: Iterable[dict[str, Any]],
    progress: Progress | None,
    total: int,
    what: str = "metric rows",
) -> int:
    """Insert ``rows`` in batches, reporting progress (as ``what``) against ``total`` (the source's count)."""
    batch: list[dict[str, Any]] = []
    count = 0
    for row in rows:
        batch.append(row)
        if len(batch) >= _BATCH:
            dialects.insert_rows(destination, table, batch)
            count += len(batch)
            batch = []
            if progress is not None:
                progress(what, count, max(total, count + 1))
    if batch:
        dialects.insert_rows(destination, table, batch)
        count += len(batch)
    return count


def _copy_rows(source: Connection, destination: Connection, report: CopyReport, progress: Progress | None) -> None:
    """Inside the destination's write transaction: every row of ``source`` that the destination does not have."""
    have_runs = set(destination.execute(sa.select(runs.c.id)).scalars())
    have_models = set(destination.execute(sa.select(models.c.name)).scalars())
    run_rows = [row for row in _rows(source, runs, runs.c.start_time) if row["id"] not in have_runs]
    report.skipped_runs = len(have_runs & set(source.execute(sa.select(runs.c.id)).scalars()))
    if run_rows:
        destination.execute(runs.insert(), run_rows)
    report.runs = len(run_rows)
    new_runs = {row["id"] for row in run_rows}
    total = int(source.execute(sa.select(sa.func.count()).select_from(metrics)).scalar() or 0)
    streamed = source.execution_options(yield_per=_BATCH).execute(sa.select(metrics))
    report.metrics = _insert_rows(
        destination, metrics, (dict(r._mapping) for r in streamed if r.run_id in new_runs), progress, total
    )
    if progress is not None:
        progress("metric rows", report.metrics, report.metrics)
    # The source's rollups describe exactly its metric rows (every write keeps them so): copied as they are.
    total = int(source.execute(sa.select(sa.func.count()).select_from(metric_rollups)).scalar() or 0)
    streamed = source.execution_options(yield_per=_BATCH).execute(sa.select(metric_rollups))
    copied = _insert_rows(destination, metric_rollups, (dict(r._mapping) for r in streamed if r.run_id in new_runs),
                          progress, total, "metric rollups")  # fmt: skip
    if progress is not None:
        progress("metric rollups", copied, copied)
    artifact_rows = [r for r in _rows(source, run_artifacts, run_artifacts.c.run_id) if r["run_id"] in new_runs]
    if artifact_rows:
        destination.execute(run_artifacts.insert(), artifact_rows)
    report.artifacts = len(artifact_rows)

    model_ids: dict[int, int] = {}
    for row in _rows(source, models, models.c.id):
        if row["name"] in have_models:
            report.skipped_models += 1
            continue
        result = destination.execute(models.insert().values(name=row["name"], created=row["created"]))
        model_ids[row["id"]] = int(result.inserted_primary_key[0])  # type: ignore[index]
    report.models = len(model_ids)
    version_ids: dict[int, int] = {}
    version_rows = [r for r in _rows(source, versions, versions.c.id) if r["model_id"] in model_ids]
    for done, row in enumerate(version_rows, 1):
        values = {k: v for k, v in row.items() if k != "id"} | {"model_id": model_ids[row["model_id"]]}
        result = destination.execute(versions.insert().values(**values))
        version_ids[row["id"]] = int(result.inserted_primary_key[0])  # type: ignore[index]
        if progress is not None and (done % 100 == 0 or done == len(version_rows)):
            progress("versions", done, len(version_rows))
    report.versions = len(version_ids)
    file_rows = [
        r | {"version_id": version_ids[r["version_id"]]}
        for r in _rows(source, version_files, version_files.c.version_id)
        if r["version_id"] in version_ids
    ]
    if file_rows:
        destination.execute(version_files.insert(), file_rows)
    alias_rows = [r | {"model_id": model_ids[r["model_id"]]} for r in _rows(source, aliases, aliases.c.model_id)
                  if r["model_id"] in model_ids]  # fmt: skip
    if alias_rows:
        destination.execute(aliases.insert(), alias_rows)
    report.aliases = len(alias_rows)
    moves = [{k: v for k, v in r.items() if k != "id"} | {"model_id": model_ids[r["model_id"]]}
             for r in _rows(source, alias_history, alias_history.c.id) if r["model_id"] in model_ids]  # fmt: skip
    if moves:
        destination.execute(alias_history.insert(), moves)
    report.alias_moves = len(moves)


def _check_empty(destination: Store, force: bool) -> None:
    def count(connection: Connection) -> tuple[int, int]:
        return (
            int(connection.execute(sa.select(sa.func.count()).select_from(runs)).scalar() or 0),
            int(connection.execute(sa.select(sa.func.count()).select_from(models)).scalar() or 0),
        )

    found_runs, found_models = destination.database.read(count)
    if (found_runs or found_models) and not force:
        raise StoreError(
            f"{destination.url} already holds {found_runs} run(s) and {found_models} model(s); copy into an empty "
            "store, or pass --force (force=True) to add what it lacks and leave what it has."
        )


def copy_store(
    source: str | os.PathLike[str] | Store,
    destination: str | os.PathLike[str] | Store,
    *,
    source_blobs: str | os.PathLike[str] | None = None,
    blobs: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy the store ``source`` names into ``destination`` (created when it does not exist); see the module doc.

    Example:
        >>> copy_store(".kiln", "postgresql://kiln@db.lab/kiln", blobs="/shared/kiln-blobs").describe()
        'copied /home/me/.kiln -> postgresql+psycopg://kiln@db.lab/kiln: 12 run(s), ...'
    """
    opened: list[Store] = []
    try:
        src = source if isinstance(source, Store) else Store(source, create=False, blobs=source_blobs)
        if src is not source:
            opened.append(src)
        target = destination.location if isinstance(destination, Store) else locate(destination, blobs=blobs)
        if target.url == src.location.url:
            raise StoreError(f"source and destination are the same store ({src.url}); name two different ones.")
        dst = destination if isinstance(destination, Store) else Store(destination, blobs=blobs)
        if dst is not destination:
            opened.append(dst)
        _check_empty(dst, force)
        report = CopyReport(src.url, dst.url)
        wanted = src.database.read(_referenced)
        for done, (digest, size) in enumerate(sorted(wanted.items()), 1):
            if _copy_blob(src.blobs, dst.blobs, Blob(digest, size)):
                report.blobs_copied += 1
                report.bytes_copied += size
            else:
                report.blobs_present += 1
            if progress is not None:
                progress("blobs", done, len(wanted))

        def write(connection: Connection) -> None:
            dialects.lock_blobs(connection, exclusive=False)
            lost = [d for d, size in wanted.items() if not dst.blobs.exists(Blob(d, size))]
            if lost:
                raise StoreError(f"{len(lost)} copied blob(s) vanished before their rows were written (a "
                                 "concurrent gc with --grace 0?); run the copy again.")  # fmt: skip
            src.database.read(lambda source_connection: _copy_rows(source_connection, connection, report, progress))

        dst.database.write(write, durable=True)
        return report
    finally:
        for store in opened:
            store.close()
