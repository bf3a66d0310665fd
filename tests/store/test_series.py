"""Metric rollups and the series read from them: equal to downsampling the rows themselves, on SQLite and PostgreSQL.

``kiln.store.series.downsample`` computes a chart's series from the metric rows alone; every series a SeriesCache
reads (from rollups at each level, from rows for narrow buckets, growing while a run logs) must be that, point for
point, with NaN, infinities, steps logged out of order and steps logged twice.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import sqlalchemy as sa

from kiln.store import Store
from kiln.store.copy import copy_store
from kiln.store.rollups import LEVELS, Summary, rebuild_rollups, summarise
from kiln.store.schema import metric_rollups, metrics
from kiln.store.series import SeriesCache, downsample

from .conftest import Backend

BACKENDS = ("sqlite", "postgresql")


def _rows(store: Store, run_id: str, key: str) -> list[tuple[int, float, float | None]]:
    query = sa.select(metrics.c.step, metrics.c.time, metrics.c.value).where(
        metrics.c.run_id == run_id, metrics.c.key == key
    )
    return store.database.read(lambda c: [tuple(r) for r in c.execute(query)])


def _stored_rollups(store: Store) -> dict[Any, Summary]:
    def read(connection: sa.engine.Connection) -> dict[Any, Summary]:
        rows = connection.execute(sa.select(metric_rollups))
        return {(r.run_id, r.key, r.level, r.bucket): Summary.from_row(r) for r in rows}

    return store.database.read(read)


def _expected_rollups(store: Store) -> dict[Any, Summary]:
    """The rollups of every metric row, computed from the rows in Python."""

    def read(connection: sa.engine.Connection) -> dict[Any, Summary]:
        out: dict[Any, Summary] = {}
        for run_id in connection.execute(sa.select(metrics.c.run_id).distinct()).scalars():
            rows = connection.execute(sa.select(metrics.c.key, metrics.c.step, metrics.c.value, metrics.c.time)
                                      .where(metrics.c.run_id == run_id))  # fmt: skip
            out |= {(run_id, *k): s for k, s in summarise(((k, int(st), v, t) for k, st, v, t in rows), LEVELS).items()}
        return out

    return store.database.read(read)


def _value(rng: random.Random, step: int) -> float:
    roll = rng.random()
    if roll < 0.01:
        return rng.choice([math.nan, math.inf, -math.inf])
    if roll < 0.02:
        return rng.choice([1e6, -1e6])  # spikes
    return math.sin(step / 300) + 0.1 * rng.random()


@pytest.mark.parametrize(
    ("count", "low", "high", "max_points"),
    [
        (3_000, -500, 2_500, 2_000),  # buckets of 4 steps: aggregated from the rows
        (3_000, 0, 6_400, 100),  # 64 or 128 steps: level 6, many steps logged twice
        (5_000, 0, 100_000, 200),  # 1,024 steps: level 10
        (4_000, -(2**35), 2**35, 50),  # beyond 2**31, negative too: level 18
    ],
)
def test_rollup_series_equal_the_downsampled_rows(
    store: Store, count: int, low: int, high: int, max_points: int
) -> None:
    rng = random.Random(count + max_points)
    run = store.start_run("random", flush_rows=10**9)
    steps = [rng.randrange(low, high) for _ in range(count)]
    steps += rng.sample(steps, count // 10)  # re-logged steps (a resumed run), some in the same flush
    rng.shuffle(steps)
    for start in range(0, len(steps), 700):  # flushes of unordered steps
        run.log_rows(("loss", s, _value(rng, s), None) for s in steps[start : start + 700])
        run.flush()
    run.finish()
    rows = _rows(store, run.id, "loss")
    series = SeriesCache(store, max_points=max_points).series(run.id, "loss")
    assert series == downsample("loss", rows, max_points=max_points)
    assert series.downsampled and series.total == len(steps) and len(series.step) <= max_points
    finite = [v for _, _, v in rows if v is not None and math.isfinite(v)]
    shown = [v for v in series.value if v is not None]
    assert (min(shown), max(shown)) == (min(finite), max(finite))  # the spikes, at the steps they were logged at
    logged = {(s, v) for s, _, v in rows}
    assert all((s, v) in logged for s, v in zip(series.step, series.value, strict=True))  # each point as logged
    nonfinite = sorted(s for s, _, v in rows if v is None or not math.isfinite(v))
    assert nonfinite[0] in series.nonfinite and set(series.nonfinite) <= set(nonfinite)
    assert _stored_rollups(store) == _expected_rollups(store)


def test_a_growing_series_read_warm_equals_a_cold_read(store: Store) -> None:
    """Polling a running run reads from its last bucket on, widening as it grows; always equal to a cold read."""
    rng = random.Random(7)
    run = store.start_run("growing", flush_rows=10**9)
    cache = SeriesCache(store, max_points=120)
    step = 0
    for chunk in (50, 2_000, 3_000, 20_000, 10, 50_000):  # rows, then levels 6 and 10 of the rollups
        run.log_rows(("loss", s, _value(rng, s), None) for s in range(step, step + chunk))
        run.flush()
        step += chunk
        warm = cache.series(run.id, "loss")
        assert warm == SeriesCache(store, max_points=120).series(run.id, "loss")
        assert warm == downsample("loss", _rows(store, run.id, "loss"), max_points=120)
        assert warm.total == step and warm.step[-1] == step - 1  # the line ends at the latest value
    run.finish()


def test_a_spike_and_a_nan_are_shown_at_their_steps(store: Store) -> None:
    run = store.start_run("long", flush_rows=10**9)
    run.log_rows(("loss", s, 50.0 if s == 123_457 else math.nan if s == 150_001 else 1.0 / (1 + s), None)
                 for s in range(200_000))  # fmt: skip
    run.finish()
    series = SeriesCache(store).series(run.id, "loss")
    assert series.downsampled and len(series.step) <= 2000 and series.total == 200_000
    assert series.value[series.step.index(123_457)] == 50.0
    assert series.nonfinite == [150_001]
    assert (series.step[0], series.value[0], series.step[-1]) == (0, 1.0, 199_999)


def test_steps_beyond_32_bits_round_trip(store: Store) -> None:
    big = [2**31 - 1, 2**31, 2**31 + 5, 2**40, 2**62]
    with store.start_run("long-running") as run:
        for step in big:
            run.log({"loss": float(step % 7)}, step=step)
    assert [s for s, _ in store.metrics(run.id)["loss"]] == big
    assert SeriesCache(store).series(run.id, "loss").step == big
    assert _stored_rollups(store) == _expected_rollups(store)


def test_rebuilding_rollups_gives_what_the_writes_kept(store: Store) -> None:
    rng = random.Random(3)
    for name in ("a", "b"):
        with store.start_run(name, flush_rows=5_000) as run:
            for step in range(11_000):  # 22,000 rows: more than rebuild_rollups reads at once
                run.log({"loss": _value(rng, step), "acc": rng.random()}, step=step // 2)
    kept = _stored_rollups(store)
    assert kept == _expected_rollups(store) and len(kept) > 100
    store.database.write(lambda connection: rebuild_rollups(connection))
    assert _stored_rollups(store) == kept


def test_a_copied_store_has_the_rollups_of_its_metrics(backend: Backend, tmp_path: Any) -> None:
    laptop = Store(tmp_path / "laptop")
    with laptop.start_run("r", flush_rows=1_000) as run:
        run.log_rows(("loss", s, math.nan if s == 77 else 1.0 / (1 + s), None) for s in range(5_000))
    report = copy_store(laptop, backend.reference, blobs=backend.blobs)
    assert report.metrics == 5_000
    team = backend.open(create=False)
    assert _stored_rollups(team) == _stored_rollups(laptop) == _expected_rollups(team)
    assert SeriesCache(team, max_points=100).series(run.id, "loss") == SeriesCache(laptop, max_points=100).series(
        run.id, "loss"
    )
    laptop.close()
