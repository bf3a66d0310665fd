"""Read queries for dashboards (``kiln ui``): a page of runs, a run's metric keys, its live state and its versions.

Everything here is SQLAlchemy Core over :mod:`kiln.store.schema`, so it runs the same on every database the store
supports, and every query touches only what one page shows: a page of 50 runs out of 10,000 costs a count, one
``LIMIT``/``OFFSET`` select and one index seek per (run, chosen metric), never a scan of the metrics table. Metric
series, downsampled for charts, live in :mod:`kiln.store.series`.

Example:
    >>> from kiln.store import Store
    >>> from kiln.store.views import RunQuery, run_page
    >>> page = run_page(Store(), RunQuery(status="finished", sort="metric:val_loss", descending=False))
    >>> [(row.name, row.latest.get("val_loss")) for row in page.runs[:2]]
    [('digits-cnn', 0.061), ('digits-mlp', 0.094)]
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import ConfigError
from .liveness import STALE_AFTER_SECONDS
from .runs import REPORTED_STATUSES, find_run_id, record_dead_runs, reported_status
from .schema import metrics, models, runs, versions

__all__ = [
    "MAX_PAGE",
    "SORTS",
    "RunPage",
    "RunQuery",
    "RunRow",
    "RunState",
    "metric_keys",
    "run_page",
    "run_state",
    "run_versions",
]

MAX_PAGE = 200  # runs per page at most
MAX_METRIC_COLUMNS = 8
SORTS = ("start", "name", "status", "duration")  # and "metric:<key>"
DEFAULT_COLUMNS = ("loss", "val_loss", "accuracy", "val_accuracy")  # shown when present and none are chosen
_TAG_KEY = re.compile(r"[A-Za-z0-9_.:/ -]{1,64}")  # safe inside a JSON path on every dialect


@dataclass(frozen=True, kw_only=True)
class RunQuery:
    """Which runs, in which order, and which metrics' last values a page of the run list shows.

    ``status``: one of :data:`~kiln.store.runs.REPORTED_STATUSES`; ``tag``: ``"key"`` (has the tag) or
    ``"key=value"``; ``text``: part of the name (any case) or the start of the id; ``sort``: one of :data:`SORTS` or
    ``"metric:<key>"`` (by that metric's last value, runs without it last); ``metrics``: the columns (empty: those
    of :data:`DEFAULT_COLUMNS` the page's runs have).
    """

    status: str | None = None
    tag: str | None = None
    text: str | None = None
    sort: str = "start"
    descending: bool = True
    offset: int = 0
    limit: int = 50
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in REPORTED_STATUSES:
            raise ConfigError(f"status must be one of {', '.join(REPORTED_STATUSES)}; got {self.status!r}.")
        if self.sort not in SORTS and not (self.sort.startswith("metric:") and len(self.sort) > len("metric:")):
            raise ConfigError(f"sort must be one of {', '.join(SORTS)} or 'metric:<name>'; got {self.sort!r}.")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise ConfigError(f"offset must be an integer >= 0; got {self.offset!r}.")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_PAGE:
            raise ConfigError(f"limit must be an integer in 1..{MAX_PAGE}; got {self.limit!r}.")
        if len(self.metrics) > MAX_METRIC_COLUMNS:
            raise ConfigError(f"at most {MAX_METRIC_COLUMNS} metric columns; got {len(self.metrics)}.")
        for key in self.metrics:
            _check_key(key)
        if self.tag is not None:
            key = self.tag.partition("=")[0]
            if not _TAG_KEY.fullmatch(key):
                raise ConfigError(
                    f"tag filter {self.tag[:80]!r}: the key must be 1-64 letters, digits or '_.:/ -' (e.g. 'team' or "
                    "'team=vision')."
                )
        if self.text is not None and len(self.text) > 200:
            raise ConfigError("the text filter is at most 200 characters.")


@dataclass(frozen=True, kw_only=True)
class RunRow:
    """One line of the run list; ``latest`` holds the last value of each chosen metric the run has (NaN kept)."""

    id: str
    name: str
    status: str
    start_time: float
    end_time: float | None
    heartbeat: float | None
    tags: dict[str, str] = field(default_factory=dict)
    latest: dict[str, float] = field(default_factory=dict)

    def duration(self, now: float) -> float:
        """Seconds from start to end; for a run still going, to ``now``."""
        end = self.end_time if self.end_time is not None else (now if self.status == "running" else self.heartbeat)
        return max(0.0, (end if end is not None else self.start_time) - self.start_time)


@dataclass(frozen=True, kw_only=True)
class RunPage:
    """A page of runs, how many match in all, the metric columns shown and the metric keys the page's runs have."""

    runs: list[RunRow]
    total: int
    offset: int
    limit: int
    columns: tuple[str, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class RunState:
    """What changes while a run trains: its status and its last write (a poll compares ``token``)."""

    id: str
    status: str
    heartbeat: float | None
    end_time: float | None

    @property
    def token(self) -> str:
        """Changes whenever the run writes metrics or changes status."""
        return f"{self.status}:{self.heartbeat!r}:{self.end_time!r}"


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= 200 or not key.isprintable():
        raise ConfigError(f"metric name {str(key)[:80]!r} must be printable text of 1-200 characters.")
    return key


def _last(run_id: Any, key: str, column: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
    """``column`` of the row with the highest step of metric ``key`` of run ``run_id`` (one index seek)."""
    return (
        sa.select(column)
        .where(metrics.c.run_id == run_id, metrics.c.key == key)
        .order_by(metrics.c.step.desc())
        .limit(1)
        .scalar_subquery()
    )


def _filters(query: RunQuery) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if query.status in ("running", "stale"):
        where.append(runs.c.status == "running")  # split by liveness afterwards; running runs are few
    elif query.status is not None:
        where.append(runs.c.status == query.status)
    if query.tag:
        key, has_value, value = query.tag.partition("=")
        field_ = runs.c.tags[key].as_string()
        where.append(field_ == value if has_value else field_.is_not(None))
    text = (query.text or "").strip()
    if text:
        match = sa.func.lower(runs.c.name).contains(text.lower(), autoescape=True)
        if re.fullmatch(r"[0-9a-f]{1,32}", text.lower()):
            match = match | runs.c.id.startswith(text.lower(), autoescape=True)
        where.append(match)
    return where


def _order(query: RunQuery) -> list[sa.ColumnElement[Any]]:
    if query.sort.startswith("metric:"):
        column: sa.ColumnElement[Any] = _last(runs.c.id, query.sort[len("metric:") :], metrics.c.value)
    else:
        column = {
            "start": runs.c.start_time,
            "name": runs.c.name,
            "status": runs.c.status,
            "duration": sa.func.coalesce(runs.c.end_time, runs.c.heartbeat, runs.c.start_time) - runs.c.start_time,
        }[query.sort]
    first = sa.nulls_last(column.desc() if query.descending else column.asc())
    return [first, runs.c.start_time.desc(), runs.c.id]


def _latest(connection: Connection, ids: list[str], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The last value of each of ``keys`` for each run: one select, two index seeks per (run, key)."""
    out: dict[str, dict[str, float]] = {run_id: {} for run_id in ids}
    if not ids or not keys:
        return out
    columns = []
    for index, key in enumerate(keys):
        columns.append(_last(runs.c.id, key, metrics.c.step).label(f"s{index}"))
        columns.append(_last(runs.c.id, key, metrics.c.value).label(f"v{index}"))
    for row in connection.execute(sa.select(runs.c.id, *columns).where(runs.c.id.in_(ids))):
        for index, key in enumerate(keys):
            if row[1 + 2 * index] is not None:  # the run has the metric; a NULL value is a logged NaN
                value = row[2 + 2 * index]
                out[row.id][key] = math.nan if value is None else float(value)
    return out


def _keys_of(connection: Connection, ids: list[str]) -> dict[str, list[str]]:
    """The distinct metric keys of each run, by a loose index scan: one seek per (run, key), not per logged row.

    A recursive CTE hops from each key to the next larger one (``min(key) > previous``), which both SQLite and
    PostgreSQL answer from the ``(run_id, key, step)`` index, so a run with a million logged steps costs no more
    than one with ten.
    """
    if not ids:
        return {}
    first = sa.select(sa.func.min(metrics.c.key)).where(metrics.c.run_id == runs.c.id).scalar_subquery()
    seed = sa.select(runs.c.id.label("run_id"), first.label("key")).where(runs.c.id.in_(ids))
    hops = seed.cte("hops", recursive=True)
    following = (
        sa.select(sa.func.min(metrics.c.key))
        .where(metrics.c.run_id == hops.c.run_id, metrics.c.key > hops.c.key)
        .scalar_subquery()
    )
    hops = hops.union_all(sa.select(hops.c.run_id, following).where(hops.c.key.is_not(None)))
    out: dict[str, list[str]] = {run_id: [] for run_id in ids}
    for run_id, key in connection.execute(sa.select(hops.c.run_id, hops.c.key).where(hops.c.key.is_not(None))):
        out[run_id].append(key)
    return {run_id: sorted(keys) for run_id, keys in out.items()}


def metric_keys(store: Any, run_id: str) -> list[str]:
    """The names of every metric a run logged, sorted (``run_id`` may be a unique prefix)."""

    def read(connection: Connection) -> list[str]:
        full = find_run_id(connection, run_id)
        return _keys_of(connection, [full])[full]

    return list(store.database.read(read))


def run_page(
    store: Any, query: RunQuery, *, now: float | None = None, stale_after: float = STALE_AFTER_SECONDS
) -> RunPage:
    """One page of the run list: filtered, sorted and cut on the database, with the chosen metrics' last values.

    A run recorded "running" whose process is provably gone is recorded "killed" first, as :meth:`Store.runs` does.
    """
    now = time.time() if now is None else now
    record_dead_runs(store.database)

    def read(connection: Connection) -> RunPage:
        where = _filters(query)
        shown = (runs.c.id, runs.c.name, runs.c.status, runs.c.start_time, runs.c.end_time, runs.c.heartbeat,
                 runs.c.process, runs.c.tags)  # fmt: skip
        select = sa.select(*shown).where(*where).order_by(*_order(query))
        if query.status in ("running", "stale"):
            found = [row for row in connection.execute(select)
                     if reported_status(row, now=now, stale_after=stale_after) == query.status]  # fmt: skip
            total, rows = len(found), found[query.offset : query.offset + query.limit]
        else:
            total = int(connection.execute(sa.select(sa.func.count()).select_from(runs).where(*where)).scalar_one())
            rows = list(connection.execute(select.offset(query.offset).limit(query.limit)))
        ids = [row.id for row in rows]
        keys_by_run = _keys_of(connection, ids)
        keys = tuple(sorted({key for found in keys_by_run.values() for key in found}))
        columns = query.metrics or tuple(key for key in DEFAULT_COLUMNS if key in keys)
        latest = _latest(connection, ids, columns)
        page = [
            RunRow(
                id=row.id, name=row.name, status=reported_status(row, now=now, stale_after=stale_after),
                start_time=row.start_time, end_time=row.end_time, heartbeat=row.heartbeat,
                tags={str(k): str(v) for k, v in (row.tags or {}).items()}, latest=latest[row.id],
            )
            for row in rows
        ]  # fmt: skip
        return RunPage(runs=page, total=total, offset=query.offset, limit=query.limit, columns=columns, keys=keys)

    page: RunPage = store.database.read(read)
    return page


def run_state(
    store: Any, run_id: str, *, now: float | None = None, stale_after: float = STALE_AFTER_SECONDS
) -> RunState:
    """A run's status and last write, from its row alone (what a live page polls)."""
    now = time.time() if now is None else now

    def read(connection: Connection) -> RunState:
        full = find_run_id(connection, run_id)
        row = connection.execute(sa.select(runs).where(runs.c.id == full)).one()
        status = reported_status(row, now=now, stale_after=stale_after)
        return RunState(id=full, status=status, heartbeat=row.heartbeat, end_time=row.end_time)

    state: RunState = store.database.read(read)
    return state


def run_versions(store: Any, run_id: str) -> list[str]:
    """References (``name@N``) of the live model versions registered from a run, oldest first."""

    def read(connection: Connection) -> list[str]:
        full = find_run_id(connection, run_id)
        query = (
            sa.select(models.c.name, versions.c.version)
            .join(models, models.c.id == versions.c.model_id)
            .where(versions.c.run_id == full, versions.c.status == "ready")
            .order_by(versions.c.created, versions.c.id)
        )
        return [f"{name}@{version}" for name, version in connection.execute(query)]

    return list(store.database.read(read))
