"""Metric rollups: per (run, metric) summaries of power-of-two step buckets, kept up to date by every metric write.

A chart of a million steps needs about a thousand buckets (:mod:`kiln.store.series`). Aggregating them from the
metric rows reads all million rows; reading them from ``metric_rollups`` reads a thousand. Each metric write
(:func:`kiln.store.runs.insert_metrics`) summarises its rows at every level in :data:`LEVELS` (a bucket at level
``l`` holds the steps with ``step >> l == bucket``) and merges the summaries into the table with one upsert, so the
rollups always describe exactly the rows in ``metrics``, duplicate and re-logged steps included.

A :class:`Summary` is what the chart needs of a bucket, and merges exactly (the merge of two summaries is the
summary of both sets of rows): the row count; the least and the greatest finite value, each with its step and time
(ties go to the earliest step, then time); the first non-finite value's step and time (NaN is stored as NULL).

Example:
    >>> summaries = summarise([("loss", 0, 0.5, 1.0e9), ("loss", 1, float("nan"), 1.0e9)], LEVELS)
    >>> summaries["loss", 6, 0].low, summaries["loss", 6, 0].nan
    ((0.5, 0, 1000000000.0), (1, 1000000000.0))
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import dialects
from .schema import metric_rollups, metrics

__all__ = ["COLUMNS", "LEVELS", "Summary", "add_rollups", "rebuild_rollups", "summarise"]

# Bucket widths 2**6, 2**10, 2**14, 2**18 steps: a chart of up to 2**(l+10) steps reads at most ~16,000 rows of level l
# (a million steps: ~1,000 rows of level 10); series shorter than 64,000 steps are aggregated from their rows.
LEVELS = (6, 10, 14, 18)
_READ_BATCH = 20_000
COLUMNS = ("total", "low", "low_step", "low_time", "high", "high_step", "high_time", "nan_step", "nan_time")

Point = tuple[float, int, float]  # (value, step, time)


@dataclass
class Summary:
    """The rows of one bucket: ``total`` rows; ``low``/``high``: (value, step, time) of the least/greatest finite
    value; ``nan``: (step, time) of the first non-finite one. None where the bucket has no such row."""

    total: int = 0
    low: Point | None = None
    high: Point | None = None
    nan: tuple[int, float] | None = None

    def add(self, step: int, time: float, value: float | None) -> None:
        self.total += 1
        if value is None or not math.isfinite(value):
            if self.nan is None or (step, time) < self.nan:
                self.nan = (step, time)
            return
        point = (value, step, time)
        if self.low is None or point < self.low:
            self.low = point
        if self.high is None or (-value, step, time) < (-self.high[0], self.high[1], self.high[2]):
            self.high = point

    def merge(self, other: Summary) -> Summary:
        """This summary and ``other`` as one (a new Summary)."""
        low = min((p for p in (self.low, other.low) if p is not None), default=None)
        high = min((p for p in (self.high, other.high) if p is not None), key=lambda p: (-p[0], p[1], p[2]),
                   default=None)  # fmt: skip
        nan = min((p for p in (self.nan, other.nan) if p is not None), default=None)
        return Summary(self.total + other.total, low, high, nan)

    @classmethod
    def from_row(cls, row: Any) -> Summary:
        """From a ``metric_rollups`` row (or any row with its columns)."""
        return cls.from_values(row.total, row.low, row.low_step, row.low_time, row.high, row.high_step, row.high_time,
                               row.nan_step, row.nan_time)  # fmt: skip

    @classmethod
    def from_values(cls, total: int, *values: Any) -> Summary:
        """From the values of :data:`COLUMNS` after ``total``, in that order."""
        low, low_step, low_time, high, high_step, high_time, nan_step, nan_time = values
        return cls(
            total,
            None if low_step is None else (low, low_step, low_time),
            None if high_step is None else (high, high_step, high_time),
            None if nan_step is None else (nan_step, nan_time),
        )

    def columns(self) -> dict[str, Any]:
        low, high, nan = self.low or (None, None, None), self.high or (None, None, None), self.nan or (None, None)
        return {
            "total": self.total, "low": low[0], "low_step": low[1], "low_time": low[2],
            "high": high[0], "high_step": high[1], "high_time": high[2], "nan_step": nan[0], "nan_time": nan[1],
        }  # fmt: skip


def _summary(members: list[tuple[int, float, float | None]]) -> Summary:
    """The summary of one bucket's ``(step, time, value)`` rows (builtin min/max over tuples: C loops, not Python)."""
    finite = [(v, s, t) for s, t, v in members if v is not None and -math.inf < v < math.inf]
    low = high = nan = None
    if finite:
        low = min(finite)
        top = max(v for v, _, _ in finite)
        step, time, value = min((s, t, v) for v, s, t in finite if v == top)  # the earliest of the greatest
        high = (value, step, time)
    if len(finite) < len(members):
        nan = min((s, t) for s, t, v in members if v is None or not -math.inf < v < math.inf)
    return Summary(len(members), low, high, nan)


def summarise(rows: Iterable[tuple[str, int, float | None, float]], levels: Iterable[int]) -> dict[Any, Summary]:
    """Summaries of ``(key, step, value, time)`` rows: ``{(key, level, bucket): Summary}`` for each of ``levels``.

    The rows are summarised once, at the finest level; each coarser bucket is the merge of the finer ones it holds.
    """
    finest, *coarser = sorted(levels)
    groups: dict[tuple[str, int], list[tuple[int, float, float | None]]] = {}
    for key, step, value, time in rows:
        members = groups.get((key, step >> finest))
        if members is None:
            members = groups[key, step >> finest] = []
        members.append((step, time, value))
    base = {(key, finest, bucket): _summary(members) for (key, bucket), members in groups.items()}
    out = dict(base)
    for level in coarser:
        for (key, _, bucket), summary in base.items():
            wide = (key, level, bucket >> (level - finest))
            found = out.get(wide)
            out[wide] = summary if found is None else found.merge(summary)
    return out


def _earlier(excluded: Any, value: str | None, step: str, time: str) -> Any:
    """SQL: ``excluded``'s (value, step, time) comes before the stored one (the stored one absent: always)."""
    t, e = metric_rollups.c, excluded
    later_step = (e[step] < t[step]) | ((e[step] == t[step]) & (e[time] < t[time]))
    if value is None:  # the non-finite point: by step, then time
        before = later_step
    else:
        compare = (e[value] < t[value]) if value == "low" else (e[value] > t[value])
        before = compare | ((e[value] == t[value]) & later_step)
    return e[step].is_not(None) & (t[step].is_(None) | before)


def _merge(excluded: Any) -> dict[str, Any]:
    t = metric_rollups.c
    out: dict[str, Any] = {"total": t.total + excluded.total}
    for value, names in (("low", ("low", "low_step", "low_time")), ("high", ("high", "high_step", "high_time")),
                         (None, ("nan_step", "nan_time"))):  # fmt: skip
        better = _earlier(excluded, value, *names[-2:])
        for name in names:
            out[name] = sa.case((better, excluded[name]), else_=t[name])
    return out


def add_rollups(connection: Connection, run_id: str, summaries: dict[Any, Summary]) -> None:
    """Merge ``summaries`` (from :func:`summarise`) of new rows of ``run_id`` into its stored rollups."""
    rows = [
        {"run_id": run_id, "key": key, "level": level, "bucket": bucket, **summary.columns()}
        for (key, level, bucket), summary in summaries.items()
    ]
    dialects.upsert(connection, metric_rollups, rows, _merge)


def rebuild_rollups(connection: Connection, run_ids: Iterable[str] | None = None) -> int:
    """Recompute the rollups of ``run_ids`` (None: every run) from their metric rows; returns the rows read.

    Reads the rows of one run at a time in step order, so only a few buckets per level are held in memory.
    """
    if run_ids is None:
        run_ids = list(connection.execute(sa.select(metrics.c.run_id).distinct()).scalars())
    read = 0
    for run_id in run_ids:
        connection.execute(metric_rollups.delete().where(metric_rollups.c.run_id == run_id))
        query = (
            sa.select(metrics.c.key, metrics.c.step, metrics.c.value, metrics.c.time)
            .where(metrics.c.run_id == run_id)
            .order_by(metrics.c.key, metrics.c.step)
        )
        for rows in connection.execute(query.execution_options(yield_per=_READ_BATCH)).partitions():
            add_rollups(connection, run_id, summarise(rows, LEVELS))  # Rows unpack as (key, step, value, time)
            read += len(rows)
    return read
