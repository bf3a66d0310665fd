"""Training-loop overhead: kiln against a hand-written PyTorch loop, Lightning 2.6 and Keras 3 (issue 2).

The same three jobs as the peers' harness (``../shared/peers/train``): an MLP 64-256-256-10 on scikit-learn's digits,
LeNet-5 on digits upsampled to 1x32x32 and a 2-layer transformer encoder on synthetic tokens; batch 64, Adam(1e-3),
one warm-up epoch of 22 steps that is not timed, then ``--timed-epochs`` epochs timed step by step. Configs:

    torch:loader        hand-written loop over a DataLoader (TensorDataset, shuffled): the baseline of every ratio
    kiln:loader         kiln.Model.fit over the same DataLoader (same data path: measures kiln's loop alone)
    kiln:array          kiln.Model.fit over an ArrayDataset (kiln's default in-memory, batch-level data path)
    lightning:default   L.Trainer() defaults (progress bar, logger, checkpointing, summary), self.log per step
    lightning:lean      the same with progress bar, logger, checkpointing and summary off
    keras:default       Keras 3 model.fit on the torch backend, verbose="auto"
    keras:lean          the same with verbose=0
    pair:loader         kiln:loader and the hand-written loop in ONE process, taking turns epoch by epoch
    pair:array          the same for kiln:array

Three ways of measuring, because on a shared machine separate processes meet different loads: separate processes
(every config in a fresh ``python train_overhead.py child`` process; also gives peak RSS and import time), pair:*
(one process trains two copies of the network, kiln's fit and the hand-written loop taking turns epoch by epoch,
the steadiest ratio), and abba:* (whole fits of kiln and the loop alternating kiln, loop, loop, kiln in one
process, each on a fresh copy: a cross-check that includes each fit's setup and warm-up). pair:loop is the paired
method's A/A calibration: the hand-written loop paired with itself.

Not run unless named in --configs: kiln:array-tty (stdout on a pseudo-terminal, so kiln's live progress bar is
drawn), kiln:<data>-nodoctor (fit(doctor=False)), kiln:<data>-quiet (verbose=0), kiln:<data>-unfused (Adam
without torch's fused step, as the hand-written loop builds it: kiln's loop alone), kiln:loader-bare (all three),
lightning:bare (lean, and no self.log), and the pair: and abba: versions of every kiln config.

track:<variant> (not run by default) measures what recording the fit as a run costs (``fit`` with a
``TrackingCallback``: sampled batch losses, epoch logs, one store write per epoch end, the doctor's update ratios):
in one process, whole fits of the same kiln config with and without tracking alternate tracked, untracked,
untracked, tracked on fresh copies of the network, each tracked fit into a scratch SQLite store. Per fit, the time
per step is the median over its epochs after the warm-up of (epoch CPU time ÷ steps), an epoch window holding one
epoch-end write; the CPU time spent inside the tracker's epoch-end hook (its store write) is timed directly too.
Run it alone, e.g. ``--models mlp cnn --configs track:array track:array-nodoctor --import-reps 0 --run-name
tracking``.

Every run has one torch thread (OMP_NUM_THREADS=1 and torch.set_num_threads(1)); reps are interleaved (the config
order rotates every rep), each ratio is taken against torch:loader of the same model in the same rep, and tables
show medians over reps. The speed of one run is the median over its timed epochs of each epoch's steps/s, in CPU
time of the process (what the targets are judged on) and in wall time. ``import kiln`` (with kiln.Model and
kiln.data resolved) is timed over ``import torch`` in fresh interpreters.

Setup (once; every config runs with the same interpreter, so torch is identical everywhere)::

    python3.11 -m venv benchmarks/.venv-peers
    benchmarks/.venv-peers/bin/pip install torch==2.13.0 lightning "keras>=3" scikit-learn
    benchmarks/.venv-peers/bin/pip install -e .

Without that venv the script says so, runs with this interpreter and leaves out the Lightning and Keras configs.

Run (from the repository root)::

    python benchmarks/train_overhead.py --reps 5 --peer-reps 3          # ~20 min on 2 busy cores
    python benchmarks/train_overhead.py --reps 1 --models mlp --configs torch:loader kiln:loader kiln:array
    python benchmarks/train_overhead.py --smoke                         # one short rep on the MLP (~1 min)
    python benchmarks/train_overhead.py --summarize benchmarks/results/raw/train_overhead/<run>

The peers' harness is found by ``--peers``, else $KILN_PEERS_DIR, else ``../shared/peers/train`` next to the
repository. The tables go to benchmarks/results/train_overhead.json; raw rows and per-run logs to
benchmarks/results/raw/train_overhead/<timestamp>/.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import harness

QUESTION, TITLE = "train_overhead", "Training overhead (issue 2)"
MODELS = ("mlp", "cnn", "tfm")
BASELINE = "torch:loader"
# kiln runs with its defaults unless a config says otherwise: device "auto", verbose "auto" (a live bar on a
# terminal, one line per epoch otherwise).
OWN_CONFIGS: dict[str, dict[str, Any]] = {
    "torch:loader": {},
    "kiln:loader": {"data": "loader"},
    "kiln:array": {"data": "array"},
    "kiln:array-tty": {"data": "array", "tty": True},
    "kiln:loader-quiet": {"data": "loader", "verbose": 0},
    "kiln:array-quiet": {"data": "array", "verbose": 0},
    "kiln:loader-nodoctor": {"data": "loader", "doctor": False},
    "kiln:array-nodoctor": {"data": "array", "doctor": False},
    # Adam without torch's fused step (kiln builds named optimizers fused), as the hand-written loop builds it
    "kiln:loader-unfused": {"data": "loader", "fused": False},
    "kiln:array-unfused": {"data": "array", "fused": False},
    "kiln:loader-bare": {"data": "loader", "doctor": False, "fused": False, "verbose": 0},
}
KILN_VARIANTS = tuple(name.split(":")[1] for name in OWN_CONFIGS if name.startswith("kiln:"))
PEER_SCRIPTS = {"lightning": "bench_lightning.py", "keras": "bench_keras.py"}
PEER_CONFIGS = ("lightning:default", "lightning:lean", "lightning:bare", "keras:default", "keras:lean")
CONFIGS = (BASELINE, "kiln:loader", "kiln:array", *PEER_CONFIGS[:2], *PEER_CONFIGS[3:], "pair:loader", "pair:array")
ALL_CONFIGS = (
    *dict.fromkeys([*CONFIGS, *OWN_CONFIGS, *PEER_CONFIGS]),
    *(f"pair:{v}" for v in KILN_VARIANTS if f"pair:{v}" not in CONFIGS),
    "pair:loop",  # the A/A calibration
    *(f"abba:{v}" for v in KILN_VARIANTS),
    *(f"track:{v}" for v in KILN_VARIANTS if not OWN_CONFIGS[f"kiln:{v}"].get("tty")),
)
SMOKE_CONFIGS = ("torch:loader", "kiln:loader", "kiln:array", "kiln:array-tty", "pair:array", "abba:array",
                 "lightning:lean")  # fmt: skip
# The transformer takes ~0.1 s a step on one thread: 2 timed epochs (44 steps) measure it well and keep a 5-rep run
# near 20 minutes. Paired runs time epoch by epoch: more, shorter epochs give more pairs.
TIMED_EPOCHS = {"mlp": 14, "cnn": 14, "tfm": 2}
PAIRED_EPOCHS = {"mlp": 40, "cnn": 12, "tfm": 2}
IMPORT_SNIPPETS = {
    "torch": "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)",
    "kiln": "import time; t = time.perf_counter(); import kiln; kiln.Model; kiln.Callback; "
    "from kiln.data import ArrayDataset; print(time.perf_counter() - t)",
    "kiln after torch": "import torch, time; t = time.perf_counter(); import kiln; kiln.Model; kiln.Callback; "
    "from kiln.data import ArrayDataset; print(time.perf_counter() - t)",
    "bare kiln": "import time; t = time.perf_counter(); import kiln; print(time.perf_counter() - t)",
}
RATE, WALL_RATE = "cpu_steps_per_s_epoch_median", "wall_steps_per_s_epoch_median"  # targets: the CPU-time ratio
TARGET_SAME_PATH, TARGET_ARRAY_MLP, TARGET_IMPORT_S, TARGET_RSS = 0.97, 1.5, 0.5, 1.1
TARGET_TRACKING = 1.02  # a tracked fit's time per step ÷ the same fit untracked


def uses_tty(config: str) -> bool:
    """True when ``config`` runs with stdout on a pseudo-terminal (kiln's live progress bar)."""
    return bool(OWN_CONFIGS.get("kiln:" + config.split(":")[1], {}).get("tty"))


# ---------------------------------------------------------------------------------------------------- child side
def set_step_budget(common: ModuleType, timed_epochs: int) -> None:
    """Change how many epochs the peers' harness times; its StepTimer and report read these globals at run time."""
    common.TIMED_EPOCHS = timed_epochs
    common.EPOCHS = common.WARMUP_EPOCHS + timed_epochs
    common.TIMED_STEPS = timed_epochs * common.STEPS_PER_EPOCH
    common.TOTAL_STEPS = common.EPOCHS * common.STEPS_PER_EPOCH


def add_epoch_timing(common: ModuleType) -> None:
    """Make the harness' StepTimer also stamp every epoch boundary, and its report add per-epoch step rates.

    Per-epoch rates (their median ignores bursts of other people's work) and rates over CPU time (which leave out
    the time the process waited for a core). Each epoch window runs from the last step of the previous epoch to its
    own last step, so it includes the framework's work between epochs. The patch is in place before the peers'
    scripts build their timer, so every framework is timed by the same code.
    """
    base_timer, base_report = common.StepTimer, common.report

    class EpochStepTimer(base_timer):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.wall_marks: list[float] = []
            self.cpu_marks: list[float] = []

        def tick(self) -> None:
            super().tick()
            if self.n % common.STEPS_PER_EPOCH == 0 and self.n >= common.WARMUP_STEPS:
                self.wall_marks.append(time.perf_counter())
                self.cpu_marks.append(time.process_time())

    def rates(marks: list[float]) -> list[float]:
        return [common.STEPS_PER_EPOCH / max(b - a, 1e-9) for a, b in itertools.pairwise(marks)]

    def report(framework: str, mode: str, model: str, timer: Any, t_imported: float, acc: float,
               extra: dict[str, Any] | None = None) -> None:  # fmt: skip
        extra = dict(extra or {})
        wall, cpu = rates(getattr(timer, "wall_marks", [])), rates(getattr(timer, "cpu_marks", []))
        if wall:
            extra.update(epoch_steps_per_s=wall, epoch_cpu_steps_per_s=cpu, **{WALL_RATE: statistics.median(wall)},
                         **{RATE: statistics.median(cpu)})  # fmt: skip
        base_report(framework, mode, model, timer, t_imported, acc, extra)

    common.StepTimer, common.report = EpochStepTimer, report


def fit_kiln(config: str, net: Any, x_train: Any, y_train: Any, common: ModuleType, callbacks: list[Any]) -> None:
    """Train ``net`` with kiln.Model.fit as kiln config ``config`` says (data path, verbose, doctor, fused Adam)."""
    import torch_models as M

    import kiln
    from kiln.data import ArrayDataset

    options = OWN_CONFIGS[config]
    optimizer_options = {"fused": options["fused"]} if "fused" in options else None
    trainer = kiln.Model(net, loss="cross_entropy", optimizer="adam", lr=common.LR, optimizer_options=optimizer_options)
    data = M.loader(x_train, y_train) if options["data"] == "loader" else ArrayDataset(x_train, y_train)
    fit_options: dict[str, Any] = {"verbose": options.get("verbose", "auto")}
    if "doctor" in options:  # only where a config changes it, so kiln versions without the option still run
        fit_options["doctor"] = options["doctor"]
    trainer.fit(data, epochs=common.EPOCHS, batch_size=common.BATCH, seed=0, callbacks=callbacks, **fit_options)


def hand_epochs(net: Any, optimizer: Any, loader: Any, epochs: int, tick: Any = None) -> Any:
    """The hand-written loop every ratio is taken against; returns the last loss."""
    import torch.nn.functional as F

    net.train()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            optimizer.step()
            if tick is not None:
                tick()
    return loss


def run_own(config: str, model: str, common: ModuleType) -> None:
    """The hand-written loop or kiln's fit in this process, timed by the harness' StepTimer after every step."""
    import torch

    if config.startswith("kiln:"):
        import kiln
        from kiln.data import ArrayDataset  # noqa: F401 - imported here so that its cost lands in import_s

        kiln.Model  # noqa: B018 - resolve the lazy export now, so its import cost lands in import_s
    import torch_models as M  # the peers' reference networks (imports torch and common only)

    t_imported = time.time()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = M.tensors(model)
    net = M.build(model)
    timer = common.StepTimer()
    extra: dict[str, Any] = {"threads": torch.get_num_threads(), "stdout_tty": sys.stdout.isatty()}
    if config == BASELINE:
        timer.start()
        optimizer = torch.optim.Adam(net.parameters(), lr=common.LR)
        loss = hand_epochs(net, optimizer, M.loader(x_train, y_train), common.EPOCHS, timer.tick)
        extra["final_loss"] = loss.item()
    else:

        class Tick(kiln.Callback):
            def on_fit_start(self, model: Any) -> None:
                timer.start()

            def on_train_batch_end(self, model: Any, step: int, loss: torch.Tensor) -> None:
                self.last_loss = loss
                timer.tick()

        tick = Tick()
        fit_kiln(config, net, x_train, y_train, common, [tick])
        extra["final_loss"] = float(tick.last_loss)
    framework, mode = config.split(":")
    common.report(framework, mode, model, timer, t_imported, M.accuracy(net, x_test, y_test), extra)


def run_paired(config: str, model: str, common: ModuleType) -> None:
    """kiln's fit of one copy and, at the end of each kiln epoch, one epoch of the hand-written loop on a twin.

    Neighbouring epochs see the same machine, so (loop epoch time ÷ kiln epoch time) is a far steadier measure of
    kiln's cost than a ratio of two runs. The kiln epoch runs from the end of the twin's previous epoch to the end of
    kiln's epoch, so it includes all of kiln's work between epochs; the first epoch of each is warm-up.
    """
    import torch
    import torch_models as M

    import kiln

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = M.tensors(model)
    built = M.build(model)
    # Both sides get a copy, so neither keeps the original's memory layout (which alone can move speed by percents).
    net, twin = copy.deepcopy(built), copy.deepcopy(built)
    del built
    twin_optimizer, twin_loader = torch.optim.Adam(twin.parameters(), lr=common.LR), M.loader(x_train, y_train)

    class TakeTurns(kiln.Callback):
        def __init__(self) -> None:
            self.mark: tuple[float, float] | None = None
            self.kiln: list[tuple[float, float]] = []  # (wall s, CPU s) per timed epoch
            self.loop: list[tuple[float, float]] = []

        def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
            now = harness.clocks()
            if self.mark is not None:
                self.kiln.append((now[0] - self.mark[0], now[1] - self.mark[1]))
            hand_epochs(twin, twin_optimizer, twin_loader, 1)
            done = harness.clocks()
            if self.mark is not None:
                self.loop.append((done[0] - now[0], done[1] - now[1]))
            self.mark = done

    turns = TakeTurns()
    if config == "kiln:loop":  # the A/A calibration: the timed side is the same hand-written loop as the twin
        own_optimizer, own_loader = torch.optim.Adam(net.parameters(), lr=common.LR), M.loader(x_train, y_train)
        for epoch in range(common.EPOCHS):
            hand_epochs(net, own_optimizer, own_loader, 1)
            turns.on_epoch_end(None, epoch, {})
    else:
        fit_kiln(config, net, x_train, y_train, common, [turns])
    steps = common.STEPS_PER_EPOCH
    kiln_times, loop_times = turns.kiln, turns.loop
    harness.print_result({
        "framework": "pair", "mode": config.split(":")[1], "model": model, "pairs": len(kiln_times),
        "wall_ratios": harness.ratios([t[0] for t in loop_times], [t[0] for t in kiln_times]),
        "cpu_ratios": harness.ratios([t[1] for t in loop_times], [t[1] for t in kiln_times]),
        "kiln_cpu_steps_per_s": statistics.median(steps / cpu for _, cpu in kiln_times),
        "loop_cpu_steps_per_s": statistics.median(steps / cpu for _, cpu in loop_times),
        "test_acc": M.accuracy(net, x_test, y_test), "twin_test_acc": M.accuracy(twin, x_test, y_test),
    })  # fmt: skip


def run_alternating(config: str, model: str, common: ModuleType, blocks: int = 4) -> None:
    """Whole fits of kiln and of the loop in one process, each on a fresh copy, in the order kiln, loop, loop, kiln.

    Each side pays its whole fit (setup, warm-up epoch, everything between epochs) and allocates its model anew; the
    ABBA order cancels a steady drift. One ratio per block: (loop time of its two fits) ÷ (kiln time of its two).
    """
    import torch
    import torch_models as M

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = M.tensors(model)
    built = M.build(model)
    trained: dict[str, Any] = {}

    def fit(side: str) -> tuple[float, float]:
        net = copy.deepcopy(built)
        start = harness.clocks()
        if side == "kiln":
            fit_kiln(config, net, x_train, y_train, common, [])
        else:
            optimizer = torch.optim.Adam(net.parameters(), lr=common.LR)
            hand_epochs(net, optimizer, M.loader(x_train, y_train), common.EPOCHS)
        trained[side] = net
        end = harness.clocks()
        return end[0] - start[0], end[1] - start[1]

    fit("kiln"), fit("loop")  # warm-up: first-call costs (imports, allocator growth) land on neither side
    wall, cpu, kiln_cpu, loop_cpu = [], [], [], []
    for _ in range(blocks):
        k1, l1, l2, k2 = fit("kiln"), fit("loop"), fit("loop"), fit("kiln")
        wall.append((l1[0] + l2[0]) / (k1[0] + k2[0]))
        cpu.append((l1[1] + l2[1]) / (k1[1] + k2[1]))
        kiln_cpu += [k1[1], k2[1]]
        loop_cpu += [l1[1], l2[1]]
    steps = common.EPOCHS * common.STEPS_PER_EPOCH
    harness.print_result({
        "framework": "abba", "mode": config.split(":")[1], "model": model, "pairs": blocks, "wall_ratios": wall,
        "cpu_ratios": cpu, "kiln_cpu_steps_per_s": steps / statistics.median(kiln_cpu),
        "loop_cpu_steps_per_s": steps / statistics.median(loop_cpu),
        "test_acc": M.accuracy(trained["kiln"], x_test, y_test),
        "twin_test_acc": M.accuracy(trained["loop"], x_test, y_test),
    })  # fmt: skip


def run_tracked(config: str, model: str, common: ModuleType, blocks: int = 6) -> None:
    """Whole fits of kiln ``config`` with and without run tracking, alternating tracked, untracked, untracked, tracked.

    Each fit trains a fresh copy; a tracked fit records into a scratch store (SQLite, in the work folder). One ratio
    per block: (tracked time per step of its two fits) ÷ (untracked time per step of its two), each fit's time per
    step being the median over its timed epochs of epoch CPU time ÷ steps. The clock callback runs before the
    tracker's epoch-end hook, so every epoch window holds exactly one epoch-end write.
    """
    import torch_models as M

    import kiln
    from kiln.store import Store
    from kiln.train.tracking import TrackingCallback

    x_train, y_train, _, _ = M.tensors(model)
    built = M.build(model)
    store = Store(Path(os.environ.get("BENCH_WORK_DIR", tempfile.mkdtemp())) / "store")
    inside = [0.0]  # CPU s inside tracking's on_epoch_end (sampled losses to numbers, epoch logs, the store write)

    class TimedTracking(TrackingCallback):
        def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
            start = time.process_time()
            super().on_epoch_end(model, epoch, logs)
            inside[0] += time.process_time() - start

    class EpochClock(kiln.Callback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []  # (CPU s, CPU s inside tracking so far) at each epoch end

        def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
            self.marks.append((time.process_time(), inside[0]))

    def fit(tracked: bool) -> tuple[float, float]:
        """(median CPU s per step, CPU s per step inside tracking's epoch-end hook) of one fit."""
        clock = EpochClock()
        callbacks: list[Any] = [clock, TimedTracking(store, "bench")] if tracked else [clock]
        fit_kiln(config, copy.deepcopy(built), x_train, y_train, common, callbacks)
        windows = list(itertools.pairwise(clock.marks))  # from the end of the warm-up epoch on
        per_step = [(b[0] - a[0]) / common.STEPS_PER_EPOCH for a, b in windows]
        hook = (clock.marks[-1][1] - clock.marks[0][1]) / (len(windows) * common.STEPS_PER_EPOCH)
        return statistics.median(per_step), hook

    fit(True), fit(False)  # warm-up: first-call costs (imports, the store's tables, allocator growth) land on neither
    ratios, tracked_s, untracked_s, hook_s = [], [], [], []
    for _ in range(blocks):
        t1, u1, u2, t2 = fit(True), fit(False), fit(False), fit(True)
        ratios.append((t1[0] + t2[0]) / (u1[0] + u2[0]))
        tracked_s += [t1[0], t2[0]]
        untracked_s += [u1[0], u2[0]]
        hook_s += [t1[1], t2[1]]
    harness.print_result({
        "framework": "track", "mode": config.split(":")[1], "model": model, "pairs": blocks,
        "tracked_over_untracked": ratios, "tracked_ms_per_step": [1e3 * s for s in tracked_s],
        "untracked_ms_per_step": [1e3 * s for s in untracked_s], "hook_us_per_step": [1e6 * s for s in hook_s],
        "steps_per_epoch": common.STEPS_PER_EPOCH,
    })  # fmt: skip


def child_main(argv: list[str]) -> None:
    """``child --config C --model M --peers DIR [--timed-epochs N] [--threads T]``: one run, one RESULT line."""
    parser = argparse.ArgumentParser(prog="train_overhead.py child")
    parser.add_argument("--config", required=True, choices=ALL_CONFIGS)
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--peers", type=Path, default=harness.peers_dir("train"))
    parser.add_argument("--timed-epochs", type=int, default=None, help="timed epochs (default: the harness' 14)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.peers))
    import common  # the peers' harness: stdlib only, so it does not distort import times

    if args.timed_epochs is not None:
        set_step_budget(common, args.timed_epochs)
    add_epoch_timing(common)
    framework, mode = args.config.split(":")
    if framework in PEER_SCRIPTS:  # the peers' own script, run unchanged in this process
        script = args.peers / PEER_SCRIPTS[framework]
        sys.argv = [str(script), "--model", args.model, "--mode", mode]
        runpy.run_path(str(script), run_name="__main__")
        return
    import torch

    torch.set_num_threads(args.threads)
    if framework == "pair":
        run_paired(f"kiln:{mode}", args.model, common)
    elif framework == "abba":
        run_alternating(f"kiln:{mode}", args.model, common)
    elif framework == "track":
        run_tracked(f"kiln:{mode}", args.model, common)
    else:
        run_own(args.config, args.model, common)


# ---------------------------------------------------------------------------------------------------- driver side
def run_one(config: str, model: str, rep: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """One fresh child process for (config, model); returns its RESULT dict (or an error) labelled with ``config``."""
    timed = (args.paired_epochs if config.startswith("pair:") else args.timed_epochs)[model]
    command = [args.python, __file__, "child", "--config", config, "--model", model, "--peers", str(args.peers),
               "--timed-epochs", str(timed), "--threads", str(args.threads)]  # fmt: skip
    work = tempfile.mkdtemp(prefix=f"kiln_overhead_{model}_")
    env = harness.thread_env(args.threads, KERAS_BACKEND="torch", PYTHONUNBUFFERED="1", BENCH_WORK_DIR=work,
                             BENCH_DATA_DIR=str(args.data), KILN_PEERS_DIR=str(args.peers))  # fmt: skip
    env["BENCH_LAUNCH_T"] = repr(time.time())
    env.pop("COLUMNS", None)
    log_path = run_dir / "logs" / f"{model}_{config.replace(':', '_')}_r{rep}.log"
    result = harness.run_for_result(command, env=env, cwd=work, log_path=log_path, timeout=args.timeout,
                                    tty=uses_tty(config), require_success=False)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    result.update(config=config, model=model, rep=rep)
    return result


def measure_imports(args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds for each import snippet, each in a fresh interpreter, interleaved; one untimed round first."""
    times: dict[str, list[float]] = {name: [] for name in IMPORT_SNIPPETS}
    for round_ in range(args.import_reps + 1):
        for name, snippet in IMPORT_SNIPPETS.items():
            out = subprocess.run([args.python, "-c", snippet], env=harness.thread_env(args.threads), cwd=harness.REPO,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            if round_ > 0:  # round 0 warms the page cache and writes .pyc files
                times[name].append(float(out.strip().splitlines()[-1]))
    return times


def per_rep_ratios(rows: list[dict[str, Any]], model: str, config: str, key: str) -> list[float]:
    base = {r["rep"]: r[key] for r in rows if r["model"] == model and r["config"] == BASELINE and key in r}
    mine = [r for r in rows if r["model"] == model and r["config"] == config and key in r and r["rep"] in base]
    return [r[key] / base[r["rep"]] for r in mine]


def speed_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    configs = [
        c for c in ALL_CONFIGS if not c.startswith(("pair:", "abba:", "track:")) and any(r["config"] == c for r in rows)
    ]
    fmt, median = harness.fmt, harness.median
    cells = []
    for model, config in itertools.product(MODELS, configs):
        runs = [r for r in rows if r["model"] == model and r["config"] == config]
        ok = [r for r in runs if RATE in r]
        if runs and not ok:
            cells.append([model, config, "0", f"FAILED: {runs[0].get('error')}", *[""] * 8])
        if not ok:
            continue
        base = {r["rep"]: r[RATE] for r in rows if r["model"] == model and r["config"] == BASELINE and RATE in r}
        overhead = [1e6 / r[RATE] - 1e6 / base[r["rep"]] for r in ok if r["rep"] in base]
        cells.append([
            model, config, str(len(ok)), fmt(median(r[RATE] for r in ok), ".1f"),
            fmt(median(per_rep_ratios(rows, model, config, RATE))), fmt(median(overhead), ".0f"),
            fmt(median(r[WALL_RATE] for r in ok), ".1f"), fmt(median(per_rep_ratios(rows, model, config, WALL_RATE))),
            fmt(median(r["peak_rss_mb"] for r in ok), ".0f"),
            fmt(median(per_rep_ratios(rows, model, config, "peak_rss_mb"))), fmt(median(r["import_s"] for r in ok)),
            fmt(median(r["test_acc"] for r in ok), ".3f"),
        ])  # fmt: skip
    columns = ["model", "config", "n", "steps/s, CPU", "ratio vs loop, CPU", "overhead µs/step, CPU", "steps/s, wall",
               "ratio vs loop, wall", "peak RSS MB", "RSS vs loop", "import s", "test acc"]  # fmt: skip
    return harness.table(columns, cells)


def paired_table(rows: list[dict[str, Any]], prefix: str, caption: str) -> dict[str, Any]:
    configs = [c for c in ALL_CONFIGS if c.startswith(prefix) and any(r["config"] == c for r in rows)]
    cells = []
    for model, config in itertools.product(MODELS, configs):
        runs = [r for r in rows if r["model"] == model and r["config"] == config]
        ok = [r for r in runs if "cpu_ratios" in r]
        label = "loop (A/A)" if config == "pair:loop" else config.replace(prefix, "kiln:")
        if runs and not ok:
            cells.append([model, label, "0", f"FAILED: {runs[0].get('error')}", *[""] * 6])
        if not ok:
            continue
        cpu = [x for r in ok for x in r["cpu_ratios"]]
        wall = [x for r in ok for x in r["wall_ratios"]]
        low, high = harness.middle_half(cpu)
        accuracy = (
            f"{harness.median(r['test_acc'] for r in ok):.3f} / {harness.median(r['twin_test_acc'] for r in ok):.3f}"
        )
        kiln_rate, loop_rate = (harness.median(r[f"{side}_cpu_steps_per_s"] for r in ok) for side in ("kiln", "loop"))
        cells.append([
            model, label, str(len(ok)), str(len(cpu)), harness.fmt(kiln_rate, ".1f"), harness.fmt(loop_rate, ".1f"),
            f"**{statistics.median(cpu):.3f}**", f"{low:.3f} – {high:.3f}", harness.fmt(harness.median(wall), ".3f"),
            accuracy,
        ])  # fmt: skip
    what = "epoch pairs" if prefix == "pair:" else "ABBA blocks"
    columns = ["model", "kiln config", "runs", what, "kiln steps/s, CPU", "loop steps/s, CPU", "kiln ÷ loop, CPU",
               "middle half of the pairs, CPU", "kiln ÷ loop, wall", "test acc kiln / loop"]  # fmt: skip
    return harness.table(columns, cells, caption=caption)


def tracking_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    configs = [c for c in ALL_CONFIGS if c.startswith("track:") and any(r["config"] == c for r in rows)]
    median, fmt = harness.median, harness.fmt
    cells = []
    for model, config in itertools.product(MODELS, configs):
        ok = [r for r in rows if r["model"] == model and r["config"] == config and "tracked_over_untracked" in r]
        if not ok:
            continue
        ratios = [x for r in ok for x in r["tracked_over_untracked"]]
        tracked = statistics.median(x for r in ok for x in r["tracked_ms_per_step"])
        untracked = statistics.median(x for r in ok for x in r["untracked_ms_per_step"])
        low, high = harness.middle_half(ratios)
        hook = median(x for r in ok for x in r["hook_us_per_step"])
        cells.append([
            model, config.replace("track:", "kiln:"), str(len(ok)), str(len(ratios)), fmt(untracked, ".3f"),
            fmt(tracked, ".3f"), f"**{median(ratios):.3f}**", f"{low:.3f} – {high:.3f}",
            f"{1e3 * (tracked - untracked):.0f}", fmt(hook, ".0f"),
        ])  # fmt: skip
    columns = ["model", "kiln config", "runs", "ABBA blocks", "untracked ms/step, CPU", "tracked ms/step, CPU",
               "tracked ÷ untracked, CPU", "middle half of the blocks", "difference µs/step",
               "inside tracking's epoch end µs/step"]  # fmt: skip
    caption = (
        "Tracking (track:*): whole fits with and without run tracking in one process, alternating tracked, "
        "untracked, untracked, tracked, each on a fresh copy. ms/step: median over fits of the median epoch's "
        "CPU time per step (each epoch window holds one epoch-end store write); tracked ÷ untracked: median "
        "over blocks. The last column is the CPU time inside the tracker's epoch-end hook (sampled losses to "
        "numbers, epoch logs, the store transaction) spread over the epoch's steps, timed directly."
    )
    return harness.table(columns, cells, caption=caption)


def import_table(times: dict[str, list[float]]) -> tuple[dict[str, Any], float | None]:
    medians = {name: harness.median(values) for name, values in times.items()}
    cells = [[name, str(len(v)), harness.fmt(medians[name], ".3f"), harness.fmt(min(v, default=None), ".3f")]
             for name, v in times.items()]  # fmt: skip
    over = None
    if None not in (medians.get("kiln"), medians.get("torch"), medians.get("kiln after torch")):
        difference = medians["kiln"] - medians["torch"]  # type: ignore[operator]
        over = max(difference, medians["kiln after torch"])  # type: ignore[type-var]  # two estimates: the larger
        cells += [["kiln over torch: median kiln - median torch", "", f"{difference:.3f}", ""],
                  ["**kiln over torch** (larger of the two estimates)", "", f"**{over:.3f}**", ""]]  # fmt: skip
    caption = ("Import time (`kiln` = `import kiln` plus resolving `kiln.Model`, `kiln.Callback` and "
               "`kiln.data.ArrayDataset`; `bare kiln` = `import kiln` alone, which is lazy):")  # fmt: skip
    return harness.table(["snippet (fresh interpreter)", "n", "median s", "min s"], cells, caption=caption), over


def target_lines(rows: list[dict[str, Any]], import_over: float | None) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines: list[str] = []
    for model, variant, goal in [
        *((m, "loader", TARGET_SAME_PATH) for m in MODELS),
        ("mlp", "array", TARGET_ARRAY_MLP),
    ]:
        separate = harness.median(per_rep_ratios(rows, model, f"kiln:{variant}", RATE))
        paired = harness.median(x for r in rows if r["model"] == model and r["config"] == f"pair:{variant}"
                                for x in r.get("cpu_ratios", []))  # fmt: skip
        judged = paired if paired is not None else separate
        if judged is not None:
            parts = [f"paired {paired:.3f}× CPU"] if paired is not None else []
            parts += [f"separate processes {separate:.2f}× CPU"] if separate is not None else []
            lines.append(
                f"- kiln ≥ {goal}× the loop, {variant}, {model}: {'; '.join(parts)} — {verdict(judged >= goal)}"
            )
    if import_over is not None:
        lines.append(f"- `import kiln` ≤ {TARGET_IMPORT_S} s over `import torch`: {import_over:.3f} s — "
                     f"{verdict(import_over <= TARGET_IMPORT_S)}")  # fmt: skip
    for model, config in itertools.product(MODELS, [c for c in ALL_CONFIGS if c.startswith("track:")]):
        ratio = harness.median(x for r in rows if r["model"] == model and r["config"] == config
                               for x in r.get("tracked_over_untracked", []))  # fmt: skip
        if ratio is not None:
            lines.append(f"- tracking ≤ {TARGET_TRACKING - 1:.0%} of a step, {config}, {model}: {ratio - 1:+.1%} — "
                         f"{verdict(ratio <= TARGET_TRACKING)}")  # fmt: skip
    for config, model in itertools.product(("kiln:loader", "kiln:array"), MODELS):
        ratio = harness.median(per_rep_ratios(rows, model, config, "peak_rss_mb"))
        if ratio is not None:
            lines.append(f"- peak RSS ≤ {TARGET_RSS}× the loop's, {config}, {model}: {ratio:.2f}× — "
                         f"{verdict(ratio <= TARGET_RSS)}")  # fmt: skip
    return lines


def summarize(meta: dict[str, Any], rows: list[dict[str, Any]], imports: dict[str, list[float]] | None) -> dict:
    """The run's tables and target lines, from the raw rows of a finished run."""
    steps = ", ".join(f"{m} {22 * meta['timed_epochs'][m]}" for m in MODELS)
    pairs = ", ".join(f"{m} {meta['paired_epochs'][m]}" for m in MODELS)
    peers = "" if meta.get("peer_reps") is None else f", Lightning and Keras in the first {meta['peer_reps']} of them"
    speed = speed_table(rows)
    tables = [speed] if speed["rows"] else []
    if any(r["config"].startswith("pair:") for r in rows):
        tables.append(paired_table(rows, "pair:", (
            "Paired runs (pair:*): one process trains two copies of the network with the same initial weights, "
            "kiln's fit and the hand-written loop over its own DataLoader taking turns epoch by epoch, so both sides "
            "of every ratio saw the same machine. kiln ÷ loop: median over all epoch pairs of the reps of (loop epoch "
            "time ÷ kiln epoch time); above 1 kiln is faster. The kiln epoch includes everything fit does between "
            f"epochs. Timed epoch pairs per run after one warm-up epoch each: {pairs}.")))  # fmt: skip
    if any(r["config"].startswith("abba:") for r in rows):
        tables.append(paired_table(rows, "abba:", (
            "Alternating whole fits (abba:*): in one process, whole fits of kiln and of the loop, each on a fresh "
            "copy of the network, in the order kiln, loop, loop, kiln; kiln ÷ loop per block = (loop time of its two "
            "fits) ÷ (kiln time of its two fits), median over the blocks of the reps. Each fit includes its setup "
            "and warm-up epoch.")))  # fmt: skip
    if any(r["config"].startswith("track:") for r in rows):
        tables.append(tracking_table(rows))
    import_over = None
    if imports:
        spec, import_over = import_table(imports)
        tables.append(spec)
    return {
        "conditions": [
            f"Reps: {meta['reps']} interleaved (config order rotated each rep){peers}; {meta['threads']} "
            f"torch thread; timed steps per run after a 22-step warm-up epoch: {steps}"
        ],
        "description": (
            "The speed of one run is the median over its timed epochs of each epoch's steps per second, in CPU time "
            "(`time.process_time`, all threads of the process: leaves out the time spent waiting for a core while "
            "other people's tests ran) and in wall time. An epoch window includes the framework's work between "
            "epochs. steps/s: median over reps. ratio vs loop: median over reps of (steps/s ÷ torch:loader steps/s "
            "of the same model in the same rep); overhead µs/step likewise. RSS vs loop: the same ratio for peak RSS "
            "(ru_maxrss). import s: launch until the framework's imports finished. test acc: held-out accuracy."
        ),
        "tables": tables,
        "notes": "Targets (speed judged on the paired runs where present):\n\n"
        + "\n".join(target_lines(rows, import_over)),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    extra = " ".join(c for c in ALL_CONFIGS if c not in CONFIGS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=ALL_CONFIGS, metavar="CONFIG",
                        help=f"default: {' '.join(CONFIGS)}; also: {extra}")  # fmt: skip
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peer-reps", type=int, help="run the lightning and keras configs in the first N reps only")
    parser.add_argument("--import-reps", type=int, default=7, help="fresh interpreters per import snippet (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every run (default 1)")
    parser.add_argument("--timed-epochs", type=int, help="for every model and config (default: mlp/cnn 14, tfm 2; "
                        "paired: mlp 40, cnn 12, tfm 2)")  # fmt: skip
    parser.add_argument("--python", help="interpreter for every run (default: benchmarks/.venv-peers/bin/python)")
    parser.add_argument("--peers", type=Path, default=harness.peers_dir("train"), help="the peers' harness folder")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--summarize", type=Path, metavar="RUN_DIR", help="re-print the tables of a finished run")
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    if args.smoke:
        args.models, args.configs, args.reps, args.import_reps, args.timed_epochs = (
            ["mlp"],
            list(SMOKE_CONFIGS),
            1,
            1,
            1,
        )
    if args.timed_epochs is None:
        args.timed_epochs, args.paired_epochs = dict(TIMED_EPOCHS), dict(PAIRED_EPOCHS)
    else:
        args.timed_epochs = args.paired_epochs = dict.fromkeys(MODELS, args.timed_epochs)
    if not args.summarize and not (args.peers / "common.py").is_file():
        parser.error(
            f"--peers {args.peers} is not the peers' harness (no common.py); pass --peers or set KILN_PEERS_DIR"
        )
    if args.python is None and not args.summarize:
        args.python = harness.side_python(".venv-peers", "Lightning and Keras")
        if args.python is None:
            args.python = sys.executable
            args.configs = [c for c in args.configs if c.split(":")[0] not in PEER_SCRIPTS]
    return args


def main() -> None:
    args = parse_args()
    if args.summarize:
        meta = json.loads((args.summarize / "meta.json").read_text())
        rows = [json.loads(line) for line in (args.summarize / "raw.jsonl").read_text().splitlines()]
        imports_path = args.summarize / "imports.json"
        imports = json.loads(imports_path.read_text()) if imports_path.exists() else None
        for spec in summarize(meta, rows, imports)["tables"]:
            print(f"\n{spec.get('caption', '')}\n\n{harness.markdown_table(spec)}")
        return
    args.data = harness.raw_dir(args, QUESTION) / "data"
    harness.ensure_peer_data(args.python, args.peers, args.data)
    run_dir = harness.raw_dir(args, QUESTION) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (run_dir / "logs").mkdir(parents=True)
    record = harness.new_run(args.run_name, python=args.python, packages=("torch", "lightning", "keras", "kiln"))
    meta = {"command": record["command"], "reps": args.reps, "peer_reps": args.peer_reps, "threads": args.threads,
            "timed_epochs": args.timed_epochs, "paired_epochs": args.paired_epochs}  # fmt: skip
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"{record['software']}; kiln at {record['revision']}; raw rows in {run_dir}", flush=True)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for rep, model in itertools.product(range(args.reps), args.models):
        for config in harness.rotated(args.configs, rep):  # no config always runs first or after another
            if config.split(":")[0] in PEER_SCRIPTS and args.peer_reps is not None and rep >= args.peer_reps:
                continue
            result = run_one(config, model, rep, args, run_dir)
            rows.append(result)
            with open(run_dir / "raw.jsonl", "a") as handle:
                handle.write(json.dumps(result) + "\n")
            message = result.get("error")
            if "cpu_ratios" in result:
                message = f"kiln ÷ loop {statistics.median(result['cpu_ratios']):.3f} CPU over {result['pairs']} pairs"
            elif "tracked_over_untracked" in result:
                message = (f"tracked ÷ untracked {statistics.median(result['tracked_over_untracked']):.3f} CPU over "
                           f"{result['pairs']} blocks")  # fmt: skip
            elif RATE in result:
                message = (
                    f"{result[RATE]:7.1f} steps/s CPU  RSS {result['peak_rss_mb']:.0f} MB  acc {result['test_acc']:.3f}"
                )
            print(f"[rep {rep} {time.monotonic() - started:5.0f}s] {model} {config:20s} {message}", flush=True)
    imports = measure_imports(args) if args.import_reps > 0 else None
    if imports:
        (run_dir / "imports.json").write_text(json.dumps(imports))
    summary = summarize(meta, rows, imports)
    record["conditions"] += summary.pop("conditions")
    record.update(title="Recorded run" if args.run_name == "main" else None, **summary)
    for spec in record["tables"]:
        print(f"\n{spec.get('caption', '')}\n\n{harness.markdown_table(spec)}")
    print("\n" + record["notes"])
    path = harness.result_path(args, QUESTION)
    harness.write_result(path, question=QUESTION, title=TITLE, run=harness.finish_run(record))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2:])
    else:
        main()
