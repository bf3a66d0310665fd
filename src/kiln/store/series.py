"""Metric series for charts: at most ~2,000 points, spikes and NaN steps kept, read from a thousand rows or so.

A series short enough is returned as logged. A longer one is cut into step buckets whose width is a power of two
(bucket ``step // width``), and each bucket gives its least and its greatest finite value at the steps where they
were logged (min/max per pixel column): one spike among a million steps is the maximum of its bucket, so the chart
draws it where it happened. NaN and infinite values (the store keeps NaN as NULL) are never plotted as numbers; each
bucket that holds one reports its first such step in ``nonfinite``, for the chart to mark, and a bucket that holds
nothing else gives a gap there (a None value), as the logged series would. The series' first and last rows are
points too, so the line starts and ends where the run did, at the latest value a person watching it wants to see.

Buckets come from the rollups every metric write keeps (:mod:`kiln.store.rollups`, levels of 2**6 to 2**18 steps):
a bucket is the exact merge of the rollups it covers, so a million-step series reads ~1,000 rows of level 10 where
aggregating its rows would read a million. Widths below the smallest level (series under ~64,000 steps) are
aggregated from the rows. A :class:`SeriesCache` keeps the buckets of each (run, metric) and, while the run goes on,
reads only from its last bucket onwards; when the buckets outgrow the limit, neighbours merge, exactly.

Example:
    >>> cache = SeriesCache(store)
    >>> series = cache.series(run_id, "batch_loss")
    >>> len(series.step) <= 2000, series.total, series.nonfinite[:1]
    (True, 1000000, [700000])
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .rollups import COLUMNS, LEVELS, Summary
from .runs import find_run_id
from .schema import metric_rollups, metrics, runs

__all__ = ["MAX_POINTS", "Series", "SeriesCache", "downsample"]

MAX_POINTS = 2000  # points per series sent to a chart: two per bucket, and the first and last rows


@dataclass(frozen=True, kw_only=True)
class Series:
    """A chart-ready series: ``step``, ``time`` and ``value`` (None where not finite) of equal length, in step order.

    ``total`` is how many values were logged; ``downsampled`` says whether points are bucket extremes;
    ``nonfinite`` lists steps whose value was NaN or infinite (the first of each bucket when downsampled).
    """

    key: str
    step: list[int]
    time: list[float]
    value: list[float | None]
    nonfinite: list[int] = field(default_factory=list)
    total: int = 0
    downsampled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "step": self.step, "time": self.time, "value": self.value,
                "nonfinite": self.nonfinite, "total": self.total, "downsampled": self.downsampled}  # fmt: skip


Row = tuple[int, float, float | None]  # (step, time, value)


@dataclass
class _Entry:
    width: int
    buckets: dict[int, Summary]  # step // width -> its rows' summary, in step order
    first: Row
    generation: Any  # the run's process record and end time: a resumed run may re-log old steps


_RAW = sa.select(metrics.c.step, metrics.c.time, metrics.c.value)
# Of the rows at the first (last) step, the earliest (latest) logged; among equal times, a NaN first (last).


# A series as logged is in step order, rows at one step by time, then value (NaN first). Its first row is the least
# in that order; its last, of the rows at its last step, the latest logged (a NaN last, among equal times). The
# database orders by step alone (its index does); the rest is sorted here, so no query sorts a long series.
def _first_key(row: Row) -> tuple[Any, ...]:
    return (row[0], row[1], row[2] is not None, row[2] or 0.0)


def _last_key(row: Row) -> tuple[Any, ...]:
    return (row[0], row[1], row[2] is None, row[2] or 0.0)


def _at(connection: Connection, where: Any, step: int) -> list[Row]:
    return [_row(row) for row in connection.execute(_RAW.where(where, metrics.c.step == step))]


def _row(row: Any) -> Row:
    step, time, value = row
    return int(step), float(time), None if value is None or math.isnan(value) else float(value)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _raw(key: str, rows: Sequence[Any]) -> Series:
    steps: list[int] = []
    times: list[float] = []
    values: list[float | None] = []
    nonfinite: list[int] = []
    for step, time, value in rows:
        steps.append(int(step))
        times.append(float(time))
        if _finite(value):
            values.append(float(value))
        else:
            values.append(None)
            nonfinite.append(int(step))
    return Series(key=key, step=steps, time=times, value=values, nonfinite=nonfinite, total=len(steps))


def _width(low: int, high: int, buckets: int) -> int:
    """The least power of two that cuts steps ``low..high`` into at most ``buckets`` buckets."""
    width = 1 << max(0, math.ceil(math.log2((high - low + 1) / buckets)))
    while high // width - low // width + 1 > buckets:  # aligned on 0, the span may straddle one more
        width *= 2
    return width


def _bucket_rows(rows: Iterable[Any], width: int) -> dict[int, Summary]:
    """Summaries of ``(step, time, value)`` rows in buckets of ``width`` steps (step order)."""
    out: dict[int, Summary] = {}
    for step, time, value in rows:
        index = int(step) // width
        found = out.get(index)
        if found is None:
            found = out[index] = Summary()
        found.add(int(step), float(time), value)
    return out


def _coarsen(buckets: dict[int, Summary], factor: int) -> dict[int, Summary]:
    """Buckets ``factor`` (a power of two) times as wide: each the exact merge of those it covers."""
    out: dict[int, Summary] = {}
    for index, summary in buckets.items():
        wide = index // factor
        found = out.get(wide)
        out[wide] = summary if found is None else found.merge(summary)
    return out


def _read(connection: Connection, run_id: str, key: str, width: int, start: int, stop: int) -> dict[int, Summary]:
    """Buckets of ``width`` steps covering steps ``start..stop`` (both in bucket ``start // width`` on)."""
    where = (metrics.c.run_id == run_id) & (metrics.c.key == key)
    level = max((level for level in LEVELS if 1 << level <= width), default=None)
    first, last = start // width * width, (stop // width + 1) * width  # whole buckets
    if level is None:  # narrower than any rollup: from the rows (under 64 x buckets steps)
        rows = connection.execute(_RAW.where(where, metrics.c.step >= first, metrics.c.step < last)
                                  .order_by(metrics.c.step))  # fmt: skip
        return _bucket_rows(rows, width)
    r = metric_rollups.c
    query = (
        sa.select(r.bucket, *(r[name] for name in COLUMNS))
        .where(r.run_id == run_id, r.key == key, r.level == level)
        .where(r.bucket >= first >> level, r.bucket < last >> level)
        .order_by(r.bucket)
    )
    rolled = {bucket: Summary.from_values(*values) for bucket, *values in connection.execute(query)}
    return _coarsen(rolled, width >> level)


def _points(key: str, buckets: dict[int, Summary], first: Row, last: Row) -> Series:
    """The ``first`` row, each bucket's least and greatest finite value at their own steps (one point when they
    coincide; for a bucket of non-finite values only, a gap (None) at its first one), and the ``last`` row."""
    points: list[Row] = [first]
    nonfinite: list[int] = []
    for summary in buckets.values():
        if summary.nan is not None:
            nonfinite.append(summary.nan[0])
        extremes: list[Row] = sorted({(p[1], p[2], p[0]) for p in (summary.low, summary.high) if p is not None})
        if not extremes and summary.nan is not None:
            extremes = [(summary.nan[0], summary.nan[1], None)]
        for point in extremes:
            if point != points[-1]:  # the first row may be an extreme too
                points.append(point)
    if last != points[-1]:
        points.append(last)
    if not _finite(last[2]) and last[0] not in nonfinite[-1:]:
        nonfinite.append(last[0])
    steps = [point[0] for point in points]
    times = [point[1] for point in points]
    values = [point[2] for point in points]
    total = sum(b.total for b in buckets.values())
    return Series(key=key, step=steps, time=times, value=values, nonfinite=nonfinite, total=total,
                  downsampled=True)  # fmt: skip


def downsample(key: str, rows: Iterable[tuple[int, float, float | None]], *, max_points: int = MAX_POINTS) -> Series:
    """The series of ``(step, time, value)`` rows (NaN as None or NaN) as :class:`SeriesCache` gives it, computed
    from the rows alone: what the rollups must reproduce (the tests compare the two)."""
    rows = sorted((_row(row) for row in rows), key=_first_key)
    buckets = max_points // 2 - 1
    if len(rows) <= max_points:
        return _raw(key, rows)
    first, last = min(rows, key=_first_key), max(rows, key=_last_key)
    return _points(key, _bucket_rows(rows, _width(rows[0][0], rows[-1][0], buckets)), first, last)


class SeriesCache:
    """Downsampled metric series of one store, kept between requests (thread-safe; ``entries`` most recent).

    Example:
        >>> SeriesCache(store).series("3f2a9c", "val_loss").value[-1]
        0.061
    """

    def __init__(self, store: Any, *, max_points: int = MAX_POINTS, entries: int = 512) -> None:
        if max_points < 4:
            raise ValueError(f"max_points must be at least 4; got {max_points}.")
        self.store = store
        self.max_points = max_points
        self.buckets = max_points // 2 - 1  # two points each, and the first and last rows
        self.entries = entries
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def series(self, run_id: str, key: str) -> Series:
        """One metric of one run (``run_id`` may be a unique prefix), at most ``max_points`` points."""
        return self.many(run_id, [key])[key]

    def many(self, run_id: str, keys: Sequence[str]) -> dict[str, Series]:
        """Several metrics of one run, read in one transaction (a consistent snapshot)."""

        def read(connection: Connection) -> dict[str, Series]:
            full = find_run_id(connection, run_id)
            # Cached buckets hold while the run keeps logging forward. A resumed run (status back to running, often a
            # new process) re-logs steps from its checkpoint on, behind the cache: read it afresh then, and once more
            # when a run ends (its end time is part of the key).
            row = connection.execute(sa.select(runs.c.process, runs.c.end_time).where(runs.c.id == full)).one()
            generation = (repr(row.process), row.end_time)
            return {key: self._series(connection, full, key, generation) for key in keys}

        result: dict[str, Series] = self.store.database.read(read)
        return result

    # ------------------------------------------------------------------ internals
    def _series(self, connection: Connection, run_id: str, key: str, generation: Any) -> Series:
        where = (metrics.c.run_id == run_id) & (metrics.c.key == key)
        with self._lock:
            entry = self._cache.get((run_id, key))
        if entry is None or entry.generation != generation:
            # Up to max_points rows (plus one) as logged: when that is all, the series is short and goes as it is.
            limit = self.max_points
            rows = connection.execute(_RAW.where(where).order_by(metrics.c.step).limit(limit + 1)).all()
            if len(rows) <= limit:
                return _raw(key, sorted((_row(row) for row in rows), key=_first_key))
            # Two index seeks: SQLite seeks for a lone min() or max(), but scans every row for both in one select.
            low, high = connection.execute(sa.select(
                sa.select(sa.func.min(metrics.c.step)).where(where).scalar_subquery(),
                sa.select(sa.func.max(metrics.c.step)).where(where).scalar_subquery(),
            )).one()  # fmt: skip
            width = _width(int(low), int(high), self.buckets)
            first = min(_at(connection, where, int(low)), key=_first_key)
            entry = _Entry(width, _read(connection, run_id, key, width, int(low), int(high)), first, generation)
        else:  # only the rows from the last bucket on are new (or changed)
            found = connection.execute(sa.select(sa.func.max(metrics.c.step)).where(where)).scalar()
            if found is None:  # its rows are gone
                return Series(key=key, step=[], time=[], value=[])
            high = int(found)
            origin = min(entry.buckets) * entry.width if entry.buckets else high  # the first bucket's first step
            width = entry.width
            while high // width - origin // width + 1 > self.buckets:  # far behind: widen first (exact)
                width *= 2
            buckets = _coarsen(entry.buckets, width // entry.width) if width != entry.width else entry.buckets
            last = max(buckets) if buckets else high // width
            fresh = _read(connection, run_id, key, width, last * width, high)
            entry = _Entry(width, {i: b for i, b in buckets.items() if i < last} | fresh, entry.first, generation)
        with self._lock:
            self._cache[(run_id, key)] = entry
            self._cache.move_to_end((run_id, key))
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
        last_row = max(_at(connection, where, high), key=_last_key)
        return _points(key, entry.buckets, entry.first, last_row)
