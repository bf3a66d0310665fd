"""Exact checkpoint/resume: in process, after a real SIGKILL, and with checkpoints killed mid-write."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import kiln
from kiln.errors import CheckpointError
from kiln.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

JOB = Path(__file__).with_name("_resume_job.py")
X, Y = torch.randn(96, 6, generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (96,))


def make_model() -> kiln.Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 3))
    return kiln.Model(net, loss="cross_entropy", lr=1e-2)


class Crash(kiln.Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, model, step, loss):
        if step == self.at:
            raise RuntimeError("simulated crash")


def weights(model: kiln.Model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.module.parameters()]


def test_resume_in_process_is_bitwise_exact(tmp_path):
    kwargs = {"epochs": 3, "batch_size": 8, "lr_schedule": kiln.LRSchedule("cosine", warmup_steps=5), "seed": 3,
              "verbose": 0, "validation": (X, Y)}
    reference = make_model()
    expected = reference.fit((X, Y), **kwargs)
    crashed = make_model()
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit((X, Y), checkpoint=tmp_path, checkpoint_every=5, callbacks=[Crash(17)], **kwargs)
    assert latest_checkpoint(tmp_path).name == "ckpt-0000000015.safetensors"
    resumed = make_model()
    history = resumed.fit((X, Y), checkpoint=tmp_path, checkpoint_every=5, resume="latest", **kwargs)
    assert history.history == expected.history
    for a, b in zip(weights(reference), weights(resumed), strict=True):
        assert torch.equal(a, b)
    assert resumed.global_step == reference.global_step == 36
    assert len(list_checkpoints(tmp_path)) == 3  # keep_checkpoints default


def test_a_finished_fit_run_again_with_resume_latest_trains_no_further(tmp_path):
    # With a step interval that does not divide the run (36 steps, every 5), the fit's end is checkpointed too: the
    # same line run again (a rerun of the script) restores the finished run instead of re-training its tail.
    kwargs = {"epochs": 3, "batch_size": 8, "seed": 3, "verbose": 0, "checkpoint": tmp_path, "checkpoint_every": 5,
              "resume": "latest"}
    first = make_model()
    expected = first.fit((X, Y), **kwargs)
    assert latest_checkpoint(tmp_path).name == "ckpt-0000000036.safetensors"
    seen: list[int] = []

    class Steps(kiln.Callback):
        def on_train_batch_end(self, model, step, loss):
            seen.append(step)

    again = make_model()
    history = again.fit((X, Y), callbacks=[Steps()], **kwargs)
    assert seen == [] and again.global_step == 36
    assert history.history == expected.history
    for a, b in zip(weights(first), weights(again), strict=True):
        assert torch.equal(a, b)


def test_resume_latest_without_checkpoint_starts_fresh(tmp_path):
    model = make_model()
    model.fit((X, Y), epochs=1, batch_size=8, checkpoint=tmp_path, resume="latest", verbose=0)
    assert model.global_step == 12
    assert latest_checkpoint(tmp_path).name == "ckpt-0000000012.safetensors"  # saved at the epoch's end


def test_resume_refuses_other_batch_size_or_shape(tmp_path):
    make_model().fit((X, Y), epochs=1, batch_size=8, checkpoint=tmp_path, verbose=0)
    with pytest.raises(CheckpointError, match=r"batch_size=8.*batch_size=16"):
        make_model().fit((X, Y), epochs=2, batch_size=16, checkpoint=tmp_path, resume="latest", verbose=0)
    other = kiln.Model(nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.1), nn.ReLU(), nn.Linear(32, 3)),
                       loss="cross_entropy")
    with pytest.raises(CheckpointError, match=r"another shape.*0\.weight: \[16, 6\] -> \[32, 6\]"):
        other.fit((X, Y), epochs=2, batch_size=8, checkpoint=tmp_path, resume="latest", verbose=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        make_model().fit((X, Y), epochs=2, batch_size=8, resume=tmp_path / "nope.safetensors", verbose=0)


def test_corrupt_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, {"w": torch.ones(4)}, step=1)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_state_round_trips_nested_python_and_numpy_values(tmp_path):
    import numpy as np

    state = {"a": (1, 2.5, "x", None, True), 3: [torch.arange(3), np.arange(4, dtype=np.uint32)], "nan": float("inf"),
             "shared": {"p": torch.ones(2), "view": torch.ones(4)[:2]}}
    loaded = load_checkpoint(save_checkpoint(tmp_path, state, step=0))
    assert loaded["a"] == (1, 2.5, "x", None, True) and loaded["nan"] == float("inf")
    assert torch.equal(loaded[3][0], torch.arange(3)) and loaded[3][1].dtype == np.uint32
    assert torch.equal(loaded["shared"]["view"], torch.ones(2))


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    first = save_checkpoint(tmp_path, {"w": torch.ones(8)}, step=1)

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"disk is full.*ckpt-0000000001\.safetensors is intact"):
        save_checkpoint(tmp_path, {"w": torch.zeros(8)}, step=2)
    assert list_checkpoints(tmp_path) == [first]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert torch.equal(load_checkpoint(first)["w"], torch.ones(8))


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _run_job(args: list[str], output: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with output.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, str(JOB), *args], env=env, stdout=handle, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("data", ["memory", "files"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, data):
    common = ["--data", data, "--root", str(tmp_path)]
    output = tmp_path / "output.txt"
    reference = _run_job([*common, "--log", str(tmp_path / "ref.jsonl"), "--out", str(tmp_path / "ref.safetensors")],
                         output)
    assert reference.wait(timeout=300) == 0, output.read_text()
    expected = [(r["step"], r["loss"]) for r in _read_log(tmp_path / "ref.jsonl")]
    assert len(expected) == 60

    kill_at = random.Random().randint(3, 55)
    log = tmp_path / "run.jsonl"
    job = [*common, "--log", str(log), "--out", str(tmp_path / "run.safetensors"),
           "--checkpoint", str(tmp_path / "ckpt")]
    process = _run_job(job, output)
    deadline = time.monotonic() + 300
    while len(_read_log(log)) < kill_at and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a file the job appends to; the kill moment itself is what is random
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, f"job ended before the kill at step {kill_at}"
    before = _read_log(log)
    resumed = _run_job(job, output)
    assert resumed.wait(timeout=300) == 0, output.read_text()
    after = _read_log(log)[len(before):]
    first_resumed = after[0]["step"]
    assert first_resumed <= len(before) + 1, "resume went past the steps that were run"
    sequence = [(r["step"], r["loss"]) for r in before[: first_resumed - 1] + after]
    assert sequence == expected, f"killed at step {kill_at}, resumed at {first_resumed}"
    overlap = before[first_resumed - 1 :]
    assert [(r["step"], r["loss"]) for r in overlap] == [(r["step"], r["loss"]) for r in after[: len(overlap)]]
    assert (tmp_path / "run.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def _save_forever(directory: Path, size: int) -> None:
    step = 1000
    while True:
        step += 1
        save_checkpoint(directory, {"w": torch.full((size,), float(step)), "step": step}, step=step, keep=2)


def _check_latest(directory: Path) -> None:
    latest = latest_checkpoint(directory)
    assert latest is not None
    state = load_checkpoint(latest)
    assert torch.equal(state["w"], torch.full_like(state["w"], float(state["step"])))
    assert latest.name == f"ckpt-{state['step']:010d}.safetensors"


def _kill_during_saves(tmp_path: Path, rounds: int) -> None:
    save_checkpoint(tmp_path, {"w": torch.full((4,), 1000.0), "step": 1000}, step=1000)
    chooser = random.Random()
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:  # child: a real process that writes checkpoints until it is killed
            try:
                _save_forever(tmp_path, chooser.choice([1 << 10, 1 << 16, 1 << 20]))
            finally:
                os._exit(0)
        time.sleep(chooser.uniform(0.0, 0.03))  # the kill lands at a random moment of a save
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _check_latest(tmp_path)
        save_checkpoint(tmp_path, {"w": torch.full((4,), 999.0), "step": 999}, step=999)  # cleans stale temp files


def test_sigkill_during_checkpoint_saves_never_leaves_a_broken_latest(tmp_path):
    _kill_during_saves(tmp_path, rounds=60)


@pytest.mark.slow
def test_sigkill_during_checkpoint_saves_many_times(tmp_path):
    _kill_during_saves(tmp_path, rounds=600)
