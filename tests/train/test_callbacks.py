"""Callbacks: hook order, early stopping, checkpoints, metric logs, schedules and the progress display."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import kiln
from kiln.train.schedules import LRSchedule, ScheduleRunner

X, Y = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), torch.randint(0, 2, (64,))


def model() -> kiln.Model:
    torch.manual_seed(0)
    return kiln.Model(nn.Linear(4, 2), loss="cross_entropy", lr=1e-2, metrics=["accuracy"])


def test_hooks_run_in_order_and_only_when_overridden():
    calls: list[str] = []

    class Recorder(kiln.Callback):
        def on_fit_start(self, m):
            calls.append("fit_start")

        def on_epoch_start(self, m, epoch):
            calls.append(f"epoch_start {epoch}")

        def on_train_batch_end(self, m, step, loss):
            calls.append(f"batch {step} {loss.requires_grad}")

        def on_epoch_end(self, m, epoch, logs):
            calls.append(f"epoch_end {epoch} {sorted(logs)}")

        def on_fit_end(self, m):
            calls.append(f"fit_end {m.fit_status}")

    model().fit((X, Y), epochs=2, batch_size=32, validation=(X, Y), callbacks=[Recorder()], verbose=0)
    assert calls == [
        "fit_start", "epoch_start 0", "batch 1 False", "batch 2 False",
        "epoch_end 0 ['loss', 'lr', 'val_accuracy', 'val_loss']", "epoch_start 1", "batch 3 False", "batch 4 False",
        "epoch_end 1 ['loss', 'lr', 'val_accuracy', 'val_loss']", "fit_end finished",
    ]


def test_fit_end_runs_on_failure():
    seen = []

    class Boom(kiln.Callback):
        def on_train_batch_end(self, m, step, loss):
            raise RuntimeError("boom")

        def on_fit_end(self, m):
            seen.append(m.fit_status)

    with pytest.raises(RuntimeError, match="boom"):
        model().fit((X, Y), epochs=1, batch_size=32, callbacks=[Boom()], verbose=0)
    assert seen == ["failed"]


def test_early_stopping_stops_and_restores_best():
    stopper = kiln.EarlyStopping("val_loss", patience=2, restore_best=True)
    m = model()
    # A learning rate this high makes validation loss climb after the first epochs.
    m.optimizer.param_groups[0]["lr"] = 50.0
    history = m.fit((X, Y), epochs=50, batch_size=64, validation=(X, Y), callbacks=[stopper], verbose=0)
    assert stopper.stopped_epoch is not None and len(history.epochs) < 50
    best = min(history["val_loss"])
    assert m.evaluate((X, Y))["loss"] == pytest.approx(best, rel=1e-5)


def test_early_stopping_rejects_missing_monitor():
    with pytest.raises(kiln.KilnError, match=r"val_loss.*not in the epoch logs"):
        model().fit((X, Y), epochs=2, callbacks=[kiln.EarlyStopping()], verbose=0)


def test_model_checkpoint_writes_best_and_last(tmp_path):
    checkpoint = kiln.ModelCheckpoint(tmp_path, monitor="val_accuracy")
    m = model()
    history = m.fit((X, Y), epochs=4, batch_size=16, validation=(X, Y), callbacks=[checkpoint], verbose=0)
    assert checkpoint.best == max(history["val_accuracy"])
    last = load_file(tmp_path / "last.safetensors")
    torch.testing.assert_close(last["weight"], m.module.weight.detach())
    assert set(load_file(tmp_path / "best.safetensors")) == {"weight", "bias"}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_metrics_logger(tmp_path, suffix):
    path = tmp_path / f"metrics{suffix}"
    model().fit((X, Y), epochs=3, batch_size=32, validation=(X, Y), callbacks=[kiln.MetricsLogger(path)], verbose=0)
    if suffix == ".csv":
        rows = list(csv.DictReader(path.read_text().splitlines()))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"loss", "val_loss", "val_accuracy", "lr", "step"} <= set(rows[0])


def test_cosine_schedule_with_warmup():
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    runner = ScheduleRunner(LRSchedule("cosine", warmup_steps=4, min_lr=0.1), optimizer, total_steps=14,
                            steps_per_epoch=7)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(14):
        runner.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[14] == pytest.approx(0.1)


def test_step_and_plateau_schedules_through_fit():
    m = model()
    history = m.fit((X, Y), epochs=4, batch_size=32, lr_schedule=LRSchedule("step", step_size=2, gamma=0.5),
                    verbose=0)
    assert history["lr"] == pytest.approx([1e-2, 5e-3, 5e-3, 2.5e-3])
    m = model()
    m.optimizer.param_groups[0]["lr"] = 0.0  # no learning: the monitored loss never improves
    history = m.fit((X, Y), epochs=4, batch_size=64, lr_schedule=LRSchedule("plateau", monitor="loss", patience=1,
                                                                            factor=0.5), verbose=0)
    assert history["lr"] == [0.0] * 4  # a zero lr stays zero, but the schedule ran without error
    m = model()
    scheduler = torch.optim.lr_scheduler.StepLR(m.optimizer, step_size=1, gamma=0.1)
    history = m.fit((X, Y), epochs=3, batch_size=32, lr_schedule=scheduler, verbose=0)
    assert history["lr"] == pytest.approx([1e-3, 1e-4, 1e-5])


def test_plateau_reduces_lr_when_monitored_value_stalls():
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    runner = ScheduleRunner(LRSchedule("plateau", patience=1, factor=0.5), optimizer, total_steps=10,
                            steps_per_epoch=1)
    for value in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95]:
        runner.epoch_end({"val_loss": value})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_progress_prints_one_line_per_epoch_when_not_a_tty(capsys):
    model().fit((X, Y), epochs=2, batch_size=32, validation=(X, Y))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "val_accuracy" in lines[1]
    model().fit((X, Y), epochs=2, batch_size=32, verbose=0)
    assert capsys.readouterr().out == ""


def test_live_progress_bar_renders(capsys):
    model().fit((X, Y), epochs=2, batch_size=8, callbacks=[kiln.ProgressBar(live=True)], verbose=0)
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "samples/s" in out
