"""Tuning tools (issue 17): kiln.tune's bookkeeping per trial, TPE + median pruning against random search, and the
profiler's cost outside its window. One torch thread; scikit-learn's digits.

overhead  The same objective (build a Model from the trial's parameters, fit with validation, return the last
          val_accuracy) on three sides: a bare ``optuna.create_study().optimize`` with in-memory storage (no
          tracking, nothing survives a crash); the same bare loop on Optuna's RDBStorage in the SQLite file and with
          the settings kiln.tune gives it (what any resumable Optuna study pays, no kiln runs); and ``kiln.tune``
          (every trial a tracked run in that store, metrics each epoch, the best trial's weights kept; pruner "none"
          so all sides train the same epochs). Objectives: "mlp", a digits MLP 64-width-10 for 5 epochs (epochs of
          ~20 ms of CPU, a toy; "mlp1" the same for 1 epoch), and "cnn", the digits CNN of examples/tune's job with
          64-128 channels for 4 epochs (epochs of ~0.5-1 s of CPU: still small, but nearer a real trial's scale).
          All sides use RandomSampler with the same seed, so they train the same parameters; sides rotate every
          repetition. Per trial: the mean wall and CPU time from one trial's objective call to the next over trials
          1..n-2 (everything the loop spends per trial; the study's setup and the first trial's first-use costs left
          out); kiln's extra ms per trial and the kiln/side ratios are paired per repetition. kiln's extra is then
          fitted as fixed + per epoch from the two MLP studies, where training varies by only a few ms, and
          applied to the CNN trial, whose own direct comparison is as noisy as its training time on a shared machine.
search    50 trials of TPE with median pruning against 50 trials of random search without pruning, same space (lr
          log 1e-4..1, width 16..256, optimizer adamw/sgd), up to 10 epochs a trial, seeds 0..S-1 for both: total
          epochs trained until some trial first reaches the target val_accuracy (epochs of earlier trials, pruned
          ones counting what they ran, plus the reaching trial's epochs up to that point), and over all 50 trials.
profiler  Epoch CPU time after the profiled window: fit 8 epochs with ``profile=ProfileOptions(steps=5,
          skip_first=0)`` (the window sits in epoch 0) against the same fit without ``profile``; medians of epochs
          2-8, interleaved.

    python benchmarks/tune_bench.py                         # all three -> results/tune_bench.json
    python benchmarks/tune_bench.py --parts search --seeds 5
    python benchmarks/tune_bench.py --smoke                 # a few seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np
import optuna
import torch
from sklearn.datasets import load_digits
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.store import Store
from kiln.train.callbacks import Callback
from kiln.tune.storage import open_storage

sys.path.insert(0, str(harness.REPO / "examples" / "pipeline"))
import digits_pipeline  # the CNN and data of the example job that `kiln tune examples/tune/job.toml` searches

QUESTION, TITLE = "tune_bench", "Tuning tools (issue 17)"
TARGET = 0.97
SPACE = {"lr": ("log", 1e-4, 1.0), "width": (16, 256), "optimizer": ["adamw", "sgd"]}

digits = load_digits()
TRAIN, VAL = ArrayDataset((digits.data / 16.0).astype(np.float32), digits.target).split(0.8, seed=0)


def build(params: dict[str, Any]) -> kiln.Model:
    torch.manual_seed(0)
    width = int(params["width"])
    net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))  # (B, 10)
    return kiln.Model(net, loss="cross_entropy", optimizer=params.get("optimizer", "adamw"), lr=params["lr"],
                      metrics=["accuracy"])  # fmt: skip


def fit_options(epochs: int) -> dict[str, Any]:
    return {"epochs": epochs, "batch_size": 64, "seed": 0, "verbose": 0, "doctor": False}


# ---------------------------------------------------------------------------------------------------- overhead
@dataclasses.dataclass(frozen=True)
class Task:
    """One objective for the overhead part: the model a trial builds, its data, and the space both sides search."""

    build: Callable[[dict[str, Any]], kiln.Model]
    suggest: Callable[[optuna.Trial], dict[str, Any]]  # what the bare loops call, drawing as kiln.tune's space does
    space: dict[str, Any]
    train: ArrayDataset
    val: ArrayDataset
    epochs: int
    trials: int


def build_cnn(params: dict[str, Any]) -> kiln.Model:
    torch.manual_seed(0)
    return kiln.Model(digits_pipeline.cnn(int(params["channels"])), loss="cross_entropy", optimizer="adamw",
                      lr=params["lr"], metrics=["accuracy"])  # fmt: skip


IMAGES_TRAIN, IMAGES_VAL = digits_pipeline.data().split(0.8, seed=0)
TASKS = {
    "mlp": Task(build, lambda t: {"lr": t.suggest_float("lr", 1e-4, 1.0, log=True),
                                  "width": t.suggest_int("width", 16, 256)},
                {"lr": SPACE["lr"], "width": SPACE["width"]}, TRAIN, VAL, epochs=5, trials=10),
    "mlp1": Task(build, lambda t: {"lr": t.suggest_float("lr", 1e-4, 1.0, log=True),
                                   "width": t.suggest_int("width", 16, 256)},
                 {"lr": SPACE["lr"], "width": SPACE["width"]}, TRAIN, VAL, epochs=1, trials=10),
    "cnn": Task(build_cnn, lambda t: {"lr": t.suggest_float("lr", 1e-4, 3e-2, log=True),
                                      "channels": t.suggest_int("channels", 64, 128, step=16)},
                {"lr": ("log", 1e-4, 3e-2), "channels": ("int", 64, 128, 16)}, IMAGES_TRAIN, IMAGES_VAL, epochs=4,
                trials=5),
}  # fmt: skip
SIDES = ("bare", "optuna_sqlite", "kiln")


def _per_trial(stamps: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean wall and CPU seconds from one objective call to the next over trials 1 .. n-2: everything the loop spends
    per trial (ask, parameters, training, tell and every storage write), without the study's setup or the first
    trial's first-use costs."""
    (wall_1, cpu_1), (wall_n, cpu_n) = stamps[1], stamps[-1]
    return (wall_n - wall_1) / (len(stamps) - 2), (cpu_n - cpu_1) / (len(stamps) - 2)


def study_once(side: str, task: Task, seed: int) -> tuple[float, float, float]:
    """One study of ``task.trials`` trials on ``side``: seconds per trial (wall, CPU) and for the whole study."""
    options = fit_options(task.epochs)
    sampler = optuna.samplers.RandomSampler(seed=seed)  # the same parameters on every side
    stamps: list[tuple[float, float]] = []  # (wall, CPU) as each trial's objective is called
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        if side == "kiln":

            def setup(params: dict[str, Any]) -> tuple[Any, ...]:
                stamps.append((time.perf_counter(), time.process_time()))
                return task.build(params), task.train, task.val, options

            kiln.tune(setup, space=task.space, trials=task.trials, sampler=sampler, pruner="none", study="bench",
                      store=Path(directory) / "store")  # fmt: skip
        else:

            def objective(trial: optuna.Trial) -> float:
                stamps.append((time.perf_counter(), time.process_time()))
                history = task.build(task.suggest(trial)).fit(task.train, validation=task.val, **options)
                return history["val_accuracy"][-1]

            # optuna_sqlite: Optuna's RDBStorage on the SQLite file and with the settings kiln.tune gives it, no runs
            storage = None if side == "bare" else open_storage(Store(Path(directory) / "store"))
            study = optuna.create_study(direction="maximize", sampler=sampler, storage=storage, study_name="bench")
            study.optimize(objective, n_trials=task.trials)
        wall = time.perf_counter() - start
    assert len(stamps) == task.trials
    return (*_per_trial(stamps), wall)


def overhead(reps: int, tasks: dict[str, Task]) -> dict[str, Any]:
    """Per trial and per study (wall, setup included) for every side and task; sides rotate every repetition."""
    out: dict[str, Any] = {}
    for name, task in tasks.items():
        per_trial: dict[str, list[float]] = {side: [] for side in SIDES}
        cpu_trial: dict[str, list[float]] = {side: [] for side in SIDES}
        per_study: dict[str, list[float]] = {side: [] for side in SIDES}
        for rep in range(reps + 1):  # the first is warm-up
            for side in harness.rotated(SIDES, rep):
                trial, cpu, study = study_once(side, task, seed=rep)
                if rep:
                    per_trial[side].append(trial)
                    cpu_trial[side].append(cpu)
                    per_study[side].append(study)
        out[name] = {"trials": task.trials, "epochs": task.epochs, "reps": reps,
                     "raw": {"wall": per_trial, "cpu": cpu_trial, "study": per_study},
                     "study": {side: harness.spread(v) for side, v in per_study.items()}}  # fmt: skip
        for clock, samples in (("wall", per_trial), ("cpu", cpu_trial)):
            out[name][clock] = {
                "trial": {side: harness.spread(v) for side, v in samples.items()},
                "ratio": {f"kiln/{side}": harness.spread(harness.ratios(samples["kiln"], samples[side]))
                          for side in SIDES[:2]},
                "extra_ms": {f"kiln-{side}": harness.spread([1e3 * (k - b) for k, b in
                                                             zip(samples["kiln"], samples[side], strict=True)])
                             for side in SIDES[:2]},
            }  # fmt: skip
        print(name, {clock: out[name][clock]["ratio"] for clock in ("wall", "cpu")}, flush=True)
    return out


def cost_model(o: dict[str, Any]) -> dict[str, Any]:
    """kiln's extra time per trial as fixed + per epoch, from the paired extras of the 1- and 5-epoch MLP studies
    (tiny trials: their training varies by a few ms, so the extra is measured precisely), and what that predicts for
    the CNN's trials, next to what was measured there directly."""
    out: dict[str, Any] = {}
    span = o["mlp"]["epochs"] - o["mlp1"]["epochs"]
    for clock in ("wall", "cpu"):
        for side in SIDES[:2]:
            one, five = (o[k][clock]["extra_ms"][f"kiln-{side}"]["median"] for k in ("mlp1", "mlp"))
            per_epoch = (five - one) / span
            fixed = one - per_epoch * o["mlp1"]["epochs"]
            entry = {"fixed_ms": fixed, "per_epoch_ms": per_epoch}
            if "cnn" in o:
                cnn = o["cnn"]
                predicted = fixed + per_epoch * cnn["epochs"]
                entry["cnn_predicted_ms"] = predicted
                entry["cnn_predicted_ratio"] = 1 + predicted / (1e3 * cnn[clock]["trial"][side]["median"])
            out[f"{clock}:kiln-{side}"] = entry
    return out


# ---------------------------------------------------------------------------------------------------- search
def search(variant: str, seed: int, trials: int, epochs: int) -> dict[str, Any]:
    sampler, pruner = ("tpe", "median") if variant == "tpe" else ("random", "none")
    with tempfile.TemporaryDirectory() as directory:
        study = kiln.tune(lambda p: (build(p), TRAIN, VAL, fit_options(epochs)), space=SPACE, trials=trials,
                          sampler=sampler, pruner=pruner, seed=seed, study="bench",
                          store=Path(directory) / "s")  # fmt: skip
        frozen = study.optuna.get_trials(deepcopy=False)
    spent, reached = 0, None
    for trial in frozen:
        curve = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        hit = next((i for i, value in enumerate(curve) if value >= TARGET), None)
        if reached is None and hit is not None:
            reached = spent + hit + 1
        spent += len(curve)
    return {"variant": variant, "seed": seed, "epochs_to_target": reached, "total_epochs": spent,
            "best": max(t.value for t in frozen if t.value is not None),
            "pruned": sum(t.state.name == "PRUNED" for t in frozen)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- profiler
class EpochClock(Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_start(self, model: Any, epoch: int) -> None:
        self._start = time.process_time()  # CPU time: one thread, and a shared machine's waits left out

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        self.seconds.append(time.process_time() - self._start)


def profiler_cost(reps: int, epochs: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"off": [], "on": []}
    for rep in range(reps + 1):
        for side in harness.rotated(["off", "on"], rep):
            clock = EpochClock()
            extra = {
                "profile": kiln.ProfileOptions(steps=5, skip_first=0, trace=Path(tempfile.gettempdir()) / "t.json")
            }
            with contextlib.redirect_stdout(io.StringIO()):  # the profile table
                build({"lr": 1e-3, "width": 256}).fit(TRAIN, callbacks=[clock], **fit_options(epochs),
                                                       **(extra if side == "on" else {}))  # fmt: skip
            if rep:
                samples[side].append(statistics.median(clock.seconds[1:]))
    steps = -(-len(TRAIN) // 64)
    ratios = harness.ratios(samples["on"], samples["off"])
    return {"off_ms_per_step": 1e3 * statistics.median(samples["off"]) / steps,
            "on_ms_per_step": 1e3 * statistics.median(samples["on"]) / steps, "ratio": harness.spread(ratios),
            "reps": reps, "epochs": epochs}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["overhead", "search", "profiler"])
    parser.add_argument("--reps", type=int, default=5, help="overhead and profiler repetitions per side")
    parser.add_argument("--seeds", type=int, default=3, help="search: seeds per variant")
    parser.add_argument("--trials", type=int, default=50, help="search: trials per study")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="overhead: objectives")
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    tasks = dict(TASKS)
    if args.smoke:
        args.reps, args.seeds, args.trials = 1, 1, 4
        tasks = {k: dataclasses.replace(t, epochs=min(t.epochs, 2), trials=3) for k, t in TASKS.items()}
    tasks = {k: t for k, t in tasks.items() if k in args.tasks}
    harness.pin_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("kiln").setLevel(logging.ERROR)
    record = harness.new_run(args.run_name)
    tables, summary = [], {}
    if "overhead" in args.parts:
        o = overhead(args.reps, tasks)
        summary["overhead"] = o
        labels = {"bare": "bare Optuna loop (in-memory storage)",
                  "optuna_sqlite": "bare Optuna loop on RDBStorage (the store's SQLite file, kiln's settings)",
                  "kiln": "kiln.tune (every trial a run, metrics per epoch, best weights kept)"}  # fmt: skip
        for name, r in o.items():
            rows = [[labels[side], f"{r['wall']['trial'][side]['median']:.4f}",
                     f"{r['cpu']['trial'][side]['median']:.4f}",
                     f"{r['study'][side]['median']:.2f}"] for side in SIDES]  # fmt: skip

            def paired(clock: str, side: str, r: dict[str, Any] = r) -> str:
                ratio, extra = r[clock]["ratio"][f"kiln/{side}"], r[clock]["extra_ms"][f"kiln-{side}"]
                return (f"{ratio['median']:.3f} ({ratio['q1']:.3f}-{ratio['q3']:.3f}); "
                        f"{extra['median']:+.0f} ms ({extra['q1']:+.0f} to {extra['q3']:+.0f})")  # fmt: skip

            rows += [[f"kiln / {side}: ratio (middle half); extra per trial", paired("wall", side), paired("cpu", side),
                      ""] for side in SIDES[:2]]  # fmt: skip
            task = tasks[name]
            what = {
                "mlp": "digits MLP 64-width-10",
                "mlp1": "digits MLP 64-width-10",
                "cnn": "digits CNN of examples/tune (channels 64-128)",
            }[name]
            tables.append(harness.table(
                ["side", "wall s per trial", "CPU s per trial", f"s per study ({task.trials} trials, setup)"],
                rows, align="lrrr",
                caption=f"Tuner overhead, {what}: studies of {task.trials} trials of {task.epochs} epochs, "
                f"{args.reps} per side, sides rotated; per trial: mean from one trial's objective call to the next "
                "over trials 1 to n-2; ratios and extra ms paired per repetition, median and middle half"))  # fmt: skip
        if {"mlp", "mlp1"} <= set(o):
            fit = summary["overhead_model"] = cost_model(o)
            rows = []
            for key, entry in fit.items():
                clock, versus = key.split(":")
                rows.append([f"{versus} ({clock})", f"{entry['fixed_ms']:.0f}", f"{entry['per_epoch_ms']:.1f}",
                             harness.fmt(entry.get("cnn_predicted_ms"), ".0f"),
                             harness.fmt(entry.get("cnn_predicted_ratio"), ".3f")])  # fmt: skip
            tables.append(harness.table(
                ["kiln's extra time", "ms per trial", "ms per epoch", "predicted per CNN trial (ms)",
                 "predicted kiln / side, CNN"], rows, align="lrrrr",
                caption="kiln's bookkeeping as fixed + per epoch, fitted to the paired extras of the 1- and 5-epoch "
                "MLP studies (medians), and what it predicts for the CNN trials of the table above"))  # fmt: skip
    if "search" in args.parts:
        rows = [search(v, s, args.trials, 10) for s in range(args.seeds) for v in ("tpe", "random")]
        summary["search"] = rows
        for row in rows:
            print(row, flush=True)
        cells = []
        for variant, label in (("tpe", "TPE + median pruning"), ("random", "random, no pruning")):
            mine = [r for r in rows if r["variant"] == variant]
            reach = [r["epochs_to_target"] for r in mine]
            cells.append([label, ", ".join("-" if e is None else str(e) for e in reach),
                          harness.fmt(harness.median([e for e in reach if e is not None]), ".0f"),
                          ", ".join(str(r["total_epochs"]) for r in mine), ", ".join(f"{r['best']:.4f}" for r in mine),
                          ", ".join(str(r["pruned"]) for r in mine)])  # fmt: skip
        tables.append(harness.table(
            ["search", f"epochs to val_accuracy >= {TARGET} (seed 0, 1, ...)", "median", "epochs, all trials",
             "best final val_accuracy", "pruned trials"], cells, align="lrrrrr",
            caption=f"{args.trials} trials of up to 10 epochs per study, seeds 0-{args.seeds - 1}"))  # fmt: skip
    if "profiler" in args.parts:
        p = profiler_cost(args.reps, 8 if not args.smoke else 3)
        summary["profiler"] = p
        tables.append(harness.table(
            ["fit", "ms per step (median epoch)", "profiled / plain"],
            [["plain", f"{p['off_ms_per_step']:.3f}", ""],
             ["profile=ProfileOptions(steps=5), after its window", f"{p['on_ms_per_step']:.3f}",
              f"{p['ratio']['median']:.3f} ({p['ratio']['q1']:.3f}-{p['ratio']['q3']:.3f})"]],
            align="lrr", caption="Profiler cost outside its window (epochs 2-8)"))  # fmt: skip
        print(p, flush=True)
    for spec in tables:
        print(harness.markdown_table(spec))
    record.update(description=__doc__.split("\n\n    python")[0], tables=tables, summary=summary)
    harness.write_result(harness.result_path(args, QUESTION), question=QUESTION, title=TITLE,
                         run=harness.finish_run(record))  # fmt: skip


if __name__ == "__main__":
    main()
