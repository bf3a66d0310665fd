"""One timed training run for train_overhead.py: one config on one model, in a fresh process.

train_overhead.py starts this script once per (config, model, rep) with the environment set (one thread, data
directory, launch time, work directory). It prints one ``RESULT {json}`` line in the format of the peers' harness
(``common.report``: steps/s over the timed steps, import time, peak RSS, test accuracy).

Configs:
    torch:loader        hand-written PyTorch loop over a DataLoader (TensorDataset, batch 64, shuffled): the baseline
    kiln:<variant>      kiln.Model.fit; OWN_CONFIGS below says what each variant changes (train_overhead.py lists them)
    lightning:<mode>    the peers' bench_lightning.py (default / lean / bare), run unchanged in this process
    keras:<mode>        the peers' bench_keras.py (default / lean), run unchanged in this process

Models, data, step timer and report come from the peers' harness (``--peers``), so every framework trains the same
network on the same data and is timed by the same code. ``--timed-epochs`` shortens the run (the first epoch is
always warm-up); it patches the harness' step budget before the peers' script reads it.

Run by hand (after train_overhead.py has written the data once)::

    OMP_NUM_THREADS=1 BENCH_DATA_DIR=benchmarks/results/train_overhead/data \\
        benchmarks/.venv-peers/bin/python benchmarks/train_overhead_run.py --config kiln:array --model mlp
"""

from __future__ import annotations

import argparse
import itertools
import os
import runpy
import statistics
import sys
import time
from types import ModuleType
from typing import Any

# kiln runs with its defaults unless a config says otherwise: device "auto", verbose "auto" (a live bar on a
# terminal, one line per epoch otherwise). "preview" configs try a change proposed for src/ from outside it.
OWN_CONFIGS: dict[str, dict[str, Any]] = {
    "torch:loader": {},
    "kiln:loader": {"data": "loader"},
    "kiln:array": {"data": "array"},
    "kiln:array-tty": {"data": "array", "tty": True},
    "kiln:loader-quiet": {"data": "loader", "verbose": 0},
    "kiln:array-quiet": {"data": "array", "verbose": 0},
    # kiln's gradient doctor (on by default since fit(doctor=True)) turned off, to measure what it costs
    "kiln:loader-nodoctor": {"data": "loader", "doctor": False},
    "kiln:array-nodoctor": {"data": "array", "doctor": False},
    # Adam built without torch's fused step (kiln builds named optimizers fused since 5bcbd86), so that the ratio to
    # the hand-written loop, which uses torch's default (foreach) Adam, measures kiln's loop alone
    "kiln:loader-unfused": {"data": "loader", "fused": False},
    "kiln:array-unfused": {"data": "array", "fused": False},
    # everything optional off (no doctor, unfused Adam, verbose=0): what is left is the loop itself
    "kiln:loader-bare": {"data": "loader", "doctor": False, "fused": False, "verbose": 0},
    # preview: a live bar whose redraw cost does not grow with the epoch count (train_overhead_preview.py)
    "kiln:array-tty-bar": {"data": "array", "tty": True, "verbose": 0, "bar": "preview"},
}
TTY_CONFIGS = tuple(name for name, options in OWN_CONFIGS.items() if options.get("tty"))
# pair:<variant> trains kiln:<variant> and the hand-written loop in one process, epoch by epoch (see
# train_overhead_paired.py)
PAIR_CONFIGS = tuple(f"pair:{name.split(':')[1]}" for name in OWN_CONFIGS if name.startswith("kiln:"))
# pair:loop: the paired method's A/A calibration, the hand-written loop paired with itself
CALIBRATION_CONFIGS = ("pair:loop",)
# abba:<variant>: whole fits of kiln:<variant> and of the loop alternating in one process (a cross-check of pair:)
ABBA_CONFIGS = tuple(f"abba:{name.split(':')[1]}" for name in OWN_CONFIGS if name.startswith("kiln:"))


def uses_tty(config: str) -> bool:
    """True when ``config`` must run with stdout on a pseudo-terminal (kiln's live progress bar)."""
    return config.replace("pair:", "kiln:").replace("abba:", "kiln:") in TTY_CONFIGS


PEER_SCRIPTS = {"lightning": "bench_lightning.py", "keras": "bench_keras.py"}
PEER_MODES = {"lightning": ("default", "lean", "bare"), "keras": ("default", "lean")}
MODELS = ("mlp", "cnn", "tfm")


def default_peers_dir() -> str:
    """$KILN_PEERS_DIR, else ../shared/peers/train next to the repository."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("KILN_PEERS_DIR", os.path.join(os.path.dirname(repo), "shared", "peers", "train"))


def set_step_budget(common: ModuleType, timed_epochs: int) -> None:
    """Change how many epochs the harness times; its StepTimer and report read these globals at run time."""
    common.TIMED_EPOCHS = timed_epochs
    common.EPOCHS = common.WARMUP_EPOCHS + timed_epochs
    common.TIMED_STEPS = timed_epochs * common.STEPS_PER_EPOCH
    common.TOTAL_STEPS = common.EPOCHS * common.STEPS_PER_EPOCH


def add_epoch_timing(common: ModuleType) -> None:
    """Make the harness' StepTimer also stamp every epoch boundary and its report add per-epoch step rates.

    On a shared machine other people's work stretches wall time at random. Two defences, both reported: per-epoch
    rates, whose median over the timed epochs ignores bursts, and rates over CPU time (``time.process_time``, all
    threads of the process), which leave out the time the process waited for a core. Each epoch window runs from the
    last step of the previous epoch to its own last step, so it includes the framework's work between epochs. The
    patch is in place before the peers' scripts build their timer, so every framework is timed by the same code.
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

    def report(
        framework: str,
        mode: str,
        model: str,
        timer: Any,
        t_imported: float,
        acc: float,
        extra: dict[str, Any] | None = None,
    ) -> None:
        extra = dict(extra or {})
        wall, cpu = rates(getattr(timer, "wall_marks", [])), rates(getattr(timer, "cpu_marks", []))
        if wall:
            extra.update(
                epoch_steps_per_s=wall,
                epoch_cpu_steps_per_s=cpu,
                wall_steps_per_s_epoch_median=statistics.median(wall),
                cpu_steps_per_s_epoch_median=statistics.median(cpu),
            )
        if timer.t_end is not None:
            marks = timer.cpu_marks
            extra["cpu_steps_per_s"] = common.TIMED_STEPS / max(marks[-1] - marks[0], 1e-9)
        base_report(framework, mode, model, timer, t_imported, acc, extra)

    common.StepTimer, common.report = EpochStepTimer, report


def run_peer(framework: str, mode: str, model: str, peers: str) -> None:
    """Run the peers' script for ``framework`` as if launched as ``python bench_x.py --model M --mode MODE``."""
    script = os.path.join(peers, PEER_SCRIPTS[framework])
    sys.argv = [script, "--model", model, "--mode", mode]
    runpy.run_path(script, run_name="__main__")


def fit_kiln(config: str, net: Any, x_train: Any, y_train: Any, common: ModuleType, callbacks: list[Any]) -> None:
    """Train ``net`` with kiln.Model.fit as kiln config ``config`` says (data path, verbose, previews)."""
    import torch_models as M

    import kiln
    from kiln.data import ArrayDataset

    options = OWN_CONFIGS[config]
    if options.get("bar") == "preview":
        from train_overhead_preview import ConstantCostProgressBar

        callbacks = [ConstantCostProgressBar(), *callbacks]
    optimizer_options = {"fused": options["fused"]} if "fused" in options else None
    trainer = kiln.Model(net, loss="cross_entropy", optimizer="adam", lr=common.LR, optimizer_options=optimizer_options)
    data = M.loader(x_train, y_train) if options["data"] == "loader" else ArrayDataset(x_train, y_train)
    fit_options: dict[str, Any] = {"verbose": options.get("verbose", "auto")}
    if "doctor" in options:  # only where a config changes it, so kiln versions without the option still run
        fit_options["doctor"] = options["doctor"]
    trainer.fit(data, epochs=common.EPOCHS, batch_size=common.BATCH, seed=0, callbacks=callbacks, **fit_options)


def run_own(config: str, model: str, common: ModuleType, *, threads: int) -> None:
    """The hand-written loop or kiln's fit, timed by the harness' StepTimer after every optimizer step."""
    import torch
    import torch.nn.functional as F

    if config.startswith("kiln:"):
        import kiln
        from kiln.data import ArrayDataset  # noqa: F401 - imported here so that its cost lands in import_s

        kiln.Model  # noqa: B018 - resolve the lazy export now, so its import cost lands in import_s
    import torch_models as M  # the peers' reference networks (imports torch and common only)

    t_imported = time.time()
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = M.tensors(model)
    net = M.build(model)
    timer = common.StepTimer()
    extra: dict[str, Any] = {"threads": torch.get_num_threads(), "stdout_tty": sys.stdout.isatty()}

    if config == "torch:loader":
        optimizer = torch.optim.Adam(net.parameters(), lr=common.LR)
        loader = M.loader(x_train, y_train)
        timer.start()
        net.train()
        for _ in range(common.EPOCHS):
            for xb, yb in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(xb), yb)
                loss.backward()
                optimizer.step()
                timer.tick()
        extra["final_loss"] = loss.item()
    else:

        class Tick(kiln.Callback):
            """Starts the timer when fit starts and ticks it after every optimizer step."""

            def __init__(self) -> None:
                self.last_loss: torch.Tensor | None = None

            def on_fit_start(self, model: Any) -> None:
                timer.start()

            def on_train_batch_end(self, model: Any, step: int, loss: torch.Tensor) -> None:
                self.last_loss = loss
                timer.tick()

        tick = Tick()
        fit_kiln(config, net, x_train, y_train, common, [tick])
        assert tick.last_loss is not None
        extra["final_loss"] = float(tick.last_loss)
    framework, mode = config.split(":")
    common.report(framework, mode, model, timer, t_imported, M.accuracy(net, x_test, y_test), extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    peer_configs = [f"{fw}:{mode}" for fw, modes in PEER_MODES.items() for mode in modes]
    configs = [*OWN_CONFIGS, *PAIR_CONFIGS, *CALIBRATION_CONFIGS, *ABBA_CONFIGS, *peer_configs]
    parser.add_argument("--config", required=True, choices=configs)
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--peers", default=default_peers_dir(), help="the peers' harness folder (default: %(default)s)")
    parser.add_argument("--timed-epochs", type=int, default=None, help="timed epochs (default: the harness' 14)")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", "1")),
        help="torch.set_num_threads for the own configs; 0 keeps torch's default",
    )
    args = parser.parse_args()

    peers = os.path.abspath(args.peers)
    if not os.path.isfile(os.path.join(peers, "common.py")):
        parser.error(f"--peers {peers} has no common.py; point it (or KILN_PEERS_DIR) at the peers' train harness.")
    sys.path.insert(0, peers)
    import common  # the peers' harness: stdlib only, so it does not distort import times

    if args.timed_epochs is not None:
        set_step_budget(common, args.timed_epochs)
    add_epoch_timing(common)
    framework, mode = args.config.split(":")
    if framework == "pair":
        from train_overhead_paired import run_paired

        run_paired(f"kiln:{mode}", args.model, common, threads=args.threads)
    elif framework == "abba":
        from train_overhead_paired import run_alternating

        run_alternating(f"kiln:{mode}", args.model, common, threads=args.threads)
    elif framework in PEER_SCRIPTS:
        run_peer(framework, mode, args.model, peers)
    else:
        run_own(args.config, args.model, common, threads=args.threads)


if __name__ == "__main__":
    main()
