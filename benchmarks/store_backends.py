"""The store's two backends side by side (issue 18): the embedded SQLite store and a PostgreSQL 15 team store.

Run by ``python benchmarks/store_bench.py --backends`` (result: the run "backends" of store_bench.json). Both stores
live on this machine's disk; PostgreSQL is a throwaway cluster started for the run (tests/store/postgres.py) with
its durability settings on (fsync, synchronous commits: kiln turns the latter off per transaction for metric
writes, as SQLite's synchronous=NORMAL does for them). What is measured, interleaved per repetition (the backend
order alternates), medians over repetitions:

- metric logging, 1 run: ``Run.log`` of N rows (two metrics a step) with the default buffering (2000 rows a
  flush) and ``finish``; rows/s.
- metric logging, 8 runs at once: 8 processes, each a run logging N rows, started together; total rows over the
  wall time from the first start to the last finish.
- register: ``Store.register`` of a two-file package (a few KB); per call.
- alias resolve: ``Store.version("m@production")``; p50 and p99 over many calls.
- listing 10,000 runs: ``Store.runs(limit=10000)`` on a store holding 10,000 finished runs with two metrics each.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

sys.path.insert(0, str(harness.REPO / "tests" / "store"))
import postgres

BACKENDS = ("sqlite", "postgresql")

# Each writer opens the store (KILN_STORE / KILN_BLOBS), says "ready", waits for "go", logs its rows, reports times.
WRITER = """
import json, sys, time
from kiln.store import Store
rows = int(sys.argv[1])
store = Store()
print("ready", flush=True)
sys.stdin.readline()
start = time.time()
with store.start_run("writer") as run:
    for step in range(rows // 2):
        run.log({"loss": 1.0 / (step + 1), "acc": step / rows}, step=step)
print(json.dumps({"start": start, "end": time.time()}), flush=True)
"""


def _log_one(store: Any, rows: int) -> float:
    start = time.perf_counter()
    with store.start_run("single") as run:
        for step in range(rows // 2):
            run.log({"loss": 1.0 / (step + 1), "acc": step / rows}, step=step)
    return rows / (time.perf_counter() - start)


def _log_many(env: dict[str, str], rows: int, writers: int) -> float:
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(rows)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
                for _ in range(writers)]  # fmt: skip
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    times = [json.loads(child.communicate(timeout=600)[0].strip().splitlines()[-1]) for child in children]
    assert all(child.returncode == 0 for child in children)
    return rows * writers / (max(t["end"] for t in times) - min(t["start"] for t in times))


def _register(store: Any, files: dict[str, Path], count: int) -> list[float]:
    samples = []
    for i in range(count):
        files["w.bin"].write_bytes(f"weights {time.time_ns()} {i}".encode() * 100)
        start = time.perf_counter()
        store.register("bench", files)
        samples.append(time.perf_counter() - start)
    return samples


def _resolve(store: Any, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        store.version("bench@production")
        samples.append(time.perf_counter() - start)
    return samples


def _fill_runs(store: Any, count: int) -> None:
    from kiln.store.schema import metrics, runs

    now = time.time()
    run_rows = [{"id": f"{i:032x}", "name": f"run-{i % 50}", "status": "finished", "params": {"lr": 0.001 * i},
                 "tags": {}, "system": {}, "start_time": now - i, "end_time": now - i + 60, "process": None,
                 "heartbeat": now - i + 60} for i in range(count)]  # fmt: skip
    metric_rows = [{"run_id": f"{i:032x}", "key": key, "step": 10, "epoch": 0, "value": 0.5, "time": now}
                   for i in range(count) for key in ("loss", "val_accuracy")]  # fmt: skip
    store.database.write(lambda c: (c.execute(runs.insert(), run_rows), c.execute(metrics.insert(), metric_rows)))


def _list(store: Any, count: int) -> float:
    start = time.perf_counter()
    found = store.runs(limit=count)
    seconds = time.perf_counter() - start
    assert len(found) == count
    return seconds


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(*, reps: int, rows: int, writers: int, resolves: int, registers: int, listed: int) -> dict[str, Any]:
    """Every measurement on both backends, interleaved; raw samples per backend."""
    from kiln.store import Store

    samples: dict[str, dict[str, list[float]]] = {b: {} for b in BACKENDS}
    work = Path(tempfile.mkdtemp(prefix="kiln_store_backends_"))
    cluster = postgres.Cluster(durable=True)
    try:
        references = {"sqlite": (str(work / "sqlite-store"), None)}
        references["postgresql"] = (cluster.url(cluster.create_database()), str(work / "pg-blobs"))
        listing = {"sqlite": (str(work / "sqlite-listing"), None)}
        listing["postgresql"] = (cluster.url(cluster.create_database()), str(work / "pg-listing-blobs"))
        stores = {b: Store(ref, blobs=blobs) for b, (ref, blobs) in references.items()}
        listers = {b: Store(ref, blobs=blobs) for b, (ref, blobs) in listing.items()}
        files = {"w.bin": work / "w.bin", "spec.json": work / "spec.json"}
        files["spec.json"].write_text('{"factory": "bench"}')
        for backend in BACKENDS:
            _register(stores[backend], files, 2)
            stores[backend].promote("bench", 1, "production")
            _fill_runs(listers[backend], listed)
        for rep in range(reps):
            for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                store, found = stores[backend], samples[backend]
                reference, blobs = references[backend]
                env = {"KILN_STORE": reference, "KILN_BLOBS": blobs or ""}
                found.setdefault("log_1_rows_per_s", []).append(_log_one(store, rows))
                found.setdefault(f"log_{writers}_rows_per_s", []).append(_log_many(env, rows, writers))
                found.setdefault("register_s", []).extend(_register(store, files, registers))
                found.setdefault("resolve_s", []).extend(_resolve(store, resolves))
                found.setdefault("list_s", []).append(_list(listers[backend], listed))
                medians = ", ".join(f"{k}={statistics.median(v):.4g}" for k, v in found.items())
                print(f"rep {rep + 1}/{reps} {backend}: medians so far {medians}", flush=True)
        for opened in (*stores.values(), *listers.values()):
            opened.close()
    finally:
        cluster.close()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return {"samples": samples, "rows": rows, "writers": writers, "listed": listed}


def tables(result: dict[str, Any]) -> list[dict[str, Any]]:
    s, writers = result["samples"], result["writers"]
    med = {b: {k: statistics.median(v) for k, v in s[b].items()} for b in BACKENDS}
    many = f"log_{writers}_rows_per_s"

    def ratio(key: str, *, higher_is_better: bool) -> str:
        value = med["postgresql"][key] / med["sqlite"][key]
        return f"{value:.2f}×" if higher_is_better else f"{value:.2f}× the time"

    rows = [
        ["metric logging, 1 run (rows/s)", f"{med['sqlite']['log_1_rows_per_s']:,.0f}",
         f"{med['postgresql']['log_1_rows_per_s']:,.0f}", ratio("log_1_rows_per_s", higher_is_better=True),
         "≥ 0.5× (within 2×)"],
        [f"metric logging, {writers} runs at once (rows/s, all together)", f"{med['sqlite'][many]:,.0f}",
         f"{med['postgresql'][many]:,.0f}", ratio(many, higher_is_better=True), "> 1× (ahead)"],
        ["register a 2-file package (ms, median)", f"{med['sqlite']['register_s'] * 1e3:.1f}",
         f"{med['postgresql']['register_s'] * 1e3:.1f}", ratio("register_s", higher_is_better=False), ""],
        ["resolve name@alias (ms, p50)", f"{med['sqlite']['resolve_s'] * 1e3:.2f}",
         f"{med['postgresql']['resolve_s'] * 1e3:.2f}", ratio("resolve_s", higher_is_better=False), ""],
        ["resolve name@alias (ms, p99)", f"{_percentile(s['sqlite']['resolve_s'], 0.99) * 1e3:.2f}",
         f"{_percentile(s['postgresql']['resolve_s'], 0.99) * 1e3:.2f}", "", ""],
        [f"list {result['listed']:,} runs (s)", f"{med['sqlite']['list_s']:.3f}", f"{med['postgresql']['list_s']:.3f}",
         ratio("list_s", higher_is_better=False), ""],
    ]  # fmt: skip
    caption = (
        "**The embedded store (SQLite) and the team store (PostgreSQL 15, local, fsync on) side by side** — "
        f"{result['rows']:,} metric rows per run (two metrics a step, kiln's default 2000-row buffer); "
        f"{writers} writers are separate processes started together."
    )
    return [harness.table(["operation", "SQLite", "PostgreSQL", "PostgreSQL / SQLite", "target"], rows,
                          align="lrrrr", caption=caption)]  # fmt: skip
