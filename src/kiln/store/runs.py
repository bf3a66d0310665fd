"""Tracked runs: parameters, tags, system info, metrics per step (written in batches) and artifacts.

A :class:`Run` buffers metric rows in memory and writes them in one transaction when the buffer fills, when
``flush_seconds`` have passed, or when asked, so logging a metric costs a list append, not a database write.

Whether a run is really running. A run records the process that logs it (host name, a machine key, pid and the
process's start time; see :mod:`kiln.store.liveness`) and a heartbeat, the time of its last write (start, every metric
flush, finish): no write of its own. When the store lists or shows runs, a "running" run is judged by
:func:`reported_status`:

- its process is checkable from here (Linux, same host, same kernel boot and pid namespace): when that pid is gone,
  a zombie, or now a different process (another start time), the run is "killed", and recorded so with its last
  heartbeat as end time; while the process lives the run is "running", however long it has been silent;
- otherwise (another machine, no /proc, a run from before schema 2): "running" while its heartbeat is at most
  ``stale_after`` seconds old (default :data:`STALE_AFTER_SECONDS`, 30 minutes), else "stale": unknown, perhaps
  dead. "stale" is only reported, never recorded: another machine may yet prove it alive (or finish it).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import ConfigError, NotFoundError, StoreError
from . import dialects
from .blobs import Blob
from .database import Database, DatabaseUnavailable
from .gitinfo import git_commit, run_git
from .liveness import STALE_AFTER_SECONDS, process_liveness, running_status, this_process
from .names import check_file_name, check_name, check_run_id
from .rollups import LEVELS, add_rollups, summarise
from .schema import metrics, run_artifacts, runs


class RunStore(Protocol):
    """What a :class:`Run` needs of its store (the Store satisfies it; runs.py does not import store.py)."""

    database: Database

    def log_artifact(self, run_id: str, name: str, path: str | os.PathLike[str]) -> Blob: ...


__all__ = [
    "REPORTED_STATUSES",
    "STALE_AFTER_SECONDS",  # from .liveness, still importable from here
    "STATUSES",
    "MetricRow",
    "Run",
    "RunInfo",
    "git_commit",
    "jsonable",
    "process_liveness",  # from .liveness
    "reported_status",
    "system_info",
    "this_process",  # from .liveness
]

logger = logging.getLogger(__name__)

Status = Literal["running", "finished", "failed", "killed", "pruned"]  # pruned: a tuning trial stopped early
STATUSES: tuple[Status, ...] = ("running", "finished", "failed", "killed", "pruned")  # what the store records
# What listing reports: "stale" is a running run whose process cannot be checked and has been silent too long.
REPORTED_STATUSES: tuple[str, ...] = (*STATUSES, "stale")
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
    heartbeat: float | None = None  # time of the run's last write
    process: dict[str, Any] = field(default_factory=dict)  # host, machine, pid, started of the process logging it

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
        "git": run_git(),  # checked now, or once for a whole study (kiln.store.gitinfo.recorded_git)
    }


def last_sign_of_life(row: Any) -> float:
    """When a ``runs`` row's process last wrote: its heartbeat, or its start for rows from before schema 2."""
    return float(row.heartbeat if row.heartbeat is not None else row.start_time)


def reported_status(row: Any, *, now: float, stale_after: float = STALE_AFTER_SECONDS) -> str:
    """The status to report for a ``runs`` row: recorded, except for "running" (see the module docstring)."""
    if row.status != "running":
        return str(row.status)
    return running_status(row.process, last_write=last_sign_of_life(row), now=now, stale_after=stale_after)


def dead_runs(connection: Connection) -> dict[str, Any]:
    """Running runs whose process is provably gone: ``{id: process}``."""
    query = sa.select(runs.c.id, runs.c.process).where(runs.c.status == "running")
    return {row.id: row.process for row in connection.execute(query) if process_liveness(row.process) == "dead"}


def mark_killed(connection: Connection, dead: Mapping[str, Any]) -> list[str]:
    """Under the write lock: record "killed" (ended at the last heartbeat) for ``dead`` runs still running as the
    same process; one resumed by another process meanwhile is left alone."""
    query = (
        sa.select(runs.c.id, runs.c.process, runs.c.heartbeat, runs.c.start_time)
        .where(runs.c.id.in_(list(dead)), runs.c.status == "running")
        .with_for_update()  # a resume_run committing meanwhile waits, or is seen
    )
    killed = []
    for row in connection.execute(query).all():
        if row.process == dead[row.id]:
            end = last_sign_of_life(row)
            connection.execute(runs.update().where(runs.c.id == row.id).values(status="killed", end_time=end))
            killed.append(row.id)
    if killed:
        logger.info("recorded %d run(s) as killed: their process is gone (%s)", len(killed), ", ".join(killed))
    return killed


def record_dead_runs(database: Database) -> None:
    """Record "killed" for running runs whose process is provably gone; one read when there are none."""
    dead = database.read(dead_runs)
    if not dead:
        return
    try:
        database.write(lambda connection: mark_killed(connection, dead))
    except StoreError as error:  # e.g. a read-only store: they are still reported "killed", just not recorded
        logger.warning("could not record %d dead run(s) as killed: %s", len(dead), error)


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= 200 or not key.isprintable():
        raise ConfigError(f"metric name {key!r} must be printable text of 1-200 characters (e.g. 'val_loss').")
    return key


def new_run(
    connection: Connection, name: str, params: Any, tags: Mapping[str, str] | None, system: Mapping[str, Any]
) -> str:
    check_name(name, what="run name")
    run_id = uuid.uuid4().hex
    now = time.time()
    connection.execute(
        runs.insert().values(
            id=run_id,
            name=name,
            status="running",
            params=jsonable(dict(params or {})),
            tags={str(k): str(v) for k, v in (tags or {}).items()},
            system=jsonable(dict(system)),
            start_time=now,
            end_time=None,
            process=this_process(),
            heartbeat=now,
        )
    )
    return run_id


def reopen_run(connection: Connection, run_id: str) -> tuple[str, str]:
    """Set a run (``run_id`` or a unique prefix) "running" again as this process's; returns its full id and name."""
    full = find_run_id(connection, run_id)
    connection.execute(
        runs.update()
        .where(runs.c.id == full)
        .values(status="running", end_time=None, process=this_process(), heartbeat=time.time())
    )
    return full, connection.execute(sa.select(runs.c.name).where(runs.c.id == full)).scalar_one()


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
    """Insert metric rows, merge them into the run's rollups (for charts) and move the run's heartbeat to ``now``
    (the write is its sign of life)."""
    written = [(key, int(step), None if math.isnan(value) else float(value), epoch) for key, step, value, epoch in rows]
    values = [{"run_id": run_id, "key": key, "step": step, "epoch": epoch, "value": value, "time": now}
              for key, step, value, epoch in written]  # fmt: skip
    dialects.insert_rows(connection, metrics, values)
    add_rollups(connection, run_id, summarise(((key, step, value, now) for key, step, value, _ in written), LEVELS))
    dialects.execute_cached(connection, "heartbeat", _heartbeat, {"run_id": run_id, "now": now})


def _heartbeat() -> sa.Update:
    return runs.update().where(runs.c.id == sa.bindparam("run_id")).values(heartbeat=sa.bindparam("now"))


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


def run_infos(
    connection: Connection,
    rows: Sequence[Any],
    *,
    artifacts: bool = False,
    now: float | None = None,
    stale_after: float = STALE_AFTER_SECONDS,
) -> list[RunInfo]:
    now = time.time() if now is None else now
    ids = [row.id for row in rows]
    latest = latest_metrics(connection, ids) if ids else {}
    files: dict[str, dict[str, Blob]] = {run_id: {} for run_id in ids}
    if artifacts and ids:
        for a in connection.execute(sa.select(run_artifacts).where(run_artifacts.c.run_id.in_(ids))):
            files[a.run_id][a.name] = Blob(a.sha256, int(a.size))
    infos = []
    for row in rows:
        status = reported_status(row, now=now, stale_after=stale_after)
        end_time = row.end_time
        if end_time is None and status == "killed":  # found dead just now: it ended at its last sign of life
            end_time = last_sign_of_life(row)
        infos.append(
            RunInfo(
                id=row.id,
                name=row.name,
                status=status,
                start_time=row.start_time,
                end_time=end_time,
                params=dict(row.params or {}),
                tags=dict(row.tags or {}),
                system=dict(row.system or {}),
                latest=latest.get(row.id, {}),
                artifacts=files.get(row.id, {}),
                heartbeat=row.heartbeat,
                process=dict(row.process or {}),
            )
        )
    return infos


def list_runs(
    connection: Connection, *, name: str | None, status: str | None, limit: int, now: float, stale_after: float
) -> list[RunInfo]:
    """Runs, newest first, at most ``limit``: those called ``name`` and reported with ``status``, when given."""
    query = sa.select(runs).order_by(runs.c.start_time.desc())
    if name is not None:
        query = query.where(runs.c.name == name)
    if status in ("running", "stale"):  # the two split by liveness, below; running runs are few
        query = query.where(runs.c.status == "running")
    elif status is not None:
        query = query.where(runs.c.status == status).limit(limit)
    else:
        query = query.limit(limit)
    rows = connection.execute(query).all()
    if status in ("running", "stale"):
        rows = [row for row in rows if reported_status(row, now=now, stale_after=stale_after) == status]
    return run_infos(connection, rows[:limit], now=now, stale_after=stale_after)


_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 8.0  # a periodic write that found the store unreachable: next try, doubling


@dataclass(frozen=True)
class _Batch:
    """Metric rows (and, when finishing, the status) sent in one transaction, stamped with a time of this run's own:
    the rows' ``time`` and the heartbeat the transaction sets. A retry whose earlier attempt lost its connection
    while committing finds the heartbeat at ``stamp`` when that attempt did commit, and does not write it twice."""

    stamp: float
    rows: list[MetricRow]
    status: str | None = None


class Run:
    """A running run: log metrics (buffered), attach artifacts, finish with a status.

    When the store's database cannot be reached (it restarts, the network is down), logging goes on: rows stay in
    memory, one warning is logged, writes are tried again after 0.5 s, 1 s, 2 s, ... (at most 8 s apart) without
    holding up the caller, and one info line says when they are written. ``flush()`` and :meth:`finish` wait for
    the database (up to the store's ``reconnect_seconds``), and raise :class:`DatabaseUnavailable` with the rows
    still buffered when it does not come back; ``flush(wait=False)`` does not wait. Nothing is written twice: a
    batch whose commit was cut off before its answer is checked before it is sent again.

    Example:
        >>> with store.start_run("digits-cnn", params={"lr": 1e-3}) as run:
        ...     for step in range(100):
        ...         run.log({"loss": 0.5}, step=step)
        >>> store.run(run.id).status
        'finished'
    """

    def __init__(
        self, store: RunStore, run_id: str, name: str, *, flush_rows: int = 2000, flush_seconds: float = 15.0
    ) -> None:
        self.store, self.id, self.name = store, run_id, name
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.status: str = "running"
        self._rows: list[MetricRow] = []
        self._last_flush = time.monotonic()
        self._unsure: _Batch | None = None  # sent when the connection was lost: committed or not, unknown yet
        self._stamp = 0.0  # of the last batch: stamps only grow
        self._retry_delay = 0.0  # > 0 while the store does not answer this run's periodic writes
        self._retry_at = 0.0  # monotonic time before which a periodic write is not tried again

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, name={self.name!r}, status={self.status!r})"

    @property
    def pending(self) -> int:
        """Metric rows logged and not yet known to be written."""
        return len(self._rows) + (len(self._unsure.rows) if self._unsure is not None else 0)

    def log(self, values: Mapping[str, float], *, step: int, epoch: int | None = None) -> None:
        """Buffer one value per metric at ``step``; written with the next flush."""
        self.log_rows([(_check_key(key), step, float(value), epoch) for key, value in values.items()])

    def log_rows(self, rows: Iterable[MetricRow]) -> None:
        """Buffer ``(key, step, value, epoch)`` rows (keys already checked by the caller).

        When the buffer is due, it is written as by ``flush(wait=False)``: this call never waits for a database
        server that cannot be reached (it restarts, the network is down).
        """
        self._rows.extend(rows)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush(wait=False)

    def flush(self, *, wait: bool = True) -> None:
        """Write buffered metrics, and the run's heartbeat, in one transaction (nothing when none are buffered).

        With ``wait=True`` an unreachable database is waited for (up to the store's ``reconnect_seconds``), then
        :class:`DatabaseUnavailable` is raised with the rows still buffered. With ``wait=False`` it is not: the rows
        stay buffered, a warning is logged (once while the database stays away), and the write is tried again by
        the next flush at least 0.5 s, 1 s, 2 s, ... (at most 8 s) later.
        """
        now = time.monotonic()
        self._last_flush = now
        if wait:
            self._send(None)
            return
        if now < self._retry_at:
            return
        try:
            with self.store.database.waiting(0):
                self._send(None)
        except DatabaseUnavailable as error:
            if self._retry_delay == 0:
                logger.warning("run %s: %d metric row(s) kept in memory until the store answers: %s",
                               self.id, self.pending, error)  # fmt: skip
            self._retry_delay = min(max(2 * self._retry_delay, _RETRY_FIRST_S), _RETRY_MAX_S)
            self._retry_at = time.monotonic() + self._retry_delay

    def _send(self, status: str | None) -> None:
        written = 0
        if self._unsure is not None:
            self._commit(self._unsure, retry=True)  # DatabaseUnavailable: still unsure, new rows still buffered
            written, self._unsure = len(self._unsure.rows), None
        if self._rows or status is not None:
            batch = _Batch(max(time.time(), self._stamp + 1e-6), self._rows, status)
            self._stamp, self._rows = batch.stamp, []
            try:
                self._commit(batch, retry=False)
            except DatabaseUnavailable:
                self._unsure = batch
                raise
            written += len(batch.rows)
        if self._retry_delay:
            logger.info("run %s: the store answers again; %d metric row(s) kept in memory are written", self.id,
                        written)  # fmt: skip
            self._retry_delay = self._retry_at = 0.0

    def _commit(self, batch: _Batch, *, retry: bool) -> None:
        attempts = 0

        def write(connection: Connection) -> None:
            nonlocal attempts
            attempts += 1
            if retry or attempts > 1:  # an earlier attempt may have committed, and lost only the answer
                heartbeat = connection.execute(sa.select(runs.c.heartbeat).where(runs.c.id == self.id)).scalar()
                if heartbeat == batch.stamp:
                    return
            insert_metrics(connection, self.id, batch.rows, batch.stamp)
            if batch.status is not None:
                connection.execute(runs.update().where(runs.c.id == self.id).values(status=batch.status,
                                                                                     end_time=batch.stamp))  # fmt: skip

        self.store.database.write(write)

    def log_artifact(self, name: str, path: str | os.PathLike[str]) -> Blob:
        """Store a file (a plot, a config, a checkpoint) as a content-addressed artifact of this run."""
        return self.store.log_artifact(self.id, name, path)

    def finish(self, status: str = "finished") -> None:
        """Flush and record ``status`` ("finished", "failed" or "killed") and the end time.

        Waits for an unreachable database up to the store's ``reconnect_seconds``; then raises
        :class:`DatabaseUnavailable`, the run still running and its rows buffered (call ``finish`` again).
        """
        if status not in STATUSES[1:]:
            raise ConfigError(f"a run finishes as 'finished', 'failed' or 'killed'; got {status!r}.")
        self._send(status)
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
