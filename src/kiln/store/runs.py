"""Tracked runs: parameters, tags, system info, metrics per step (written in batches) and artifacts.

A :class:`Run` buffers metric rows in memory and writes them in one transaction when the buffer fills, when
``flush_seconds`` have passed, or when asked, so logging a metric costs a list append, not a database write.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import ConfigError, NotFoundError, StoreError
from .blobs import Blob
from .names import check_file_name, check_name, check_run_id
from .schema import metrics, run_artifacts, runs

if TYPE_CHECKING:
    from .store import Store

__all__ = ["STATUSES", "MetricRow", "Run", "RunInfo", "git_commit", "jsonable", "system_info"]

Status = Literal["running", "finished", "failed", "killed"]
STATUSES: tuple[Status, ...] = ("running", "finished", "failed", "killed")
MetricRow = tuple[str, int, float, "int | None"]  # (key, step, value, epoch)


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """A run as the store records it; ``latest`` holds the last logged value of every metric."""

    id: str
    name: str
    status: str
    start_time: float
    end_time: float | None
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    latest: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Blob] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.end_time is None else self.end_time - self.start_time


def jsonable(value: Any, *, depth: int = 0) -> Any:
    """``value`` as plain JSON (dicts, lists, str, finite numbers); anything else becomes its short repr."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < 8 and isinstance(value, Mapping):
        return {str(k): jsonable(v, depth=depth + 1) for k, v in value.items()}
    if depth < 8 and isinstance(value, list | tuple):
        return [jsonable(v, depth=depth + 1) for v in value]
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def git_commit(directory: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The git commit (and whether the tree is dirty) of ``directory`` (default: cwd), or None outside git."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def system_info() -> dict[str, Any]:
    """Where a run happens: kiln and Python versions, platform, host, process id and git commit when available."""
    from .. import __version__

    return {
        "kiln": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]][:20] if sys.argv else [],
        "git": git_commit(),
    }


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= 200 or not key.isprintable():
        raise ConfigError(f"metric name {key!r} must be printable text of 1-200 characters (e.g. 'val_loss').")
    return key


def new_run(
    connection: Connection, name: str, params: Any, tags: Mapping[str, str] | None, system: Mapping[str, Any]
) -> str:
    check_name(name, what="run name")
    run_id = uuid.uuid4().hex
    connection.execute(
        runs.insert().values(
            id=run_id,
            name=name,
            status="running",
            params=jsonable(dict(params or {})),
            tags={str(k): str(v) for k, v in (tags or {}).items()},
            system=jsonable(dict(system)),
            start_time=time.time(),
            end_time=None,
        )
    )
    return run_id


def find_run_id(connection: Connection, run_id: str) -> str:
    """The full id for ``run_id`` or a unique prefix of it."""
    check_run_id(run_id)
    if len(run_id) == 32:
        found = [run_id] if connection.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() else []
    else:
        found = list(connection.execute(sa.select(runs.c.id).where(runs.c.id.startswith(run_id)).limit(5)).scalars())
    if not found:
        raise NotFoundError(f"no run with id {run_id!r} in this store; list them with 'kiln runs list'.")
    if len(found) > 1:
        raise StoreError(f"run id prefix {run_id!r} matches several runs ({', '.join(found)}); give more digits.")
    return found[0]


def insert_metrics(connection: Connection, run_id: str, rows: Iterable[MetricRow], now: float) -> None:
    values = [
        {
            "run_id": run_id,
            "key": key,
            "step": int(step),
            "epoch": epoch,
            "value": None if math.isnan(value) else float(value),
            "time": now,
        }
        for key, step, value, epoch in rows
    ]
    if values:
        connection.execute(metrics.insert(), values)


def latest_metrics(connection: Connection, run_ids: list[str]) -> dict[str, dict[str, float]]:
    """The value at the highest step of every metric of each run."""
    last = (
        sa.select(metrics.c.run_id, metrics.c.key, sa.func.max(metrics.c.step).label("step"))
        .where(metrics.c.run_id.in_(run_ids))
        .group_by(metrics.c.run_id, metrics.c.key)
        .subquery()
    )
    query = sa.select(metrics.c.run_id, metrics.c.key, metrics.c.value).join(
        last, (metrics.c.run_id == last.c.run_id) & (metrics.c.key == last.c.key) & (metrics.c.step == last.c.step)
    )
    out: dict[str, dict[str, float]] = {run_id: {} for run_id in run_ids}
    for run_id, key, value in connection.execute(query):
        out[run_id][key] = math.nan if value is None else value
    return out


def run_infos(connection: Connection, rows: Sequence[Any], *, artifacts: bool = False) -> list[RunInfo]:
    ids = [row.id for row in rows]
    latest = latest_metrics(connection, ids) if ids else {}
    files: dict[str, dict[str, Blob]] = {run_id: {} for run_id in ids}
    if artifacts and ids:
        for a in connection.execute(sa.select(run_artifacts).where(run_artifacts.c.run_id.in_(ids))):
            files[a.run_id][a.name] = Blob(a.sha256, int(a.size))
    return [
        RunInfo(
            id=row.id,
            name=row.name,
            status=row.status,
            start_time=row.start_time,
            end_time=row.end_time,
            params=dict(row.params or {}),
            tags=dict(row.tags or {}),
            system=dict(row.system or {}),
            latest=latest.get(row.id, {}),
            artifacts=files.get(row.id, {}),
        )
        for row in rows
    ]


class Run:
    """A running run: log metrics (buffered), attach artifacts, finish with a status.

    Example:
        >>> with store.start_run("digits-cnn", params={"lr": 1e-3}) as run:
        ...     for step in range(100):
        ...         run.log({"loss": 0.5}, step=step)
        >>> store.run(run.id).status
        'finished'
    """

    def __init__(
        self, store: Store, run_id: str, name: str, *, flush_rows: int = 2000, flush_seconds: float = 15.0
    ) -> None:
        self.store, self.id, self.name = store, run_id, name
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.status: str = "running"
        self._rows: list[MetricRow] = []
        self._last_flush = time.monotonic()

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, name={self.name!r}, status={self.status!r})"

    def log(self, values: Mapping[str, float], *, step: int, epoch: int | None = None) -> None:
        """Buffer one value per metric at ``step``; written with the next flush."""
        self.log_rows([(_check_key(key), step, float(value), epoch) for key, value in values.items()])

    def log_rows(self, rows: Iterable[MetricRow]) -> None:
        """Buffer ``(key, step, value, epoch)`` rows (keys already checked by the caller)."""
        self._rows.extend(rows)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write buffered metrics in one transaction."""
        rows, self._rows = self._rows, []
        self._last_flush = time.monotonic()
        if rows:
            now = time.time()
            self.store.database.write(lambda connection: insert_metrics(connection, self.id, rows, now))

    def log_artifact(self, name: str, path: str | os.PathLike[str]) -> Blob:
        """Store a file (a plot, a config, a checkpoint) as a content-addressed artifact of this run."""
        return self.store.log_artifact(self.id, name, path)

    def finish(self, status: str = "finished") -> None:
        """Flush and record ``status`` ("finished", "failed" or "killed") and the end time."""
        if status not in STATUSES[1:]:
            raise ConfigError(f"a run finishes as 'finished', 'failed' or 'killed'; got {status!r}.")
        pending, self._rows = self._rows, []
        now = time.time()

        def run(connection: Connection) -> None:
            insert_metrics(connection, self.id, pending, now)
            connection.execute(runs.update().where(runs.c.id == self.id).values(status=status, end_time=now))

        self.store.database.write(run)
        self.status = status

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.status == "running":
            status = "finished" if kind is None else "killed" if issubclass(kind, KeyboardInterrupt) else "failed"
            self.finish(status)


def check_artifact(name: str, path: str | os.PathLike[str]) -> None:
    check_file_name(name)
    if not os.path.isfile(path):
        raise ConfigError(f"artifact {name!r}: {os.fspath(path)!r} is not a file.")
