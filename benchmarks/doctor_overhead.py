"""Gradient doctor overhead: fit with and without GradientDoctor on the three benchmark models, one CPU thread.

Models as in the peer benchmark: MLP 64-256-256-10 on scikit-learn's digits, LeNet-5 on the digits upsampled to
1x32x32, and a 2-layer transformer encoder (d_model 128, 4 heads, FF 256, sequence 64) on synthetic tokens; batch 64,
Adam lr 1e-3, 1408 training rows (22 steps per epoch). Each run trains 15 epochs (6 for the transformer, whose steps
are 15x slower on one thread); the first is warm-up and the rest are timed (the doctor's regular looks, every 50
steps, all fall in the timed part; its six early looks in the first epoch do not). Doctor-on and doctor-off runs
are interleaved (the order alternates per repetition) and each variant's median is reported, with their ratio.
The doctor must also stay silent on these healthy models.

With ``--tracked`` every fit, doctor on and off alike, is recorded as a run in a scratch SQLite store through a
TrackingCallback, so "on" includes what the doctor adds to a tracked run: the update_ratio/<layer> metrics of each
look and its doctor.json (written once at the start on a healthy model: an empty list). The cost of one doctor.json
write is measured apart (``record_write_ms``): it happens at the start, on a new finding and at the end, never per
step.

    python benchmarks/doctor_overhead.py                      # the recorded run -> results/doctor_overhead.json
    python benchmarks/doctor_overhead.py --tracked --run-name tracked
    python benchmarks/doctor_overhead.py --models mlp --reps 15
    python benchmarks/doctor_overhead.py --smoke              # one short rep on the MLP: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import timeit
from typing import Any

import harness
import numpy as np
import torch
from torch import nn

import kiln
from kiln.store import Store
from kiln.train.doctor import Finding, GradientDoctor
from kiln.train.doctor_record import DoctorRecord
from kiln.train.tracking import TrackingCallback

QUESTION, TITLE = "doctor_overhead", "Gradient doctor (issue 3)"
LABELS = {"mlp": "MLP", "cnn": "LeNet-5", "tfm": "transformer"}
DESCRIPTION = (
    "Fit with and without `GradientDoctor()` (defaults: a look at steps 0, 1, 2, 4, 8, 16, then every 50 steps) on "
    "the three benchmark models: MLP 64-256-256-10 on digits, LeNet-5 on 1×32×32, a 2-layer transformer encoder "
    "(d_model 128, seq 64) on synthetic tokens; batch 64, Adam 1e-3 (fused, kiln's default), 22 steps per epoch, the "
    'first epoch untimed; 1 torch thread. On/off runs interleaved, medians; "time inside the doctor" is the median '
    "share of the fit's time spent in the doctor's looks, forward hooks and per-step calls (timed in place)."
)
SEQ, VOCAB, D_MODEL, N_HEAD, D_FF, N_LAYERS, N_CLASSES = 64, 1000, 128, 4, 256, 2, 4
N_TRAIN, BATCH = 1408, 64


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 5, 5)
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(torch.zeros(1, SEQ, D_MODEL))
        layer = nn.TransformerEncoderLayer(D_MODEL, N_HEAD, D_FF, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, N_LAYERS, enable_nested_tensor=False)
        self.out = nn.Linear(D_MODEL, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(self.emb(x) + self.pos)  # (B, T, C)
        return self.out(h.mean(1))


def build(name: str) -> nn.Module:
    if name == "mlp":
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return LeNet() if name == "cnn" else TinyTransformer()


def data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    if name == "tfm":  # label: which of 4 vocabulary buckets dominates the sequence
        bucket = VOCAB // N_CLASSES
        dominant = rng.integers(0, N_CLASSES, N_TRAIN)
        tokens = rng.integers(0, VOCAB, (N_TRAIN, SEQ))
        planted = dominant[:, None] * bucket + rng.integers(0, bucket, (N_TRAIN, SEQ))
        tokens = np.where(rng.random((N_TRAIN, SEQ)) < 0.4, planted, tokens)
        labels = np.stack([(tokens // bucket == k).sum(1) for k in range(N_CLASSES)], 1).argmax(1)
        return torch.from_numpy(tokens), torch.from_numpy(labels)
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = rng.permutation(len(digits.data))[:N_TRAIN]
    x = (digits.data[order] / 16.0).astype(np.float32)
    if name == "cnn":
        x = np.repeat(np.repeat(x.reshape(-1, 1, 8, 8), 4, axis=2), 4, axis=3)  # (N, 1, 32, 32)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(digits.target[order].astype(np.int64))


class _Timer(kiln.Callback):
    """Wall and process CPU time from the start of epoch 1 (after one warm-up epoch) to the end of fit.

    On a shared machine the CPU time of this one-thread process is the steadier measure: time spent descheduled
    while other processes run counts in the wall time only.
    """

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def on_epoch_start(self, model: kiln.Model, epoch: int) -> None:
        if epoch == 1:
            self.wall, self.cpu = -time.perf_counter(), -time.process_time()

    def on_fit_end(self, model: kiln.Model) -> None:
        self.wall += time.perf_counter()
        self.cpu += time.process_time()


class _TimedDoctor(GradientDoctor):
    """The doctor with a stopwatch around its looks and forward hooks: the time spent inside it.

    Unlike the on/off ratio this is not blurred by other processes on the machine; it misses only indirect costs
    (caches the doctor's tensors evict), which the on/off ratio includes. The per-step fast path (two calls that
    return at once) is too short to time in place; :func:`fast_path_seconds` measures it apart.
    """

    def __init__(self, every: int) -> None:
        super().__init__(every=every, print_findings=False)
        self.inside, self.steps, self.counting = 0.0, 0, False

    def _timed(self, function: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            if self.counting:
                self.inside += time.perf_counter() - start

    def on_epoch_start(self, model: kiln.Model, epoch: int) -> None:
        self.counting = epoch >= 1  # the first epoch is the untimed warm-up
        super().on_epoch_start(model, epoch)

    def on_train_batch_end(self, model: kiln.Model, step: int, loss: torch.Tensor) -> None:
        self.steps += self.counting
        super().on_train_batch_end(model, step, loss)

    def _look(self, model: kiln.Model, step: int) -> None:
        self._timed(super()._look, model, step)

    def _after_look(self, model: kiln.Model) -> None:
        self._timed(super()._after_look, model)

    def _install_hooks(self) -> None:
        self._timed(super()._install_hooks)

    def _save(self) -> None:
        self._timed(super()._save)

    def _order_hook(self, name: str) -> Any:
        hook = super()._order_hook(name)
        return lambda *args: self._timed(hook, *args)

    def _relu_hook(self, name: str) -> Any:
        hook = super()._relu_hook(name)
        return lambda *args: self._timed(hook, *args)


def fast_path_seconds(name: str, tensors: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Seconds per step of the doctor's two calls on a step it does not look at (best of several timings)."""
    model = kiln.Model(build(name), loss="cross_entropy", optimizer="adam", lr=1e-3, device="cpu")
    doctor = GradientDoctor(print_findings=False)
    model.fit((tensors[0][:64], tensors[1][:64]), epochs=1, batch_size=64, callbacks=[doctor], verbose=0)
    loss = torch.zeros(())
    doctor._next_event = 10**9

    def calls() -> None:
        doctor.on_before_optimizer_step(model, 7)
        doctor.on_train_batch_end(model, 7, loss)

    best = min(timeit.repeat(calls, number=10_000, repeat=5)) / 10_000
    doctor._losses.clear()
    doctor._loss_steps.clear()
    return best


def record_write_seconds(store: Store, writes: int = 15) -> float:
    """Median seconds of one doctor.json write (a new one-finding list each time) into a run of ``store``."""
    samples = []
    with store.start_run("doctor-json-writes") as tracked:
        record = DoctorRecord(tracked)
        for i in range(writes):
            finding = Finding("loss_spike", [], i, f"a batch loss of {i} at step {i}", ["lower the learning rate"])
            start = time.perf_counter()
            assert record.save_findings([finding])
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(
    name: str,
    doctor: str,
    epochs: int,
    tensors: tuple[torch.Tensor, torch.Tensor],
    every: int = 50,
    store: Store | None = None,
) -> tuple[float, float, int, float]:
    """One fit with ``doctor`` "off", "on" or "timed", recorded into ``store`` when given; returns wall s, CPU s,
    findings, seconds inside the doctor."""
    torch.manual_seed(0)
    model = kiln.Model(build(name), loss="cross_entropy", optimizer="adam", lr=1e-3, device="cpu")
    timer = _Timer()
    watched = {"off": None, "on": GradientDoctor(every=every, print_findings=False), "timed": _TimedDoctor(every)}[
        doctor
    ]
    callbacks: list[kiln.Callback] = [timer] if watched is None else [timer, watched]
    if store is not None:
        callbacks.append(TrackingCallback(store, f"{name}-doctor-{doctor}"))
    history = model.fit(tensors, epochs=epochs, batch_size=BATCH, seed=0, callbacks=callbacks, verbose=0)
    inside = watched.inside if isinstance(watched, _TimedDoctor) else 0.0
    return timer.wall, timer.cpu, len(history.diagnostics), inside


def measure(name: str, reps: int, epochs: int, every: int, store: Store | None = None) -> dict[str, Any]:
    """Doctor-on and doctor-off fits alternating (the order flips every rep), and a timed-doctor fit per rep."""
    tensors = data(name)
    times: dict[str, dict[bool, list[float]]] = {"wall": {False: [], True: []}, "cpu": {False: [], True: []}}
    findings, shares = 0, []
    fast, steps = fast_path_seconds(name, tensors), (epochs - 1) * (N_TRAIN // BATCH)
    run(name, "on", 2, tensors, store=store)  # warm caches and allocator once, untimed
    for rep in range(reps):
        for doctor in harness.rotated((False, True), rep):
            wall, cpu, count, _ = run(name, "on" if doctor else "off", epochs, tensors, every, store)
            times["wall"][doctor].append(wall)
            times["cpu"][doctor].append(cpu)
            findings += count
        wall, _, count, inside = run(name, "timed", epochs, tensors, every, store)
        inside += fast * steps
        shares.append(inside / (wall - inside))
        findings += count
    row: dict[str, Any] = {"model": name, "reps": reps, "timed_steps": steps, "findings": findings,
                           "inside_share": harness.spread(shares), "fast_path_us": 1e6 * fast,
                           "tracked": store is not None}  # fmt: skip
    for clock, samples in times.items():
        off, on = statistics.median(samples[False]), statistics.median(samples[True])
        row.update(
            {f"{clock}_off_ms": 1e3 * off / steps, f"{clock}_on_ms": 1e3 * on / steps, f"{clock}_ratio": on / off}
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(LABELS), choices=list(LABELS))
    parser.add_argument("--reps", type=int, default=0, help="repetitions per variant (default: 21 mlp, 9 cnn, 3 tfm)")
    parser.add_argument("--every", type=int, default=50, help="the doctor's look interval (its default: 50)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per run (default: 15 mlp and cnn, 6 tfm)")
    parser.add_argument("--tracked", action="store_true", help="record every fit as a run in a scratch store")
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    if args.smoke:
        args.models, args.reps, args.epochs = ["mlp"], 1, 2
    harness.pin_threads(1)
    record = harness.new_run(args.run_name)
    rows, write_ms = [], None
    with tempfile.TemporaryDirectory(prefix="kiln-doctor-bench-") as folder:
        store = Store(folder) if args.tracked else None
        try:
            if store is not None:
                write_ms = 1e3 * record_write_seconds(store)
            for name in args.models:
                reps = args.reps or {"mlp": 21, "cnn": 9, "tfm": 3}[name]
                epochs = args.epochs or {"mlp": 15, "cnn": 15, "tfm": 6}[name]
                rows.append(measure(name, reps, epochs, args.every, store))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            if store is not None:
                store.close()
    cells = [
        [LABELS[r["model"]], f"{100 * r['inside_share']['median']:.2f} %", f"{r['cpu_off_ms']:.3f}",
         f"{r['cpu_on_ms']:.3f}", f"{r['cpu_ratio']:.3f}", f"{r['wall_off_ms']:.3f}", f"{r['wall_on_ms']:.3f}",
         f"{r['wall_ratio']:.3f}", str(r["findings"])]
        for r in rows
    ]  # fmt: skip
    columns = ["model", "time inside the doctor", "CPU ms/step off", "on", "on/off", "wall ms/step off", "on", "on/off",
               "findings"]  # fmt: skip
    spec = harness.table(columns, cells, align="lrrrrrrrr")
    reps = ", ".join(f"{r['reps']} {LABELS[r['model']]}" for r in rows)
    description = DESCRIPTION + f" Reps: {reps}."
    if write_ms is not None:
        description += (
            " Tracked: every fit, on and off, records a run into a scratch SQLite store (TrackingCallback), so 'on'"
            " includes the doctor's update_ratio metrics and its doctor.json; one doctor.json write took"
            f" {write_ms:.1f} ms (median of 15), paid at the start, on a new finding and at the end only."
        )
    summary: dict[str, Any] = {"models": rows, "record_write_ms": write_ms}
    record.update(description=description, tables=[spec], summary=summary)
    print(harness.markdown_table(spec))
    path = harness.result_path(args, QUESTION)
    harness.write_result(path, question=QUESTION, title=TITLE, run=harness.finish_run(record))


if __name__ == "__main__":
    main()
