"""Store benchmark (issue 4): register/load of a 100 MB model against bare safetensors, MLflow, and tracking overhead.

Three measurements, all in one invocation so the ratios share the machine's state:

1. Register and load of the peers' 25M-parameter MLP (1024-4096-4096-1024-10, ~101 MB float32), reps interleaved:
       floor save        safetensors.torch.save_file(state_dict, path)                         (no fsync)
       durable floor     the same followed by fsync (kiln's writes are always durable)
       kiln register     kiln.export.register_module(..., onnx=False): streamed, hashed, fsynced weights, spec,
                         manifest, one synchronous=FULL SQLite transaction
       floor load        build the module, load_state_dict(safetensors.torch.load_file(path))  (what users write)
       cold floor load   the same after evicting the file from the page cache (posix_fadvise DONTNEED)
       meta floor load   build on the meta device, load_file, assign, touch every byte         (the strict floor)
       kiln load         kiln.export.load("mlp@N"): read + verify every SHA-256, rebuild on meta, assign, touch;
                         right after the register, whose large writes skip the page cache: compared with the cold
                         floor. Loaded once more (its blob now cached), it is compared with the cached floor.
   Every rep perturbs one weight first, so each register writes new bytes (no deduplication shortcut).
   Register with ONNX export and parity check is timed once, for the record.
2. MLflow 3 (``--mlflow-python``, a side venv): mlflow.pytorch.log_model (as users call it, and with
   pip_requirements given so it skips inferring them) and load_model of the same model, median over reps.
3. Tracking overhead: kiln.Model.fit of an MLP 64-256-256-10 (batch 64, 1 torch thread) with TrackingCallback: the
   time spent inside its hooks measured directly, and an A/B of median epoch times with the configurations in a
   shuffled order every rep (a fixed order lets position effects pass for overhead), plus the fixed cost of
   starting and finishing a run.

Setup of the MLflow venv (once; gitignored)::

    python3.11 -m venv benchmarks/.venv-mlflow
    benchmarks/.venv-mlflow/bin/pip install torch==2.13.0 mlflow

Run from the repository root::

    python benchmarks/store_bench.py --reps 9          # the recorded run -> benchmarks/results/store_bench.json
    python benchmarks/store_bench.py --smoke           # a 0.6M-parameter MLP, one rep: checks that the script runs
    python benchmarks/store_bench.py --backends        # SQLite vs PostgreSQL (issue 18) -> the run "backends"
    python benchmarks/store_bench.py --rollups         # metric logging with and without rollups -> "rollups"

Without the MLflow venv the script says so and measures kiln and the safetensors floors only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import torch
from safetensors.torch import load_file, save_file
from torch import nn

QUESTION, TITLE = "store_bench", "Store (issue 4)"


def mlp25m(hidden: int = 4096) -> nn.Sequential:
    """The peers' 25M-parameter MLP at hidden 4096 (101 MB in float32); smaller widths for --smoke."""
    return nn.Sequential(nn.Linear(1024, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1024), nn.ReLU(), nn.Linear(1024, 10))  # fmt: skip


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@torch.no_grad()
def touch(module: nn.Module) -> float:
    return sum(float(p.sum()) for p in module.parameters())


def bench_registry(reps: int, hidden: int, workdir: Path) -> dict[str, Any]:
    from kiln.export import load, register_module
    from kiln.store import Store

    torch.manual_seed(0)
    model = mlp25m(hidden).eval()
    example = torch.randn(1, 1024)
    store = Store(workdir / "store")
    # Every save writes a new file and nothing is deleted until the end: freeing blocks on this disk (mounted with
    # online discard) slows whatever runs next, which would charge one operation for another's cleanup.
    floor = {"path": workdir / "floor-init.safetensors"}
    save_file(model.state_dict(), floor["path"])
    rows: dict[str, list[float]] = {k: [] for k in ("floor_save", "floor_save_fsync", "kiln_register", "floor_load",
                                                    "floor_load_cold", "meta_floor_load", "kiln_load",
                                                    "kiln_load_hot")}  # fmt: skip

    def floor_save(rep: int, durable: bool) -> None:
        floor["path"] = workdir / f"floor-{rep}-{durable}.safetensors"
        save_file(model.state_dict(), floor["path"])
        if durable:
            with open(floor["path"], "rb") as handle:
                os.fsync(handle.fileno())

    def floor_load() -> nn.Module:
        module = mlp25m(hidden)
        module.load_state_dict(load_file(floor["path"]))
        return module

    def evict(path: Path) -> None:
        """Drop ``path``'s pages from the page cache (they are clean: every operation starts after os.sync)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def floor_load_cold() -> nn.Module:
        evict(floor["path"])
        return floor_load()

    def meta_floor_load() -> float:
        with torch.device("meta"):
            module = mlp25m(hidden)
        module.load_state_dict(load_file(floor["path"]), assign=True)
        return touch(module)

    for rep in range(reps):
        with torch.no_grad():
            model[0].weight[0, 0] += 1.0  # new bytes every rep: no deduplication
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("floor_save", lambda rep=rep: floor_save(rep, durable=False)),
            ("floor_save_fsync", lambda rep=rep: floor_save(rep, durable=True)),
            ("kiln_register", lambda: register_module(model, "mlp", store=store, example_input=example, onnx=False)),
            ("floor_load", floor_load),
            ("floor_load_cold", floor_load_cold),
            ("meta_floor_load", meta_floor_load),
            ("kiln_load", lambda: touch(load("mlp", store=store))),
        ]
        for name, fn in harness.rotated(steps, rep):  # every operation takes every position once in 7 reps
            os.sync()  # every operation starts with no dirty pages: none pays for another's writeback
            seconds, _ = timed(fn)
            rows[name].append(seconds)
        # The version's blob is in the page cache now (kiln_load read it): the same load again is the hot case.
        os.sync()
        rows["kiln_load_hot"].append(timed(lambda: touch(load("mlp", store=store)))[0])
    loaded = load("mlp", store=store)
    with torch.no_grad():
        assert torch.equal(loaded(example), model(example)), "kiln load must reproduce the model bit for bit"
    onnx_seconds, version = timed(lambda: register_module(model, "mlp-onnx", store=store, example_input=example))
    medians = {k: statistics.median(v) for k, v in rows.items()}

    def paired(a: str, b: str) -> float:  # median of per-rep ratios: pairs measured seconds apart share the noise
        return statistics.median(x / y for x, y in zip(rows[a], rows[b], strict=True))

    return {
        "params": sum(p.numel() for p in model.parameters()),
        "file_mb": floor["path"].stat().st_size / 1e6,
        "raw": rows,
        "median_s": medians,
        "register_ratio": medians["kiln_register"] / medians["floor_save"],
        "register_ratio_durable_floor": medians["kiln_register"] / medians["floor_save_fsync"],
        "register_ratio_paired": paired("kiln_register", "floor_save"),
        "load_ratio_paired": paired("kiln_load", "floor_load_cold"),
        "load_ratio": medians["kiln_load"] / medians["floor_load_cold"],
        "load_ratio_hot": medians["kiln_load_hot"] / medians["floor_load"],
        "load_ratio_meta_floor": medians["kiln_load_hot"] / medians["meta_floor_load"],
        "register_with_onnx_s": onnx_seconds,
        "onnx_included": "model.onnx" in version.files,
    }


MLFLOW_CHILD = r"""
import json, os, statistics, sys, tempfile, time, warnings
warnings.filterwarnings("ignore")
import torch
from torch import nn
reps, threads, hidden = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
def mlp25m():
    return nn.Sequential(nn.Linear(1024, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1024), nn.ReLU(), nn.Linear(1024, 10))
tmp = tempfile.mkdtemp(prefix="kiln_mlflow_")
os.chdir(tmp)
t0 = time.perf_counter()
import mlflow
import_s = time.perf_counter() - t0
mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
mlflow.set_experiment("kiln-store-bench")
torch.manual_seed(0)
model = mlp25m().eval()
x = torch.randn(1, 1024)
configs = {
    "default": {"input_example": x.numpy()},  # MLflow 3's default format (pt2) requires an input example
    "pickle": {"serialization_format": "pickle", "pip_requirements": ["torch"]},  # its fastest path
}
out = {"mlflow": mlflow.__version__, "import_s": import_s}
for rep in range(reps):
    with torch.no_grad():
        model[0].weight[0, 0] += 1.0
    for name, extra in configs.items():
        with mlflow.start_run():
            t = time.perf_counter()
            info = mlflow.pytorch.log_model(model, name="model", **extra)
            out.setdefault(f"log_model_{name}_s", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        loaded = mlflow.pytorch.load_model(info.model_uri)
        out.setdefault(f"load_model_{name}_s", []).append(time.perf_counter() - t)
        with torch.no_grad():
            assert torch.allclose(loaded(x), model(x), atol=1e-5)
print(json.dumps(out))
"""


def bench_mlflow(python: str, reps: int, threads: int, hidden: int) -> dict[str, Any] | None:
    if not Path(python).exists():
        print(f"note: {python} not found, so MLflow is not measured (see this script's docstring)", file=sys.stderr)
        return None
    done = subprocess.run([python, "-c", MLFLOW_CHILD, str(reps), str(threads), str(hidden)], capture_output=True,
                          text=True, timeout=3600, env=harness.thread_env(threads))  # fmt: skip
    if done.returncode != 0:
        print(f"MLflow run failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["median_s"] = {k: statistics.median(v) for k, v in out.items() if isinstance(v, list)}
    return out


def _timed_tracking(base: type) -> type:
    """TrackingCallback with a stopwatch around each hook: the time tracking itself takes, measured directly."""

    def wrap(name: str) -> Any:
        def hook(self: Any, *args: Any) -> None:
            start = time.perf_counter()
            getattr(base, name)(self, *args)
            self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start

        return hook

    hooks = ("on_fit_start", "on_epoch_start", "on_train_batch_end", "on_epoch_end", "on_fit_end")
    return type("TimedTracking", (base,), {name: wrap(name) for name in hooks})


def bench_tracking(reps: int, epochs: int, workdir: Path) -> dict[str, Any]:
    import kiln
    from kiln.data import ArrayDataset
    from kiln.store import Store
    from kiln.train.tracking import TrackingCallback

    class EpochTimer(kiln.Callback):  # runs after tracking: an epoch's time includes tracking's epoch-end write
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_epoch_start(self, model: Any, epoch: int) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    timed_tracking = _timed_tracking(TrackingCallback)
    generator = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.rand(8192, 64, generator=generator), torch.randint(0, 10, (8192,), generator=generator))
    store = Store(workdir / "tracking")
    epoch_s: dict[str, list[float]] = {"none": [], "every=10": [], "every=1": []}
    share: dict[str, list[float]] = {"every=10": [], "every=1": []}
    per_step_us: dict[str, list[float]] = {"every=10": [], "every=1": []}
    run_fixed_ms: list[float] = []
    steps_per_epoch = -(-len(data) // 64)
    for rep in range(reps):
        for config in harness.shuffled(list(epoch_s), rep):  # a fixed rotation lets position effects pass for overhead
            torch.manual_seed(0)
            net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
            model = kiln.Model(net, loss="cross_entropy", optimizer="adam", lr=1e-3, device="cpu")
            timer, callbacks = EpochTimer(), []
            if config != "none":
                tracking = timed_tracking(store, "bench", every=int(config.split("=")[1]))
                tracking.spent = {}
                callbacks.append(tracking)
            start = time.perf_counter()
            model.fit(data, epochs=epochs, batch_size=64, callbacks=[*callbacks, timer], verbose=0, seed=0)
            total = time.perf_counter() - start
            epoch_s[config].append(statistics.median(timer.seconds[1:]))  # epochs after the first (warm)
            if callbacks:
                spent = callbacks[0].spent
                in_loop = spent["on_train_batch_end"] + spent["on_epoch_end"] + spent.get("on_epoch_start", 0.0)
                fixed = spent["on_fit_start"] + spent["on_fit_end"]
                share[config].append(in_loop / (total - fixed - in_loop))
                per_step_us[config].append(spent["on_train_batch_end"] / (steps_per_epoch * epochs) * 1e6)
                run_fixed_ms.append(fixed * 1e3)
    med = {k: statistics.median(v) for k, v in epoch_s.items()}
    return {
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "step_ms": med["none"] / steps_per_epoch * 1e3,
        "share_in_hooks": {k: statistics.median(v) for k, v in share.items()},
        "hook_us_per_step": {k: statistics.median(v) for k, v in per_step_us.items()},
        "epoch_ab_overhead": {k: med[k] / med["none"] - 1 for k in ("every=10", "every=1")},
        "run_start_finish_ms": statistics.median(run_fixed_ms),
        "raw_epoch_s": epoch_s,
    }


def tables(registry: dict[str, Any], mlflow: dict[str, Any] | None, tracking: dict[str, Any]) -> list[dict]:
    m = registry["median_s"]
    rows = [
        ["safetensors save_file (floor)", f"{m['floor_save']:.3f}", "1.00×", ""],
        ["safetensors save_file + fsync (durable floor)", f"{m['floor_save_fsync']:.3f}",
         f"{m['floor_save_fsync'] / m['floor_save']:.2f}×", ""],
        ["kiln register (weights + spec + manifest, fsynced, hashed)", f"{m['kiln_register']:.3f}",
         f"{registry['register_ratio']:.2f}× ({registry['register_ratio_durable_floor']:.2f}× durable)", "≤ 1.2×"],
        ["build + load_state_dict(load_file) (floor), file in the page cache", f"{m['floor_load']:.3f}", "1.00×", ""],
        ["the same, file evicted from the page cache first (cold floor)", f"{m['floor_load_cold']:.3f}",
         f"{m['floor_load_cold'] / m['floor_load']:.2f}×", ""],
        ["meta build + load_file + assign + touch (strict floor, cached)", f"{m['meta_floor_load']:.3f}",
         f"{m['meta_floor_load'] / m['floor_load']:.2f}×", ""],
        ["kiln load right after register (every SHA-256 verified, meta rebuild, touch): cold", f"{m['kiln_load']:.3f}",
         f"{registry['load_ratio']:.2f}× the cold floor", "≤ 1.5×"],
        ["kiln load of the same version again: blob in the page cache", f"{m['kiln_load_hot']:.3f}",
         f"{registry['load_ratio_hot']:.2f}× the cached floor ({registry['load_ratio_meta_floor']:.2f}× strict)",
         "≤ 1.5×"],
        ["kiln register with ONNX export + parity check (once)", f"{registry['register_with_onnx_s']:.2f}", "", ""],
    ]  # fmt: skip
    if mlflow is not None:
        mm = mlflow["median_s"]
        rows += [
            [f"MLflow {mlflow['mlflow']} log_model (default pt2 format, input_example)",
             f"{mm['log_model_default_s']:.2f}", f"{mm['log_model_default_s'] / m['floor_save']:.0f}×", ""],
            ["MLflow log_model (pickle format, pip_requirements given)", f"{mm['log_model_pickle_s']:.2f}",
             f"{mm['log_model_pickle_s'] / m['floor_save']:.0f}×", ""],
            ["MLflow load_model (pt2)", f"{mm['load_model_default_s']:.2f}",
             f"{mm['load_model_default_s'] / m['floor_load']:.1f}×", ""],
            ["MLflow load_model (pickle: unpickles)", f"{mm['load_model_pickle_s']:.2f}",
             f"{mm['load_model_pickle_s'] / m['floor_load']:.1f}×", ""],
        ]  # fmt: skip
    registry_caption = (
        f"**Register / load of a {registry['params'] / 1e6:.1f}M-parameter MLP ({registry['file_mb']:.0f} MB)**\n\n"
        f"Per-rep (paired) ratios, which share each rep's noise: register {registry['register_ratio_paired']:.2f}× "
        f"the save floor, load {registry['load_ratio_paired']:.2f}× the load floor (both read from the device)."
    )
    t = tracking
    tracking_caption = (
        f"**Run tracking** — kiln.Model.fit of an MLP 64-256-256-10, batch 64, {t['steps_per_epoch']} steps per epoch "
        f"× {t['epochs']} ({t['step_ms']:.2f} ms per step without tracking), 1 torch thread. The time spent inside "
        "TrackingCallback's hooks (per step, and the batched SQLite write at each epoch's end) is measured directly, "
        "relative to the rest of the fit; the A/B of median epoch times (epochs after the first, configurations "
        "in shuffled order) is shown too:"
    )
    tracking_rows = [
        [label, f"{t['hook_us_per_step'][key]:.1f}", f"{t['share_in_hooks'][key] * 100:.2f}%",
         f"{t['epoch_ab_overhead'][key] * 100:+.1f}%", target]
        for key, label, target in (("every=10", "TrackingCallback (default: loss kept every 10 steps)", "≤ 2%"),
                                   ("every=1", "TrackingCallback(every=1)", ""))
    ]  # fmt: skip
    return [
        harness.table(["operation", "seconds", "vs floor", "target"], rows, align="lrrr", caption=registry_caption),
        harness.table(
            ["tracking", "µs per step in the hook", "share of training time", "epoch A/B", "target"],
            tracking_rows,
            align="lrrrr",
            caption=tracking_caption,
            footer="Starting and finishing a run (system info with the git commit, data fingerprint, two SQLite "
            f"writes) costs {t['run_start_finish_ms']:.0f} ms once per fit.",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096, help="the MLP's hidden width (4096: 25.2M parameters)")
    parser.add_argument("--tracking-epochs", type=int, default=4)
    parser.add_argument("--mlflow-python", help="default: benchmarks/.venv-mlflow/bin/python")
    parser.add_argument("--mlflow-reps", type=int, default=3)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument(
        "--rollups",
        action="store_true",
        help="instead: metric logging with and without the "
        "rollup maintenance of schema revision 0002, both backends, recorded as the run 'rollups'",
    )
    parser.add_argument("--backends", action="store_true", help="instead: the SQLite and PostgreSQL backends side "
                        "by side (benchmarks/store_backends.py), recorded as the run 'backends'")  # fmt: skip
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    if args.backends:
        return backends(args)
    if args.rollups:
        return rollups(args)
    if args.smoke:
        args.reps, args.hidden, args.tracking_epochs, args.mlflow_reps = 1, 256, 2, 1
    harness.pin_threads(args.threads)
    record = harness.new_run(args.run_name)
    mlflow_python = None
    if not args.skip_mlflow:
        mlflow_python = args.mlflow_python or harness.side_python(".venv-mlflow", "MLflow's log_model and load_model")
    workdir = Path(tempfile.mkdtemp(prefix="kiln_store_bench_"))
    try:
        registry = bench_registry(args.reps, args.hidden, workdir)
        mlflow = None if mlflow_python is None else bench_mlflow(mlflow_python, args.mlflow_reps, args.threads,
                                                                 args.hidden)  # fmt: skip
        harness.pin_threads(1)
        tracking = bench_tracking(args.reps, args.tracking_epochs, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    specs = tables(registry, mlflow, tracking)
    record["conditions"].append(
        f"{args.threads} torch threads for register/load (1 for tracking); medians of {args.reps} interleaved reps"
        + ("" if mlflow is None else f"; MLflow from `{mlflow_python}`")
    )
    record.update(tables=specs, summary={"registry": registry, "mlflow": mlflow, "tracking": tracking})
    harness.publish(args, question=QUESTION, title=TITLE, record=record)


def backends(args: argparse.Namespace) -> None:
    """``--backends``: the store's two backends side by side (issue 18), a few minutes on 2 cores."""
    import store_backends

    harness.pin_threads(1)
    record = harness.new_run("backends" if args.run_name == "main" else args.run_name)
    sizes = {"reps": 3, "rows": 20_000, "writers": 8, "resolves": 300, "registers": 20, "listed": 10_000}
    if args.smoke:
        sizes = {"reps": 1, "rows": 2_000, "writers": 2, "resolves": 20, "registers": 2, "listed": 500}
    result = store_backends.measure(**sizes)
    specs = store_backends.tables(result)
    record["conditions"].append(
        f"`--backends`: medians of {sizes['reps']} reps, the backend order alternating; both stores on the same disk"
    )
    spreads = {b: {k: harness.spread(v) for k, v in found.items()} for b, found in result["samples"].items()}
    record.update(tables=specs, summary={**{k: v for k, v in result.items() if k != "samples"}, "spread": spreads})
    harness.publish(args, question=QUESTION, title=TITLE, record=record)


# ---------------------------------------------------------------------------------------------------- rollups
ROLLUP_WORKLOADS = {"2 metrics a step": 2, "50 metrics a step": 50}  # keys logged per step


def _log_rows_per_s(store: Any, keys: int, rows: int) -> float:
    """``Run.log`` of ``rows`` rows (``keys`` metrics a step, the default 2000-row buffer) and ``finish``; rows/s."""
    names = [f"m{k:02d}" for k in range(keys)]
    start = time.perf_counter()
    with store.start_run("bench") as run:
        for step in range(rows // keys):
            run.log({name: 1.0 / (step + 1 + k) for k, name in enumerate(names)}, step=step)
    return rows / (time.perf_counter() - start)


def rollups(args: argparse.Namespace) -> None:
    """``--rollups``: what keeping the metric rollups (schema revision 0002) costs metric logging, on both backends.

    Two measures. Directly: the share of a logging run's time spent in the rollup step of ``insert_metrics``
    (``summarise`` and ``add_rollups``, timed around each call). A/B: the same logging with that step switched off in
    this process (what a metric write did before revision 0002), the variants alternating every rep (as do the
    backends), read as the median of the per-rep ratios (pairs measured seconds apart share the machine's state).
    """
    import store_backends

    from kiln.store import Store
    from kiln.store import runs as store_runs

    harness.pin_threads(1)
    record = harness.new_run("rollups" if args.run_name == "main" else args.run_name)
    reps, rows = (1, 4_000) if args.smoke else (args.reps, 40_000)
    kept = (store_runs.add_rollups, store_runs.summarise)
    inside = [0.0]

    def timed_call(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*a)
            finally:
                inside[0] += time.perf_counter() - started

        return call

    samples: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="kiln_store_rollups_"))
    cluster = store_backends.postgres.Cluster(durable=True)
    try:
        stores = {"sqlite": Store(work / "sqlite-store"),
                  "postgresql": Store(cluster.url(cluster.create_database()), blobs=work / "pg-blobs")}  # fmt: skip
        for rep in range(reps):
            for backend in store_backends.BACKENDS if rep % 2 == 0 else store_backends.BACKENDS[::-1]:
                for workload, keys in ROLLUP_WORKLOADS.items():
                    for variant in ("with", "without") if rep % 2 == 0 else ("without", "with"):
                        if variant == "without":
                            store_runs.add_rollups, store_runs.summarise = (lambda *a: None), (lambda *a: {})
                        else:
                            store_runs.add_rollups, store_runs.summarise = timed_call(kept[0]), timed_call(kept[1])
                        inside[0] = 0.0
                        try:
                            speed = _log_rows_per_s(stores[backend], keys, rows)
                        finally:
                            store_runs.add_rollups, store_runs.summarise = kept
                        samples.setdefault(f"{backend}|{workload}|{variant}", []).append(speed)
                        if variant == "with":  # seconds in the rollup step / seconds of the whole run
                            samples.setdefault(f"{backend}|{workload}|share", []).append(inside[0] * speed / rows)
            print(f"rep {rep + 1}/{reps}: " + ", ".join(f"{k}={statistics.median(v):,.3g}"
                                                        for k, v in samples.items()), flush=True)  # fmt: skip
        for store in stores.values():
            store.close()
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    table_rows, cost = [], {}
    for backend in store_backends.BACKENDS:
        for workload in ROLLUP_WORKLOADS:
            found = {v: samples[f"{backend}|{workload}|{v}"] for v in ("with", "without", "share")}
            paired = statistics.median(1.0 - w / o for w, o in zip(found["with"], found["without"], strict=True))
            share = statistics.median(found["share"])
            cost[f"{backend}|{workload}"] = {"share": share, "paired": paired}
            table_rows.append([backend, workload, f"{statistics.median(found['without']):,.0f}",
                               f"{statistics.median(found['with']):,.0f}", f"{100 * share:.1f} %",
                               f"{100 * paired:.1f} %"])  # fmt: skip
    specs = [harness.table(
        ["backend", "workload", "rows/s without rollups", "rows/s with rollups", "time in rollups (direct)",
         "cost (A/B, paired)"], table_rows, align="llrrrr",
        caption=f"Metric logging with and without rollup maintenance: `Run.log` of {rows:,} rows per rep (default "
        "2000-row buffer) and `finish`. Direct: the share of the run's time inside the rollup step; A/B: median "
        "over reps of 1 - with/without",
    )]  # fmt: skip
    record["conditions"].append(f"medians of {reps} reps; backends, and the two variants, alternate every rep; "
                                "PostgreSQL: a throwaway local cluster with fsync on")  # fmt: skip
    record.update(tables=specs, summary={"samples": {k: harness.spread(v) for k, v in samples.items()},
                                         "cost": cost, "rows": rows})  # fmt: skip
    harness.publish(args, question=QUESTION, title=TITLE, record=record)


if __name__ == "__main__":
    main()
