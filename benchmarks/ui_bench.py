"""`kiln ui` benchmark (issue 15): the run list on a big store, a million-point series, and live-update latency.

Three questions, one store, one real `kiln ui` server (a subprocess, as users start it) and headless Chromium:

1. Run list. A store with 10,000 runs x 50 metrics (5 logged steps each: 2.5M metric rows), written in bulk through
   the store's tables. HTTP response time of the page and its JSON for: the first page, a deep page, a sort by a
   metric's last value, a tag filter, a text search, four chosen metric columns; requests rotated every rep over
   one keep-alive connection. Then Chromium: from navigation start to the table painted (target: under 1 s).
2. Series. One run of 1,000,000 logged steps (noise, one spike, one NaN), downsampled by kiln.store.series in
   this process: cold (a fresh cache: the first view of the run), warm (cached; a finished run), and a poll after
   1,000 more steps were logged (a running run). Each answer is checked: <= 2,000 points, spike and NaN kept.
   Also the same through HTTP (``/api/runs/{id}/series``, warm).
3. Live update. A running run open in Chromium; this process logs one value (and flushes) and times until the
   chart shows its step (target: under 2 s; the page polls every 1.5 s, so the expected wait is ~0.75 s + a poll).

    python benchmarks/ui_bench.py              # the recorded run -> benchmarks/results/ui_bench.json
    python benchmarks/ui_bench.py --smoke      # 500 runs, 100,000 points, 2 updates: checks that the script runs
    python benchmarks/ui_bench.py --series-only  # the first view of the series three ways -> the run "series"

``--series-only`` answers how to make the first view fast (schema revision 0002): on a store holding just the long
run, the cold series from the metric rollups (kiln.store.series) against the aggregation over the rows that kiln
did before (one min/max/count aggregate per bucket through sqlite3 directly, so no SQLAlchemy overhead), on the
store's index as it is and on a copy with a covering index on ``metrics(run_id, key, step, value, time)``; the
three rotated every rep.

The store is built once in --store-dir (default /tmp/kiln-ui-bench-<size>) and reused by later runs.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import harness
import httpx

from kiln.store import Store
from kiln.store.rollups import LEVELS, add_rollups, summarise
from kiln.store.schema import metrics, runs
from kiln.store.series import MAX_POINTS, SeriesCache

QUESTION, TITLE = "ui_bench", "Dashboard (issue 15)"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SPIKE, NAN = 0.61, 0.83  # where in the long run the spike and the NaN step sit (fractions of its length)


# ---------------------------------------------------------------------------------------------------- the store
def build(path: Path, *, runs_count: int, keys: int, steps: int, points: int) -> None:
    """Bulk-write the runs and the long run through the store's tables (what thousands of fits would leave)."""
    started = time.perf_counter()
    store = Store(path)
    rng = random.Random(0)
    now = time.time() - runs_count * 60.0
    names = [f"m{k:02d}" for k in range(keys)]
    batch_runs, batch_metrics = [], []

    def flush() -> None:
        def write(connection: Any) -> None:
            if batch_runs:
                connection.execute(runs.insert(), batch_runs)
            if batch_metrics:
                connection.execute(metrics.insert(), batch_metrics)
            by_run: dict[str, list[tuple[str, int, float | None, float]]] = {}
            for row in batch_metrics:  # the rollups every metric write keeps (kiln.store.runs.insert_metrics)
                by_run.setdefault(row["run_id"], []).append((row["key"], row["step"], row["value"], row["time"]))
            for run_id, rows in by_run.items():
                add_rollups(connection, run_id, summarise(rows, LEVELS))

        store.database.write(write)
        batch_runs.clear()
        batch_metrics.clear()

    for i in range(runs_count):
        run_id, start = uuid.uuid4().hex, now + 60.0 * i
        batch_runs.append({"id": run_id, "name": f"sweep-{i % 97:02d}", "status": "finished",
                           "params": {"lr": 10 ** rng.uniform(-4, -2), "hidden": rng.choice([64, 128, 256])},
                           "tags": {"group": str(i % 10), "owner": f"user{i % 7}"}, "system": {"host": "bench"},
                           "start_time": start, "end_time": start + 50.0, "process": None,
                           "heartbeat": start + 50.0})  # fmt: skip
        for key in names:
            base = rng.random()
            batch_metrics.extend({"run_id": run_id, "key": key, "step": s, "epoch": s, "value": base / (s + 1),
                                  "time": start + s} for s in range(steps))  # fmt: skip
        if len(batch_metrics) >= 200_000:
            flush()
    flush()
    long_id, start = uuid.uuid4().hex, time.time()
    batch_runs.append({"id": long_id, "name": "long-run", "status": "finished", "params": {}, "tags": {"long": "1"},
                       "system": {}, "start_time": start, "end_time": start + points / 1000, "process": None,
                       "heartbeat": start + points / 1000})  # fmt: skip
    flush()
    for low in range(0, points, 200_000):
        for step in range(low, min(points, low + 200_000)):
            value = 2.0 * math.exp(-step / (points / 5)) + 0.1 + 0.05 * rng.random()
            if step == int(SPIKE * points):
                value = 50.0
            batch_metrics.append({"run_id": long_id, "key": "batch_loss", "step": step, "epoch": None,
                                  "value": None if step == int(NAN * points) else value,
                                  "time": start + step / 1000})  # fmt: skip
        flush()
    store.close()
    print(f"built {path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def open_store(args: argparse.Namespace) -> Path:
    path = args.store_dir or Path(f"/tmp/kiln-ui-bench-{args.runs}x{args.keys}x{args.steps}-{args.points}")
    if not (path / "kiln.db").exists():
        shutil.rmtree(path, ignore_errors=True)
        build(path, runs_count=args.runs, keys=args.keys, steps=args.steps, points=args.points)
    return path


def start_ui(path: Path) -> tuple[subprocess.Popen[str], str]:
    env = harness.thread_env(1)
    process = subprocess.Popen([sys.executable, "-m", "kiln.cli", "ui", "--store", str(path), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if " at http://" not in line:
        raise SystemExit(f"kiln ui did not start: {line}{process.stdout.read()}")
    return process, line.split(" at ")[1].split()[0].rstrip("/")


# ---------------------------------------------------------------------------------------------------- 1. run list
REQUESTS = {
    "first page (HTML)": "/",
    "first page (JSON)": "/api/runs",
    "page 150 of 200": "/?page=150",
    "sort by m07's last value": "/?sort=metric:m07&order=asc",
    "tag filter group=3": "/?tag=group%3D3",
    "text search": "/?q=sweep-42",
    "4 metric columns": "/?metric=m01,m02,m03,m04",
}


def bench_list(url: str, reps: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in REQUESTS}
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for rep in range(reps + 1):
            for name in harness.rotated(list(REQUESTS), rep):
                started = time.perf_counter()
                response = client.get(REQUESTS[name])
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, (name, response.status_code, response.text[:300])
                if rep:  # the first round warms up
                    samples[name].append(elapsed * 1000.0)
        total = client.get("/api/runs").json()["total"]
    return {"total": total, "ms": {name: harness.spread(values) for name, values in samples.items()}}


def bench_paint(url: str, reps: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        for rep in range(reps + 1):
            page.goto("about:blank")
            started = time.perf_counter()
            page.goto(url + "/", wait_until="commit")
            page.wait_for_selector("table.runs tbody tr")
            elapsed = (time.perf_counter() - started) * 1000.0
            if rep:
                out.append(elapsed)
        browser.close()
    return harness.spread(out)


# ---------------------------------------------------------------------------------------------------- 2. series
def check(series: Any, points: int) -> None:
    values = [v for v in series.value if v is not None]
    assert len(series.step) <= MAX_POINTS, len(series.step)
    assert max(values) == 50.0, "the spike was lost"
    assert int(NAN * points) in series.nonfinite, "the NaN step was lost"


def bench_series(path: Path, url: str, reps: int, points: int) -> dict[str, Any]:
    store = Store(path, create=False)
    long_id = next(r.id for r in store.runs(name="long-run", limit=1))
    cold, warm, poll, http = [], [], [], []
    cache = SeriesCache(store)
    check(cache.series(long_id, "batch_loss"), points)
    run = store.resume_run(long_id, flush_rows=10**7)  # now running: a poll reads only what is new
    step = points
    poll_cache = SeriesCache(store)
    poll_cache.series(long_id, "batch_loss")
    with httpx.Client(base_url=url, timeout=60.0) as client:
        client.get(f"/api/runs/{long_id}/series")
        for _rep in range(reps):
            fresh = SeriesCache(store)
            started = time.perf_counter()
            check(fresh.series(long_id, "batch_loss"), points)
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            check(fresh.series(long_id, "batch_loss"), points)
            warm.append(time.perf_counter() - started)
            run.log_rows(("batch_loss", s, 0.1, None) for s in range(step, step + 1000))
            run.flush()
            step += 1000
            started = time.perf_counter()
            answer = poll_cache.series(long_id, "batch_loss")
            poll.append(time.perf_counter() - started)
            assert answer.step[-1] == step - 1 and len(answer.step) <= MAX_POINTS
            started = time.perf_counter()
            body = client.get(f"/api/runs/{long_id}/series")
            http.append(time.perf_counter() - started)
            assert body.status_code == 200 and len(body.json()["series"]["batch_loss"]["step"]) <= MAX_POINTS
    run.finish()
    store.close()
    ms = {name: harness.spread([v * 1000.0 for v in values])
          for name, values in (("cold", cold), ("warm", warm), ("poll", poll), ("http", http))}  # fmt: skip
    return {"points": points, "shown": len(answer.step), "ms": ms}


def _aggregate_rows(connection: sqlite3.Connection, run_id: str, key: str, buckets: int) -> int:
    """The first view as kiln computed it before the rollups: one aggregate per bucket over the metric rows."""
    where = "run_id = ? AND key = ?"
    low, high = (
        connection.execute(f"SELECT {f}(step) FROM metrics WHERE {where}", (run_id, key)).fetchone()[0]
        for f in ("min", "max")
    )  # two index seeks (one select of both would scan the rows)
    width = 1 << max(0, math.ceil(math.log2((high - low + 1) / buckets)))
    query = (f"SELECT count(*), count(value), min(step), max(step), min(time), max(time), min(value), max(value) "
             f"FROM metrics WHERE {where} AND step >= ? AND step < ?")  # fmt: skip
    found = 0
    for index in range((high - low) // width + 1):
        start = low + index * width
        found += connection.execute(query, (run_id, key, start, start + width)).fetchone()[0]
    return found


def bench_first_view(path: Path, reps: int, points: int) -> dict[str, Any]:
    """Cold series three ways, rotated every rep: rollups, rows (index as is), rows with a covering index."""
    covered = path.parent / f"{path.name}-covering"
    if not (covered / "kiln.db").exists():
        shutil.rmtree(covered, ignore_errors=True)
        shutil.copytree(path, covered)
        with sqlite3.connect(covered / "kiln.db") as connection:
            connection.execute("CREATE INDEX ix_cover ON metrics (run_id, key, step, value, time)")
    store = Store(path, create=False)
    long_id = next(r.id for r in store.runs(name="long-run", limit=1))
    databases = {"rows": sqlite3.connect(path / "kiln.db"), "covering": sqlite3.connect(covered / "kiln.db")}
    for connection in databases.values():
        connection.execute("PRAGMA query_only = 1")

    samples: dict[str, list[float]] = {"rollups": [], "rows": [], "covering": []}
    for rep in range(reps + 1):
        for name in harness.rotated(list(samples), rep):
            started = time.perf_counter()
            if name == "rollups":
                check(SeriesCache(store).series(long_id, "batch_loss"), points)
            else:
                assert _aggregate_rows(databases[name], long_id, "batch_loss", MAX_POINTS // 2) == points
            if rep:  # the first round fills the page cache
                samples[name].append((time.perf_counter() - started) * 1000.0)
    store.close()
    sizes = {name: round(sum(f.stat().st_size for f in where.iterdir() if f.is_file()) / 1e6)
             for name, where in (("store", path), ("covering", covered))}  # fmt: skip
    return {"points": points, "ms": {name: harness.spread(values) for name, values in samples.items()}, "mb": sizes}


def series_only(args: argparse.Namespace) -> None:
    """``--series-only``: the run "series" (the first view of the million-step series, three ways)."""
    harness.pin_threads(1)
    record = harness.new_run("series" if args.run_name == "main" else args.run_name)
    path = args.store_dir or Path(f"/tmp/kiln-ui-bench-series-{args.points}")
    if not (path / "kiln.db").exists():
        shutil.rmtree(path, ignore_errors=True)
        build(path, runs_count=0, keys=args.keys, steps=args.steps, points=args.points)
    waited = harness.wait_for_quiet(args.max_load, 0 if args.smoke else args.max_wait)
    record["conditions"].append(f"waited for load < {args.max_load}: {waited[0]} -> {waited[-1]}")
    result = bench_first_view(path, args.reps, args.points)
    names = {"rollups": "rollups (kiln.store.series, revision 0002)",
             "rows": "rows: one aggregate per bucket, index (run_id, key, step)",
             "covering": "rows: the same, covering index (run_id, key, step, value, time)"}  # fmt: skip
    spec = harness.table(
        ["first view (fresh cache)", "median (q1–q3)", "under 300 ms"],
        [[names[k], fmt_ms(v), "yes" if v["median"] < 300 else "**no**"] for k, v in result["ms"].items()],
        align="lrl",
        caption=f"First view of a {args.points:,}-step series (at most {MAX_POINTS:,} points), three ways; the "
        f"store {result['mb']['store']} MB, with the covering index {result['mb']['covering']} MB",
    )  # fmt: skip
    record["conditions"].append(f"medians of {args.reps} rotated reps after one warm-up round; 1 thread")
    record.update(tables=[spec], summary=result)
    harness.publish(args, question=QUESTION, title=TITLE, record=record)


# ---------------------------------------------------------------------------------------------------- 3. live
def bench_live(path: Path, url: str, updates: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    store = Store(path, create=False)
    run = store.start_run("live-bench", flush_seconds=0.0)
    run.log({"loss": 1.0}, step=0)
    waits: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/runs/{run.id}")
        chart = page.locator(".chart[data-title=loss]")
        chart.wait_for()
        for step in range(1, updates + 1):
            page.wait_for_timeout(random.Random(step).uniform(0, 1500))  # log at a random phase of the page's poll
            run.log({"loss": 1.0 / (step + 1)}, step=step)  # flushed at once
            logged = time.perf_counter()
            deadline = logged + 10.0
            while chart.get_attribute("data-last-step") != str(step):
                assert time.perf_counter() < deadline, "the value did not appear within 10 s"
                page.wait_for_timeout(10)
            waits.append((time.perf_counter() - logged) * 1000.0)
        browser.close()
    run.finish()
    store.close()
    return harness.spread(waits)


# ---------------------------------------------------------------------------------------------------- report
def fmt_ms(spread: dict[str, Any]) -> str:
    return f"{spread['median']:.1f} ms ({spread['q1']:.1f}–{spread['q3']:.1f})"


def tables(listing: dict[str, Any], paint: dict[str, Any], series: dict[str, Any], live: dict[str, Any],
           args: argparse.Namespace) -> list[dict[str, Any]]:  # fmt: skip
    rows = [[name, fmt_ms(spread), "yes" if spread["median"] < 200 else "**no**"]
            for name, spread in listing["ms"].items()]  # fmt: skip
    rows.append(["Chromium: navigation to table painted", fmt_ms(paint), "yes" if paint["median"] < 1000 else "**no**"])
    first = harness.table(
        ["request", "median (q1–q3)", "under target"], rows, align="lrl",
        caption=f"Run list: {listing['total']:,} runs x {args.keys} metrics ({args.steps} steps each), `kiln ui` "
        "server response (target 200 ms; Chromium: 1 s)",
    )  # fmt: skip
    names = {"cold": "cold: first view (fresh cache)", "warm": "warm: cached, finished run",
             "poll": "poll after 1,000 new steps (running run)",
             "http": "HTTP /api/runs/{id}/series (warm)"}  # fmt: skip
    second = harness.table(
        ["series read", "median (q1–q3)", "under 300 ms"],
        [[names[k], fmt_ms(v), "yes" if v["median"] < 300 else "**no**"] for k, v in series["ms"].items()],
        align="lrl",
        caption=f"Series: {series['points']:,} logged steps downsampled to {series['shown']:,} points (min/max per "
        "bucket; the spike and the NaN step checked in every answer)",
    )  # fmt: skip
    third = harness.table(
        ["live update", "median (q1–q3)", "max", "under 2 s"],
        [["value logged → shown on the open page", fmt_ms(live), f"{live['max']:.0f} ms",
          "yes" if live["max"] < 2000 else "**no**"]],
        align="lrrl", caption=f"Live update: {live['n']} values logged at random phases of the page's 1.5 s poll",
    )  # fmt: skip
    return [first, second, third]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--store-dir", type=Path, default=None)
    parser.add_argument("--max-load", type=float, default=2.5, help="wait (up to --max-wait s) for a quieter machine")
    parser.add_argument("--max-wait", type=float, default=900.0)
    parser.add_argument("--series-only", action="store_true", help="instead: the first view of the series from "
                        "rollups, rows and rows with a covering index, recorded as the run 'series'")  # fmt: skip
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    if args.series_only:
        if args.smoke:
            args.points, args.reps = 100_000, 2
        return series_only(args)
    if args.smoke:
        args.runs, args.points, args.reps, args.updates = 500, 100_000, 2, 2
    harness.pin_threads(1)
    record = harness.new_run(args.run_name, packages=("kiln", "starlette", "uvicorn", "playwright"))
    path = open_store(args)
    waited = harness.wait_for_quiet(args.max_load, 0 if args.smoke else args.max_wait)
    record["conditions"].append(f"waited for load < {args.max_load}: {waited[0]} -> {waited[-1]}")
    process, url = start_ui(path)
    try:
        listing = bench_list(url, args.reps)
        paint = bench_paint(url, args.reps)
        series = bench_series(path, url, args.reps, args.points)
        live = bench_live(path, url, args.updates)
    finally:
        process.terminate()
        process.wait(10)
    specs = tables(listing, paint, series, live, args)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6
    record["conditions"].append(
        f"SQLite store of {size:.0f} MB (page cache warm after the first round); `kiln ui` and this script each on "
        f"1 thread; medians of {args.reps} reps ({args.updates} live updates); Chromium {CHROMIUM}"
    )
    record.update(tables=specs, summary={"list": listing, "paint": paint, "series": series, "live": live})
    harness.publish(args, question=QUESTION, title=TITLE, record=record)


if __name__ == "__main__":
    main()
