"""kiln.store.views and kiln.store.series: the dashboard's read queries, on SQLite and on a real PostgreSQL server.

Every test runs on both backends (the store tests' throwaway PostgreSQL 15 cluster, tests/store/postgres.py):
the queries are SQLAlchemy Core and must mean the same on each.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest

from kiln.errors import ConfigError, NotFoundError
from kiln.store import Store
from kiln.store.schema import runs
from kiln.store.series import SeriesCache
from kiln.store.views import RunQuery, metric_keys, run_page, run_state, run_versions
from store import conftest as store_tests  # tests/store: the backend fixtures and the PostgreSQL cluster

BACKENDS = ("sqlite", "postgresql")  # read by the store tests' pytest_generate_tests, used below
backend = store_tests.backend
postgres_cluster = store_tests.postgres_cluster
pytest_generate_tests = store_tests.pytest_generate_tests


@pytest.fixture
def store(backend: store_tests.Backend) -> Store:
    return backend.open()


def _run(store: Store, name: str, values: dict[str, list[float]], *, tags: dict[str, str] | None = None) -> str:
    with store.start_run(name, tags=tags) as run:
        for key, series in values.items():
            for step, value in enumerate(series):
                run.log({key: value}, step=step)
    return run.id


def test_page_filters_sorts_and_cuts_on_the_database(store: Store) -> None:
    ids = [_run(store, f"run-{i}", {"loss": [1.0, 0.5 + i / 10], "acc": [0.1 * i]}, tags={"i": str(i % 2)})
           for i in range(7)]  # fmt: skip
    page = run_page(store, RunQuery(limit=3))
    assert page.total == 7 and [r.id for r in page.runs] == ids[::-1][:3]  # newest first
    assert page.columns == ("loss",) and page.keys == ("acc", "loss")  # default columns: those present
    second = run_page(store, RunQuery(limit=3, offset=3))
    assert [r.id for r in second.runs] == ids[::-1][3:6]
    by_loss = run_page(store, RunQuery(sort="metric:loss", descending=False, metrics=("loss", "acc")))
    assert [r.name for r in by_loss.runs] == [f"run-{i}" for i in range(7)]
    assert by_loss.runs[2].latest == {"loss": pytest.approx(0.7), "acc": pytest.approx(0.2)}
    assert [r.name for r in run_page(store, RunQuery(sort="name", descending=False)).runs][:2] == ["run-0", "run-1"]
    assert run_page(store, RunQuery(tag="i=1")).total == 3
    assert run_page(store, RunQuery(tag="i")).total == 7
    assert run_page(store, RunQuery(tag="missing")).total == 0
    assert [r.name for r in run_page(store, RunQuery(text="RUN-4")).runs] == ["run-4"]  # any case
    assert [r.id for r in run_page(store, RunQuery(text=ids[2][:8])).runs] == [ids[2]]  # an id prefix
    assert run_page(store, RunQuery(text="100%_")).total == 0  # LIKE wildcards are literal
    assert run_page(store, RunQuery(status="finished")).total == 7
    assert run_page(store, RunQuery(status="failed")).total == 0


def test_metric_sort_puts_runs_without_it_last_and_keeps_nan(store: Store) -> None:
    _run(store, "nan", {"loss": [1.0, math.nan]})
    _run(store, "none", {"other": [1.0]})
    _run(store, "low", {"loss": [0.1]})
    page = run_page(store, RunQuery(sort="metric:loss", descending=False, metrics=("loss",)))
    assert page.runs[0].name == "low" and page.runs[-1].name in ("nan", "none")
    latest = {r.name: r.latest for r in page.runs}
    assert math.isnan(latest["nan"]["loss"]) and latest["none"] == {}


def test_running_and_stale_are_judged_by_liveness(store: Store) -> None:
    live = store.start_run("live")
    other = store.start_run("elsewhere")
    silent = {"host": "another-machine", "pid": 1, "machine": "x", "started": 1}
    store.database.write(lambda c: c.execute(runs.update().where(runs.c.id == other.id)
                                             .values(process=silent, heartbeat=time.time() - 7200)))  # fmt: skip
    assert [r.id for r in run_page(store, RunQuery(status="running")).runs] == [live.id]
    assert [r.id for r in run_page(store, RunQuery(status="stale")).runs] == [other.id]
    state = run_state(store, live.id)
    live.log({"loss": 1.0}, step=1)
    live.flush()
    assert run_state(store, live.id).token != state.token  # a write changes the token a page polls
    live.finish()
    assert run_state(store, live.id).status == "finished"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"status": "bogus"}, "status must be one of"),
        ({"sort": "color"}, "sort must be one of"),
        ({"limit": 0}, "limit must be an integer"),
        ({"offset": -1}, "offset must be"),
        ({"tag": 'a"b=c'}, "tag filter"),
        ({"metrics": ("\x00",)}, "metric name"),
    ],
)
def test_bad_queries_say_what_is_allowed(query: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunQuery(**query)


def test_keys_state_and_versions_of_a_run(store: Store, tmp_path: Path) -> None:
    run_id = _run(store, "r", {"b": [1.0], "a": [2.0, 3.0], "val_a": [1.0]})
    assert metric_keys(store, run_id[:8]) == ["a", "b", "val_a"]
    assert run_versions(store, run_id) == []
    (tmp_path / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    store.register("m", {"weights.safetensors": tmp_path / "weights.safetensors"}, run_id=run_id)
    assert run_versions(store, run_id) == ["m@1"]
    with pytest.raises(NotFoundError):
        metric_keys(store, "abcdef12")


def _long_run(store: Store, count: int, *, spike: int, nan: int, inf: int | None = None) -> tuple[str, list[float]]:
    rng = random.Random(0)
    values = [1.0 / (1 + i / 1000) + 0.05 * rng.random() for i in range(count)]
    values[spike] = 50.0
    values[nan] = math.nan
    if inf is not None:
        values[inf] = math.inf
    with store.start_run("long", flush_rows=10**7) as run:
        run.log_rows(("loss", i, v, None) for i, v in enumerate(values))
    return run.id, values


def test_a_long_series_is_downsampled_with_its_spike_and_nan(store: Store) -> None:
    run_id, values = _long_run(store, 30_000, spike=12_345, nan=20_001, inf=25_000)
    series = SeriesCache(store, max_points=400).series(run_id, "loss")
    assert series.downsampled and series.total == 30_000
    assert len(series.step) <= 400 and len(series.step) == len(series.value) == len(series.time)
    assert series.step == sorted(series.step)
    assert max(v for v in series.value if v is not None) == 50.0  # the single spike survives
    finite = [v for v in values if math.isfinite(v)]
    assert min(v for v in series.value if v is not None) == pytest.approx(min(finite))
    assert 20_001 in series.nonfinite and any(24_000 < s <= 25_600 for s in series.nonfinite)  # NaN exact; inf: bucket
    assert all(v is None or math.isfinite(v) for v in series.value)


def test_a_short_series_comes_as_logged(store: Store) -> None:
    run_id = _run(store, "short", {"loss": [3.0, math.nan, 1.0]})
    series = SeriesCache(store).series(run_id, "loss")
    assert (series.step, series.value, series.nonfinite, series.downsampled) == (
        [0, 1, 2],
        [3.0, None, 1.0],
        [1],
        False,
    )


def test_the_cache_extends_a_growing_series_exactly(store: Store) -> None:
    """Polling a running run aggregates only new rows; the result equals a fresh cold read at every point."""
    run = store.start_run("growing", flush_rows=10**7)
    cache = SeriesCache(store, max_points=200)
    step = 0
    for chunk, spike in ((5_000, 4_000), (3_000, 6_000), (40_000, 30_000)):
        run.log_rows(("loss", s, 99.0 if s == spike else math.sin(s / 500), None) for s in range(step, step + chunk))
        run.flush()
        step += chunk
        warm = cache.series(run.id, "loss")
        cold = SeriesCache(store, max_points=200).series(run.id, "loss")
        assert warm.total == step and max(v for v in warm.value if v is not None) == 99.0
        assert len(warm.step) <= 200
        assert (warm.step[-1], warm.value.count(None)) == (step - 1, 0)
        assert (min(warm.value), max(warm.value)) == (min(cold.value), max(cold.value))  # type: ignore[type-var]
    run.finish()


def test_a_resumed_run_is_read_again(store: Store) -> None:
    """Resuming re-logs steps from the checkpoint on: rows at old steps appear, so cached buckets are dropped."""
    run_id, _ = _long_run(store, 5_000, spike=100, nan=200)
    cache = SeriesCache(store, max_points=100)
    assert min(v for v in cache.series(run_id, "loss").value if v is not None) > 0
    resumed = store.resume_run(run_id)
    resumed.log({"loss": -5.0}, step=150)  # an early step, far behind the cached last bucket
    resumed.flush()
    assert min(v for v in cache.series(run_id, "loss").value if v is not None) == -5.0
    resumed.finish()


def test_the_app_reads_either_backend(store: Store) -> None:
    from kiln.ui import UiConfig, create_app

    from .conftest import Client

    run_id = _run(store, "r", {"loss": [1.0, 0.5], "val_loss": [1.2, 0.7]}, tags={"team": "x"})
    client = Client(create_app(UiConfig(), store=store))
    assert client.get("/api/runs", params={"tag": "team=x", "sort": "metric:loss"}).json()["total"] == 1
    assert client.get(f"/runs/{run_id}").status_code == 200
    series = client.get(f"/api/runs/{run_id}/series").json()["series"]
    assert series["val_loss"]["value"] == [1.2, 0.7]
