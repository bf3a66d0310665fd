"""The Store: runs and models in one place: metadata in SQLite or PostgreSQL, content-addressed blobs in files."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import ConfigError, IntegrityError, NotFoundError, StoreError
from . import dialects, registry
from .blobs import Blob, BlobStore, BlobWriter, remove_older
from .content import check_package_file, head_of, read_head
from .database import Database
from .liveness import STALE_AFTER_SECONDS, check_stale_after
from .location import StoreLocation, default_path, locate
from .manifest import MANIFEST, read_manifest
from .migrate import open_schema
from .names import check_file_name, check_name
from .registry import AliasMove, ModelSummary, ModelVersion
from .runs import (
    REPORTED_STATUSES,
    Run,
    RunInfo,
    check_artifact,
    find_run_id,
    jsonable,
    list_runs,
    new_run,
    record_dead_runs,
    reopen_run,
    run_infos,
    system_info,
)
from .schema import metrics, run_artifacts, runs
from .verify import VerifyReport, verify_versions

__all__ = ["GcReport", "Store", "default_path"]

FileSource = str | os.PathLike[str] | BlobWriter


@dataclass(frozen=True)
class GcReport:
    """What :meth:`Store.gc` removed (or, with ``dry_run``, would remove): files and their total bytes."""

    blobs: int
    temp_files: int
    bytes: int = 0
    dry_run: bool = False


class Store:
    """Tracked runs and a versioned, integrity-checked model registry.

    ``path`` is a store reference: a directory (the embedded store: SQLite and blobs in one place; created unless
    ``create=False``) or a database URL (``postgresql://USER@HOST/DB``: a team store, with its blobs under
    ``blobs``, a directory every machine shares). It defaults to ``$KILN_STORE``, else ``$KILN_HOME``, else
    ``./.kiln``; ``blobs`` defaults to ``$KILN_BLOBS``, else the embedded store's own ``blobs/`` or, for a
    database server, ``$KILN_HOME/blobs`` (``./.kiln/blobs``). Any number of processes may open the same store.
    See :mod:`kiln.store.location` and docs/store.md.

    Example:
        >>> store = Store("./.kiln")
        >>> version = kiln.export.register_module(net, "digits", store=store, example_input=x[:1])
        >>> store.promote("digits", version.version, "production")
        >>> module = kiln.export.load("digits@production", store=store)
        >>> team = Store("postgresql://kiln@db.lab/kiln", blobs="/shared/kiln-blobs")
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        blobs: str | os.PathLike[str] | None = None,
    ) -> None:
        self.location: StoreLocation = locate(path, blobs=blobs)
        if self.location.directory is not None:
            self.path = self.location.directory
            if not (self.path / "kiln.db").exists() and not create:
                raise StoreError(
                    f"no kiln store at {self.path}: pass --store / set KILN_HOME to an existing store, or "
                    "create one with kiln.store.Store(path)."
                )
            if self.path.exists() and not self.path.is_dir():
                raise StoreError(f"store path {self.path} exists and is not a directory.")
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            self.path = self.location.blobs  # the files of a team store; its rows are in the database
        self.blobs = BlobStore(self.location.blobs, self.location.tmp)
        where = self.location.describe()
        self.database = Database(self.location.url, describe=where, secrets=self.location.secrets())
        try:
            open_schema(self.database, where=where, create=create, auto_upgrade=self.location.embedded)
            self.blobs.create()
            self.blobs.claim(self.location.identity())
        except BaseException:
            self.database.close()
            raise

    @property
    def url(self) -> str:
        """Where the store is, fit to show: the directory, or the database URL with its password masked."""
        return self.location.describe()

    def __repr__(self) -> str:
        if self.location.embedded and self.location.blobs == self.path / "blobs":
            return f"Store({str(self.path)!r})"
        return f"Store({self.url!r}, blobs={str(self.location.blobs)!r})"

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ runs
    def start_run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        system: Mapping[str, Any] | None = None,
        flush_rows: int = 2000,
        flush_seconds: float = 15.0,
    ) -> Run:
        """Record a new run (status "running") and return its handle; ``system`` adds to :func:`system_info`.

        Example:
            >>> with store.start_run("digits-mlp", params={"lr": 1e-3}) as run:
            ...     run.log({"loss": 0.3}, step=1)
        """
        check_name(name, what="run name")
        info = {**system_info(), **(system or {})}
        run_id = self.database.write(lambda connection: new_run(connection, name, params, tags, info))
        return Run(self, run_id, name, flush_rows=flush_rows, flush_seconds=flush_seconds)

    def resume_run(self, run_id: str, *, flush_rows: int = 2000, flush_seconds: float = 15.0) -> Run:
        """Reopen a run (status back to "running") to keep logging into it, e.g. when training resumes."""

        full, name = self.database.write(lambda connection: reopen_run(connection, run_id))
        return Run(self, full, name, flush_rows=flush_rows, flush_seconds=flush_seconds)

    def run(self, run_id: str, *, stale_after: float = STALE_AFTER_SECONDS) -> RunInfo:
        """One run, with its artifacts and the latest value of each metric (``run_id`` may be a unique prefix).

        Its status is the truth as far as it can be known: see :meth:`runs`.
        """
        check_stale_after(stale_after)
        record_dead_runs(self.database)

        def read(connection: Connection) -> RunInfo:
            row = connection.execute(sa.select(runs).where(runs.c.id == find_run_id(connection, run_id))).one()
            return run_infos(connection, [row], artifacts=True, stale_after=stale_after)[0]

        return self.database.read(read)

    def runs(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        limit: int = 50,
        stale_after: float = STALE_AFTER_SECONDS,
    ) -> list[RunInfo]:
        """Runs, newest first, optionally only those called ``name`` or with ``status``.

        A "running" run whose process is provably gone (same machine; the pid is gone or now another process) is
        recorded as "killed" first. One whose process cannot be checked from here (another machine) and that has
        not written for ``stale_after`` seconds is reported "stale" (not recorded). See :mod:`kiln.store.runs`.

        Example:
            >>> [(r.name, r.status) for r in store.runs(status="killed")]
            [('digits-cnn', 'killed')]
        """
        if status is not None and status not in REPORTED_STATUSES:
            raise ConfigError(f"status must be one of {', '.join(REPORTED_STATUSES)}; got {status!r}.")
        check_stale_after(stale_after)
        count = max(int(limit), 1)
        name = check_name(name, what="run name") if name is not None else None
        record_dead_runs(self.database)
        now = time.time()
        return self.database.read(
            lambda connection: list_runs(
                connection, name=name, status=status, limit=count, now=now, stale_after=stale_after
            )
        )

    def metrics(self, run_id: str, key: str | None = None) -> dict[str, list[tuple[int, float]]]:
        """Every logged ``(step, value)`` of a run, per metric, in step order."""

        def read(connection: Connection) -> dict[str, list[tuple[int, float]]]:
            query = sa.select(metrics.c.key, metrics.c.step, metrics.c.value).where(
                metrics.c.run_id == find_run_id(connection, run_id)
            )
            if key is not None:
                query = query.where(metrics.c.key == key)
            out: dict[str, list[tuple[int, float]]] = {}
            for k, step, value in connection.execute(query.order_by(metrics.c.key, metrics.c.step)):
                out.setdefault(k, []).append((step, math.nan if value is None else value))
            return out

        return self.database.read(read)

    def log_artifact(self, run_id: str, name: str, path: str | os.PathLike[str]) -> Blob:
        """Store a file as an artifact of a run (content-addressed; the same bytes are stored once)."""
        check_artifact(name, path)
        full = self.database.read(lambda connection: find_run_id(connection, run_id))
        writer = self.blobs.put_file(path)
        blob = writer.commit()

        def write(connection: Connection) -> None:
            dialects.lock_blobs(connection, exclusive=False)
            if not self.blobs.restore(writer):
                raise StoreError(f"artifact {name!r} vanished before it was recorded (a concurrent gc); retry.")
            key = (run_artifacts.c.run_id == full) & (run_artifacts.c.name == name)
            connection.execute(run_artifacts.delete().where(key))
            connection.execute(
                run_artifacts.insert().values(
                    run_id=full, name=name, sha256=blob.sha256, size=blob.size, created=time.time()
                )
            )

        try:
            self.database.write(write, durable=True)
        finally:
            writer.release()
        return blob

    # ------------------------------------------------------------------ models
    def register(
        self,
        name: str,
        files: Mapping[str, FileSource] | str | os.PathLike[str],
        *,
        signature: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        run_id: str | None = None,
        data_fingerprint: str | None = None,
        parent: str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        """Publish files as the next version of ``name`` and return it.

        ``files`` maps package file names to paths (or open :class:`BlobWriter` s), or is a package directory
        (its ``manifest.json``, when present, must match every file). Every file is refused if it holds a pickle
        or a zip archive, whatever it is called. Most users call ``kiln.export.register_module`` instead, which
        writes the package (weights, ONNX graph, spec) and calls this.

        Example:
            >>> store.register("digits", "exported/digits/", metrics={"val_accuracy": 0.97})
            ModelVersion(name='digits', version=1, ...)
        """
        check_name(name)
        meta = self._version_metadata(signature, metrics, run_id, data_fingerprint, parent, description, tags)
        sources = _package_files(files) if isinstance(files, str | os.PathLike) else dict(files)
        for file in sources:
            check_file_name(file)
        for file, source in sources.items():  # refuse by content before copying a byte
            if not isinstance(source, BlobWriter):
                check_package_file(file, *read_head(source))
        writers: dict[str, BlobWriter] = {}
        try:
            for file, source in sources.items():
                writers[file] = source if isinstance(source, BlobWriter) else self.blobs.put_file(source)
            for file, writer in writers.items():  # what was written (streamed, or changed since the check above)
                writer.check_content(file)
            for writer in writers.values():
                writer.commit()
            if isinstance(files, str | os.PathLike):
                _check_manifest(Path(files), {f: w.blob for f, w in writers.items() if w.blob is not None})
            version = registry.publish(self.database, self.blobs, name, writers, metadata=meta)
        except BaseException:
            for writer in writers.values():
                if writer.blob is None:
                    writer.abort()
            raise
        finally:
            for writer in writers.values():
                writer.release()
        return self.version(f"{name}@{version}")

    def _version_metadata(
        self,
        signature: Mapping[str, Any] | None,
        metrics: Mapping[str, float] | None,
        run_id: str | None,
        data_fingerprint: str | None,
        parent: str | None,
        description: str | None,
        tags: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        if run_id is not None:
            run_id = self.run(run_id).id
        if parent is not None:
            parent = self.version(parent).reference
        if data_fingerprint is not None and (not isinstance(data_fingerprint, str) or len(data_fingerprint) > 128):
            raise ConfigError(f"data_fingerprint must be a string of at most 128 characters; got {data_fingerprint!r}.")
        if description is not None and (not isinstance(description, str) or len(description) > 10_000):
            raise ConfigError("description must be a string of at most 10000 characters.")
        return {
            "signature": jsonable(dict(signature)) if signature is not None else None,
            "metrics": {str(k): jsonable(float(v)) for k, v in (metrics or {}).items()},
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
            "run_id": run_id,
            "data_fingerprint": data_fingerprint,
            "parent": parent,
            "description": description,
        }

    def version(self, reference: str) -> ModelVersion:
        """The version a reference names: ``name`` (newest), ``name@3``, ``name@latest`` or ``name@production``."""
        return registry.resolve(self.database, reference)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every live version of model ``name``, oldest first."""
        return registry.list_versions(self.database, name)

    def models(self) -> list[ModelSummary]:
        """Every model with its number of versions, newest version and aliases."""
        return registry.list_models(self.database)

    def promote(self, name: str, version: int | str, alias: str) -> int | None:
        """Point ``alias`` at ``name@version`` (recorded in the alias history); returns the previous version.

        Example:
            >>> store.promote("digits", 3, "production")
        """
        number = version.rsplit("@", 1)[-1] if isinstance(version, str) else version
        if isinstance(number, str) and number.isdigit():
            number = int(number)
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise ConfigError(f"version must be a positive int (or 'name@N'); got {version!r}.")
        return registry.promote(self.database, name, number, alias)

    def remove_alias(self, name: str, alias: str) -> int:
        """Remove ``alias`` from model ``name``; returns the version it pointed at."""
        return registry.remove_alias(self.database, name, alias)

    def alias_history(self, name: str) -> list[AliasMove]:
        """Every move of every alias of ``name``, oldest first."""
        return registry.alias_moves(self.database, name)

    def delete(self, reference: str, *, force: bool = False) -> ModelVersion:
        """Delete one version (``name@3`` or ``name@alias``); refused while an alias points at it unless ``force``."""
        return registry.delete_version(self.database, self.blobs, reference, force=force)

    def delete_model(self, name: str, *, force: bool = False) -> list[int]:
        """Delete every version of ``name``; version numbers continue from where they were."""
        return registry.delete_model(self.database, self.blobs, name, force=force)

    def read(self, version: ModelVersion | str, file: str) -> memoryview:
        """The bytes of one file of a version, hash-verified and judged by content; IntegrityError names the file."""
        resolved = self.version(version) if isinstance(version, str) else version
        check_file_name(file)
        blob = resolved.files.get(file)
        if blob is None:
            raise NotFoundError(f"{resolved.reference} has no file {file!r}; it has {sorted(resolved.files)}.")
        data = self.blobs.read(blob, label=f"{resolved.reference} file {file!r}")
        check_package_file(file, head_of(data), len(data))
        return data

    def verify(self, target: str | None = None) -> VerifyReport:
        """Re-hash every blob of ``target`` (``name@3``: one version; ``name``: all its versions; None: the store).

        Example:
            >>> report = store.verify()
            >>> report.ok, [p.message for p in report.problems]
        """
        return verify_versions(self.database, self.blobs, self.versions_for(target), artifacts=target is None)

    def versions_for(self, target: str | None) -> list[ModelVersion]:
        """The versions ``target`` names: ``name@3`` one, ``name`` all of that model's, None every version."""
        if target is None:
            return [v for model in self.models() for v in self.versions(model.name)]
        if "@" in target:
            return [self.version(target)]
        return self.versions(check_name(target))

    def load(self, reference: str, **options: Any) -> Any:
        """Deprecated: use ``kiln.export.load(reference, store=store)``; loading models is the export layer's job.

        Kept working for one release (0.2) with a DeprecationWarning; ``options`` go to :func:`kiln.export.load`
        (``runtime``, ``trust``). The import below is the one upward import the layer test allows, until then.
        """
        warnings.warn(
            "Store.load is deprecated and will be removed in kiln 0.3: use kiln.export.load(reference, store=store) "
            "(same arguments: runtime=..., trust=[...]).",
            DeprecationWarning,
            stacklevel=2,
        )
        from ..export import load

        return load(reference, store=self, **options)

    def gc(self, *, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcReport:
        """Remove blobs nothing references and temp files left by crashed writers, both older than the grace.

        The grace protects writes in flight: a blob is stored before the row that references it is committed, and
        a temp file is written while a file streams in. ``dry_run`` removes nothing and reports what would go.

        Example:
            >>> report = store.gc(grace_seconds=24 * 3600, dry_run=True)
            >>> report.blobs, report.bytes
            (3, 52110)
        """
        if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, int | float) or not grace_seconds >= 0:
            raise ConfigError(f"grace_seconds must be a number >= 0 (e.g. 3600); got {grace_seconds!r}.")
        cutoff = time.time() - grace_seconds
        owners = self.blobs.owners()
        if len(owners) > 1 and not dry_run:
            raise StoreError(
                f"the blob directory {self.blobs.directory} is used by {len(owners)} stores ({', '.join(owners)}); gc "
                "would remove the blobs only the others reference. Give each store its own --blobs directory; if "
                f"these name one store reached two ways, remove the stale entries from {self.blobs.directory}/stores."
            )

        def sweep(connection: Connection) -> list[int]:
            if not dry_run:
                dialects.lock_blobs(connection, exclusive=True)
            keep = registry.referenced_digests(connection)
            unreferenced = [path for path in self.blobs.blobs() if path.name not in keep]
            return remove_older(unreferenced, cutoff=cutoff, dry_run=dry_run)

        # Under the write lock (PostgreSQL: the blobs lock), so no publish can reference a blob between the check and
        # the unlink.
        blobs = self.database.read(sweep) if dry_run else self.database.write(sweep)
        temp_files, temp_bytes = self.blobs.clean_tmp(older_than=grace_seconds, dry_run=dry_run)
        return GcReport(len(blobs), temp_files, sum(blobs) + temp_bytes, dry_run)


def _package_files(directory: str | os.PathLike[str]) -> dict[str, Path]:
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{os.fspath(directory)!r} is not a package directory.")
    files: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(
                f"package {root}: {path.name!r} is not a regular file (links and folders are refused)."
            )
        files[check_file_name(path.name)] = path
    return files


def _check_manifest(root: Path, blobs: Mapping[str, Blob]) -> None:
    if MANIFEST not in blobs:
        return
    expected = read_manifest((root / MANIFEST).read_bytes(), where=str(root))
    for file, blob in blobs.items():
        if file != MANIFEST and expected.get(file) != blob:
            raise IntegrityError(
                f"package {root}: {file!r} does not match its SHA-256 in {MANIFEST}; the file was "
                "modified after export (or is not listed). Export the package again."
            )
    missing = set(expected) - set(blobs)
    if missing:
        raise IntegrityError(f"package {root}: {MANIFEST} lists {sorted(missing)} but the directory lacks them.")
