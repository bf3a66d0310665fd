"""Tuning tools (issue 17): kiln.tune's bookkeeping per trial, TPE + median pruning against random search, and the
profiler's cost outside its window. One torch thread; scikit-learn's digits, MLP 64-width-10.

overhead  The same objective (build a Model from the trial's lr and width, fit 5 epochs with validation, return the
          last val_accuracy) run by ``kiln.tune`` (every trial a tracked run in a SQLite store, the metric reported
          each epoch, the best trial's weights kept; pruner "none" so both sides train the same epochs) and by a bare
          ``optuna.create_study().optimize`` (in-memory storage, no tracking). Both use RandomSampler with the same
          seed, so they train the same parameters. Sides alternate per repetition; median seconds per trial.
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
import io
import logging
import statistics
import tempfile
import time
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
from kiln.train.callbacks import Callback

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
def _trial_seconds(trials: list[optuna.trial.FrozenTrial]) -> float:
    """The median time from a trial's start to its end, as Optuna records them (its ask and tell left out)."""
    return statistics.median((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)


def kiln_side(trials: int, epochs: int, seed: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        study = kiln.tune(lambda p: (build(p), TRAIN, VAL, fit_options(epochs)),
                          space={k: SPACE[k] for k in ("lr", "width")}, trials=trials,
                          sampler=optuna.samplers.RandomSampler(seed=seed), pruner="none", study="bench",
                          store=Path(directory) / "store")  # fmt: skip
        return _trial_seconds(study.optuna.trials), time.perf_counter() - start


def bare_side(trials: int, epochs: int, seed: int) -> tuple[float, float]:
    def objective(trial: optuna.Trial) -> float:
        params = {"lr": trial.suggest_float("lr", 1e-4, 1.0, log=True), "width": trial.suggest_int("width", 16, 256)}
        history = build(params).fit(TRAIN, validation=VAL, **fit_options(epochs))
        return history["val_accuracy"][-1]

    start = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return _trial_seconds(study.trials), time.perf_counter() - start


def overhead(reps: int, trials: int, epochs: int) -> dict[str, Any]:
    """Per trial (median trial of each study) and per study (wall, setup included) for both sides."""
    per_trial: dict[str, list[float]] = {"kiln": [], "bare": []}
    per_study: dict[str, list[float]] = {"kiln": [], "bare": []}
    for rep in range(reps + 1):  # the first is warm-up
        for side in harness.rotated(["kiln", "bare"], rep):
            trial, study = (kiln_side if side == "kiln" else bare_side)(trials, epochs, seed=rep)
            if rep:
                per_trial[side].append(trial)
                per_study[side].append(study)
    return {
        "trial": {side: harness.spread(v) for side, v in per_trial.items()},
        "study": {side: harness.spread(v) for side, v in per_study.items()},
        "trial_ratio": harness.spread(harness.ratios(per_trial["kiln"], per_trial["bare"])),
        "study_ratio": harness.spread(harness.ratios(per_study["kiln"], per_study["bare"])),
        "trials": trials, "epochs": epochs, "reps": reps,
    }  # fmt: skip


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
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    overhead_trials, epochs = 10, 5
    if args.smoke:
        args.reps, args.seeds, args.trials, overhead_trials, epochs = 1, 1, 4, 2, 2
    harness.pin_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("kiln").setLevel(logging.ERROR)
    record = harness.new_run(args.run_name)
    tables, summary = [], {}
    if "overhead" in args.parts:
        o = overhead(args.reps, overhead_trials, epochs)
        summary["overhead"] = o
        t, w = o["trial"], o["study"]
        tables.append(harness.table(
            ["side", "s per trial", "s per study (10 trials, setup included)"],
            [["bare Optuna loop (in-memory storage)", f"{t['bare']['median']:.4f}", f"{w['bare']['median']:.3f}"],
             ["kiln.tune (SQLite store, every trial a run)", f"{t['kiln']['median']:.4f}",
              f"{w['kiln']['median']:.3f}"],
             ["kiln / bare (paired, median; middle half)",
              f"{o['trial_ratio']['median']:.3f} ({o['trial_ratio']['q1']:.3f}-{o['trial_ratio']['q3']:.3f})",
              f"{o['study_ratio']['median']:.3f} ({o['study_ratio']['q1']:.3f}-{o['study_ratio']['q3']:.3f})"]],
            align="lrr", caption=f"Tuner overhead: studies of {overhead_trials} trials of {epochs} epochs, "
            f"{args.reps} per side; s per trial is each study's median trial (start to end as Optuna records "
            "it)"))  # fmt: skip
        print(o, flush=True)
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
