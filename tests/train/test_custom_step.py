"""Custom training steps keep everything else: several optimizers, closures, a carried state, resume, the doctor."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.errors import ConfigError
from kiln.train.streams import stream_batches

JOB = Path(__file__).with_name("_custom_step_job.py")
X, Y = torch.randn(96, 6, generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (96,))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


class Supervised(kiln.Model):
    """The built-in step, written by hand through the step API."""

    def train_step(self, batch):
        x, y = batch
        loss = F.cross_entropy(self.module(x), y)
        self.backward(loss)
        self.step()
        return {"loss": loss}


class GAN(kiln.Model):
    def train_step(self, batch):
        real, _ = batch
        generator, discriminator = self.module["generator"], self.module["discriminator"]
        fake = generator(torch.randn(len(real), 4, device=self.device))
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        d_loss = F.binary_cross_entropy_with_logits(discriminator(real), ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(discriminator(fake.detach()), zeros)
        self.backward(d_loss, "discriminator")
        self.step("discriminator")
        g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
        self.backward(g_loss, "generator")
        assert all(p.grad is None for p in discriminator.parameters())  # the generator's loss left them alone
        self.step("generator")
        return {"d_loss": d_loss, "g_loss": g_loss.item()}  # a tensor and a float: both are logged


def gan_module() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"generator": nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2)),
                          "discriminator": nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))})  # fmt: skip


def adam(params: str) -> tuple[str, dict]:
    return ("adam", {"lr": 2e-3, "betas": (0.5, 0.999), "params": params})


def test_a_gan_trains_with_two_optimizers_each_with_its_schedule_and_logs_what_its_step_returns():
    real = torch.randn(512, 2, generator=torch.Generator().manual_seed(2)) * 0.3 + torch.tensor([2.0, -1.0])
    doctor = kiln.GradientDoctor(every=10)
    model = GAN(gan_module(), optimizer={"generator": adam("generator"), "discriminator": adam("discriminator")})

    def distance() -> float:  # of the mean of generated samples from the real mean
        with torch.no_grad():
            return float((model.module["generator"](torch.randn(2000, 4)).mean(0) - torch.tensor([2.0, -1.0])).norm())

    before = distance()
    history = model.fit(ArrayDataset(real), epochs=15, batch_size=64, seed=0, callbacks=[doctor], verbose=0,
                        lr_schedule={"generator": "cosine"})  # fmt: skip
    assert set(history.history) == {"d_loss", "g_loss", "lr", "lr_generator", "lr_discriminator"}
    assert history["lr_generator"][-1] == 0.0 and history["lr_discriminator"][-1] == 2e-3  # only G's decays
    assert set(model.schedules) == {"generator"} and model.global_step == 15 * 8
    assert distance() < 0.25 * before, (before, distance())
    # The doctor looked at the gradients present at each batch's first optimizer step: the discriminator's.
    assert doctor.stats["step"] == 110 and set(doctor.stats["grad_norms"]) == {"discriminator.0", "discriminator.2"}
    assert not doctor.findings



def test_the_run_records_every_value_the_step_returns(tmp_path):
    from kiln.store import Store

    store = Store(tmp_path / "store")
    two = {"generator": adam("generator"), "discriminator": adam("discriminator")}
    model = GAN(gan_module(), optimizer=two, store=store)
    history = model.fit(ArrayDataset(torch.randn(64, 2)), epochs=2, batch_size=16, run="gan", verbose=0)
    run = store.run(model.run_id)
    metrics = store.metrics(run.id)
    assert [value for _, value in metrics["g_loss"]] == pytest.approx(history["g_loss"])
    assert [value for _, value in metrics["d_loss"]] == pytest.approx(history["d_loss"])
    assert run.params["optimizer"] == {"generator": "Adam", "discriminator": "Adam"} and run.status == "finished"

def test_the_built_in_step_written_by_hand_gives_the_same_weights_bit_for_bit():
    kwargs = {"epochs": 2, "batch_size": 8, "accumulate": 3, "clip_grad_norm": 0.5, "seed": 1, "verbose": 0,
              "lr_schedule": kiln.LRSchedule("cosine", warmup_steps=2), "validation": (X, Y)}  # fmt: skip
    plain = kiln.Model(mlp(), loss="cross_entropy", lr=1e-2)
    expected = plain.fit((X, Y), **kwargs)
    custom = Supervised(mlp(), loss="cross_entropy", lr=1e-2)
    history = custom.fit((X, Y), **kwargs)
    assert history.history == expected.history
    assert all(torch.equal(a, b) for a, b in zip(weights(plain.module), weights(custom.module), strict=True))
    assert custom.global_step == plain.global_step == 2 * 4  # 12 batches an epoch, a step every 3


def test_steps_between_accumulation_boundaries_do_nothing_and_hooks_run_once_per_step():
    seen: list[bool] = []

    class Probe(kiln.Model):
        def train_step(self, batch):
            x, y = batch
            loss = F.cross_entropy(self.module(x), y)
            self.backward(loss)
            seen.append(self.step())
            return {"loss": loss}

    calls: list[int] = []

    class Before(kiln.Callback):
        def on_before_optimizer_step(self, model, step):
            calls.append(step)

    Probe(mlp(), loss="cross_entropy").fit((X, Y), epochs=1, batch_size=16, accumulate=2, callbacks=[Before()],
                                           verbose=0, doctor=False)  # fmt: skip
    assert seen == [False, True] * 3
    assert calls == [0, 1, 2]


def test_several_optimizers_without_a_custom_step_match_a_hand_written_loop():
    spec = {"body": ("adam", {"lr": 1e-2, "params": "0"}), "head": ("sgd", {"lr": 0.1, "params": "2"})}
    model = kiln.Model(mlp(), loss="cross_entropy", optimizer=spec)
    model.fit((X, Y), epochs=2, batch_size=32, shuffle=False, verbose=0)
    module = mlp()
    body = torch.optim.Adam(module[0].parameters(), lr=1e-2, fused=True)
    head = torch.optim.SGD(module[2].parameters(), lr=0.1, fused=True)
    for _ in range(2):
        for i in range(0, 96, 32):
            F.cross_entropy(module(X[i : i + 32]), Y[i : i + 32]).backward()
            body.step()
            head.step()
            body.zero_grad()
            head.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(weights(module), weights(model.module), strict=True))
    assert model.fit_config["optimizer"] == {"body": "Adam", "head": "SGD"}


def test_configure_optimizers_builds_them_in_the_subclass():
    class TwoRates(kiln.Model):
        def configure_optimizers(self):
            return {"body": torch.optim.SGD(self.module[0].parameters(), lr=0.5), "head": ("adam", {"params": "2"})}

    model = TwoRates(mlp(), loss="cross_entropy")
    assert list(model.optimizers) == ["body", "head"] and model.optimizer is model.optimizers["body"]
    before = weights(model.module)
    model.fit((X, Y), epochs=1, batch_size=32, verbose=0)
    assert all(not torch.equal(a, b) for a, b in zip(before, weights(model.module), strict=True))


def test_lbfgs_in_plain_fit_reaches_the_loss_of_a_hand_written_lbfgs_loop():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(200, 5, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0], [0.0]]) + 0.7 + 0.1 * torch.randn(200, 1, generator=generator)
    torch.manual_seed(0)
    model = kiln.Model(nn.Linear(5, 1), loss="mse", optimizer="lbfgs", lr=0.5)
    history = model.fit((x, y), epochs=4, batch_size=200, shuffle=False, verbose=0)
    torch.manual_seed(0)
    linear = nn.Linear(5, 1)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=0.5)
    first_losses = []
    for _ in range(4):

        def closure():
            optimizer.zero_grad()
            loss = F.mse_loss(linear(x), y)
            loss.backward()
            return loss

        first_losses.append(float(optimizer.step(closure).detach()))
    assert history["loss"] == pytest.approx(first_losses, rel=1e-6)
    final = F.mse_loss(model.module(x), y).item()
    assert final == pytest.approx(F.mse_loss(linear(x), y).item(), rel=1e-6)
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(200, 1)], 1), y).solution
    best = F.mse_loss(torch.cat([x, torch.ones(200, 1)], 1) @ solution, y).item()
    assert final < best * 1.01  # L-BFGS found the least-squares fit


def test_a_custom_eval_step_is_averaged_over_rows_and_logged_as_val():
    class Regression(kiln.Model):
        def train_step(self, batch):
            x, y = batch
            loss = F.mse_loss(self.module(x), y)
            self.backward(loss)
            self.step()
            return {"loss": loss}

        def eval_step(self, batch):
            x, y = batch
            return {"mse": F.mse_loss(self.module(x), y), "rows": float(len(x))}

    x, y = torch.randn(10, 3), torch.randn(10, 1)
    model = Regression(nn.Linear(3, 1), lr=1e-2)
    history = model.fit((x, y), epochs=2, batch_size=4, validation=(x, y), verbose=0)
    assert set(history.history) == {"loss", "val_mse", "val_rows", "lr"}
    result = model.evaluate((x, y), batch_size=4)  # batches of 4, 4 and 2 rows: weighted by rows
    assert result["mse"] == pytest.approx(F.mse_loss(model.module(x), y).item(), rel=1e-5)
    assert result["rows"] == pytest.approx((4 * 4 + 4 * 4 + 2 * 2) / 10)


def test_stream_batches_continue_each_row_from_one_batch_to_the_next():
    stream = torch.arange(1000)
    data = stream_batches(stream, batch_size=4, length=10)
    batches = [data.take(slice(i, i + 4)) for i in range(0, len(data), 4)]
    assert len(batches) == (1000 // 4 - 1) // 10
    for (x0, y0), (x1, _) in itertools.pairwise(batches):
        assert torch.equal(x1[:, 0], x0[:, -1] + 1) and torch.equal(y0, x0 + 1)  # row b goes on in row b
    two_ranks = stream_batches(stream, batch_size=2, length=10, world=2)
    rank_one = [two_ranks.take(slice(g * 2, g * 2 + 2))[0] for g in range(1, len(two_ranks) // 2, 2)]
    assert all(torch.equal(b[:, 0], a[:, -1] + 1) for a, b in itertools.pairwise(rank_one))


class RecurrentLM(kiln.Model):
    """TBPTT: the hidden state is carried in self.carry; ``starts`` records whether each batch began without one."""

    starts: list[bool]

    def train_step(self, batch):
        tokens, targets = batch
        hidden = self.carry.get("hidden")
        self.starts.append(hidden is None)
        out, hidden = self.module["rnn"](self.module["embed"](tokens), hidden)  # (B, T, H), (1, B, H)
        loss = F.cross_entropy(self.module["head"](out).flatten(0, 1), targets.flatten())
        self.backward(loss)  # would fail on the second batch if the carried hidden state still held its graph
        self.step()
        self.carry["hidden"] = hidden
        return {"loss": loss}


def recurrent_lm() -> RecurrentLM:
    torch.manual_seed(0)
    module = nn.ModuleDict({"embed": nn.Embedding(10, 8), "rnn": nn.GRU(8, 16, batch_first=True),
                            "head": nn.Linear(16, 10)})  # fmt: skip
    model = RecurrentLM(module, lr=1e-2)
    model.starts = []
    return model


def test_the_carried_state_is_detached_reset_each_epoch_and_resumed_exactly(tmp_path):
    data = stream_batches(torch.arange(900) % 10, batch_size=3, length=10)  # 29 batches
    kwargs = {"epochs": 2, "batch_size": 3, "shuffle": False, "verbose": 0, "seed": 0}
    reference = recurrent_lm()
    expected = reference.fit(data, **kwargs)
    assert reference.starts == ([True] + [False] * 28) * 2
    assert expected["loss"][1] < expected["loss"][0] * 0.7

    class Crash(kiln.Callback):
        def on_train_batch_end(self, model, step, loss):
            if step == 40:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        recurrent_lm().fit(data, checkpoint=tmp_path, checkpoint_every=7, callbacks=[Crash()], **kwargs)
    resumed = recurrent_lm()
    history = resumed.fit(data, checkpoint=tmp_path, checkpoint_every=7, resume="latest", **kwargs)
    assert resumed.starts == [False] * (29 - 6)  # resumed at step 35 (epoch 1, batch 6) with its hidden state
    assert history.history == expected.history
    assert all(torch.equal(a, b) for a, b in zip(weights(reference.module), weights(resumed.module), strict=True))


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _run_job(args: list[str], output: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with output.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, str(JOB), *args], env=env, stdout=handle, stderr=subprocess.STDOUT)


def test_sigkill_then_resume_of_a_custom_step_matches_the_uninterrupted_run(tmp_path):
    """Two optimizers with their schedules, a carried hidden state and dropout's RNG: bitwise after a real SIGKILL."""
    output = tmp_path / "output.txt"
    reference = _run_job(
        ["--step-log", str(tmp_path / "ref.jsonl"), "--out", str(tmp_path / "ref.safetensors")], output
    )
    kill_at = random.Random().randint(3, 34)
    log = tmp_path / "run.jsonl"
    job = ["--step-log", str(log), "--out", str(tmp_path / "run.safetensors"), "--checkpoint", str(tmp_path / "ckpt")]
    process = _run_job(job, output)
    deadline = time.monotonic() + 300
    while len(_read_log(log)) < kill_at and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a file the job appends to; the kill moment itself is what is random
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, f"job ended before the kill at step {kill_at}"
    before = _read_log(log)
    resumed = _run_job(job, output)
    assert reference.wait(timeout=300) == 0, output.read_text()
    assert resumed.wait(timeout=300) == 0, output.read_text()
    expected = [(r["step"], r["loss"]) for r in _read_log(tmp_path / "ref.jsonl")]
    assert len(expected) == 38
    after = _read_log(log)[len(before) :]
    first_resumed = after[0]["step"]
    assert first_resumed <= len(before) + 1, "resume went past the steps that were run"
    sequence = [(r["step"], r["loss"]) for r in before[: first_resumed - 1] + after]
    assert sequence == expected, f"killed at step {kill_at}, resumed at {first_resumed}"
    assert (tmp_path / "run.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_clear_errors_for_a_wrong_step_or_optimizer_spec():
    class ReturnsLoss(kiln.Model):
        def train_step(self, batch):
            x, y = batch
            loss = F.cross_entropy(self.module(x), y)
            self.backward(loss)
            self.step()
            return loss

    with pytest.raises(ConfigError, match=r"train_step must return a dict .*\{'loss': loss\}.*returned Tensor"):
        ReturnsLoss(mlp()).fit((X, Y), epochs=1, verbose=0)

    class StepsByName(kiln.Model):
        name: str | None = "generator"

        def train_step(self, batch):
            self.step(self.name)
            return {"nothing": 0.0}

    with pytest.raises(ConfigError, match=r"no optimizer named 'generator'; this Model has \['default'\]"):
        StepsByName(mlp()).fit((X, Y), epochs=1, verbose=0)
    with pytest.raises(ConfigError, match=r"optimizer 'g': params='gen' names no submodule of ModuleDict; its "
                                          r"submodules are \['generator', 'discriminator'\]"):  # fmt: skip
        kiln.Model(gan_module(), optimizer={"g": ("adam", {"params": "gen"})})
    with pytest.raises(ConfigError, match=r"optimizers 'a' and 'b' both train the same parameters"):
        kiln.Model(mlp(), loss="mse", optimizer={"a": "adam", "b": "sgd"})
    two = {"generator": adam("generator"), "discriminator": adam("discriminator")}
    with pytest.raises(ConfigError, match=r"lr_schedule names \['gen'\].*optimizers are \['generator', 'disc"):
        GAN(gan_module(), optimizer=two).fit(ArrayDataset(torch.randn(8, 2)), lr_schedule={"gen": "cosine"})
    StepsByName.name = None
    with pytest.raises(ConfigError, match=r"several optimizers \['generator', 'discriminator'\]; name the one"):
        StepsByName(gan_module(), optimizer=two).fit(ArrayDataset(torch.randn(8, 2)), verbose=0)

    class ReturnsPerSample(kiln.Model):
        def train_step(self, batch):
            return {"loss": torch.ones(3)}

    with pytest.raises(ConfigError, match=r"returned 'loss' of shape \(3,\); each value must be a number or a one"):
        ReturnsPerSample(mlp()).fit((X, Y), epochs=1, verbose=0)
    with pytest.raises(ConfigError, match=r"on_nonfinite='skip'.*train_step decides"):
        Supervised(mlp()).fit((X, Y), on_nonfinite="skip", verbose=0)
    with pytest.raises(ConfigError, match=r"backward\(\) is for train_step while fit runs"):
        Supervised(mlp()).backward(torch.ones((), requires_grad=True))
    with pytest.raises(ConfigError, match=r"LBFGS steps through a closure.*precision='bf16'"):
        kiln.Model(mlp(), loss="cross_entropy", optimizer="lbfgs").fit((X, Y), precision="fp16", verbose=0)


def test_fp16_loss_scaling_updates_once_per_batch_however_many_optimizers_step():
    model = GAN(gan_module(), optimizer={"generator": adam("generator"), "discriminator": adam("discriminator")})
    model.fit(ArrayDataset(torch.randn(64, 2)), epochs=1, batch_size=16, precision="fp16", verbose=0, doctor=False)
    scaler = model.precision.scaler
    assert scaler is not None
    state = scaler.state_dict()
    assert state["scale"] == 65536.0 and state["_growth_tracker"] == 4  # 4 batches, 2 steps each, no overflow


def test_the_how_to_runs_as_written():
    """docs/custom_step.md: its python blocks run in order as one script, and train what they say they train."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "custom_step.md").read_text()
    code = "\n".join(re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL))
    names: dict = {"__name__": "custom_step_md"}
    exec(compile(code, "docs/custom_step.md", "exec"), names)
    assert float((names["samples"].mean(0) - torch.tensor([2.0, -1.0])).norm()) < 0.8  # the GAN imitates the data
    assert names["regression"].history["loss"][-1] < 1e-6  # L-BFGS solved the least-squares problem
    perplexity = names["history"]["perplexity"]  # the language model's
    assert perplexity[-1] < 1.5 < perplexity[0]
