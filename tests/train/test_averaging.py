"""EMA and SWA: closed-form averages on toy weight sequences, BatchNorm statistics, inference on the average, resume."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.errors import ConfigError
from kiln.train.averaging import EMA, SWA, recompute_batchnorm

LOSS = torch.zeros(())


def toy_weights(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, generator=generator, dtype=torch.float64) for _ in range(count)]


def stub(module: nn.Module, *, epochs: int = 10) -> SimpleNamespace:
    """The few Model attributes an averaging callback reads, to drive it through a known weight sequence."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    return SimpleNamespace(module=module, averaged=None, global_step=0, epoch=0, steps_per_epoch=4,
                           fit_config={"epochs": epochs, "batch_size": 8, "accumulate": 1}, optimizer=optimizer,
                           fit_status="running", device=torch.device("cpu"))  # fmt: skip


def toy_module() -> nn.Linear:
    return nn.Linear(3, 2, bias=False).double()


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_the_closed_form_average_of_a_weight_sequence(warmup):
    decay, weights = 0.9, toy_weights(7)  # weights[0] is the start, then one per optimizer step
    module = toy_module()
    module.weight.data.copy_(weights[0])
    model, ema = stub(module), EMA(decay, warmup=warmup)
    ema.on_fit_start(model)
    assert model.averaged is ema.module and ema.module is not module
    for step, weight in enumerate(weights[1:], start=1):
        module.weight.data.copy_(weight)
        ema.on_train_batch_end(model, step, LOSS)
    decays = [min(decay, (1 + n) / (10 + n)) if warmup else decay for n in range(6)]
    # averaged = sum_k c_k w_k: w_k enters with (1 - d_{k-1}) and then decays by every later d
    coefficients = [math.prod(decays)] + [(1 - decays[k - 1]) * math.prod(decays[k:]) for k in range(1, 7)]
    expected = sum(c * w for c, w in zip(coefficients, weights, strict=True))
    torch.testing.assert_close(ema.module.weight, expected, rtol=0, atol=1e-12)
    assert sum(coefficients) == pytest.approx(1.0)
    assert ema.num_updates == 6
    if warmup:
        assert decays[:3] == [0.1, 2 / 11, 3 / 12]


def test_ema_without_a_step_does_not_update_and_copies_buffers():
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model, ema = stub(module), EMA(0.5, warmup=False)
    ema.on_fit_start(model)
    ema.on_train_batch_end(model, 0, LOSS)  # accumulation: no optimizer step happened
    assert ema.num_updates == 0
    module(torch.randn(16, 3))  # changes the running statistics
    ema.on_train_batch_end(model, 1, LOSS)
    assert torch.equal(ema.module[1].running_mean, module[1].running_mean)
    assert torch.equal(ema.module[1].num_batches_tracked, module[1].num_batches_tracked)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_swa_is_the_equal_weight_average_of_the_epochs_from_start():
    weights = toy_weights(6)
    module = toy_module()
    model, swa = stub(module, epochs=6), SWA(start=2)
    swa.on_fit_start(model)
    for epoch, weight in enumerate(weights):
        model.epoch = epoch
        swa.on_epoch_start(model, epoch)
        module.weight.data.copy_(weight)
        swa.on_epoch_end(model, epoch, {})
        assert (model.averaged is swa.module) == (epoch >= 2)  # the live weights are used until an average exists
    torch.testing.assert_close(swa.module.weight, torch.stack(weights[2:]).mean(0), rtol=0, atol=1e-12)
    assert swa.num_updates == 4


def test_swa_every_steps_and_a_fractional_start():
    weights = toy_weights(13)
    module = toy_module()
    model, swa = stub(module, epochs=4), SWA(start=0.5, every_steps=2)  # starts at epoch 2 of 4
    swa.on_fit_start(model)
    averaged = []
    for step, weight in enumerate(weights[1:], start=1):  # 4 steps per epoch
        model.epoch, model.global_step = (step - 1) // 4, step
        module.weight.data.copy_(weight)
        swa.on_train_batch_end(model, step, LOSS)
        if model.epoch >= 2 and step % 2 == 0:
            averaged.append(weight)
    assert swa.start_epoch == 2 and len(averaged) == 2
    torch.testing.assert_close(swa.module.weight, torch.stack(averaged).mean(0), rtol=0, atol=1e-12)


def test_swa_lr_anneals_from_the_lr_at_the_start_to_swa_lr(digits):
    lrs: list[float] = []

    class RecordLR(kiln.Callback):
        def on_before_optimizer_step(self, model, step):
            lrs.append(model.optimizer.param_groups[0]["lr"])

    x, y = digits[0][:256], digits[1][:256]  # 4 steps per epoch at batch size 64
    model = kiln.Model(nn.Linear(64, 10), loss="cross_entropy", optimizer="sgd", lr=0.1)
    swa = SWA(start=2, swa_lr=0.01, anneal_steps=4)
    model.fit((x, y), epochs=4, batch_size=64, seed=0, callbacks=[swa, RecordLR()], verbose=0)
    expected = [0.1] * 8 + [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)] + [0.01] * 4
    assert lrs == pytest.approx(expected)
    assert swa.num_updates == 2


def bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def batch_statistics(net: nn.Sequential, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What recomputed statistics must be: the plain average of per-batch mean and unbiased variance."""
    with torch.no_grad():
        hidden = [net[0](chunk) for chunk in x.split(batch_size)]  # (B, 32) each
    return torch.stack([h.mean(0) for h in hidden]).mean(0), torch.stack([h.var(0) for h in hidden]).mean(0)


def test_swa_recomputes_batchnorm_statistics_for_the_averaged_weights(digits):
    x, y = torch.from_numpy(digits[0][:512]), torch.from_numpy(digits[1][:512])
    torch.manual_seed(0)
    model = kiln.Model(bn_net(), loss="cross_entropy", optimizer="sgd", lr=0.05)
    swa = SWA(start=1, bn_data=(x, y), bn_batch_size=128)
    model.fit((x, y), epochs=3, batch_size=64, seed=0, callbacks=[swa], verbose=0)
    mean, var = batch_statistics(swa.module, x, 128)
    norm = swa.module[1]
    torch.testing.assert_close(norm.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, var, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(norm.running_mean, model.module[1].running_mean)  # not the live model's
    assert norm.momentum == 0.1  # restored after the cumulative pass


def test_swa_uses_the_models_train_loader_when_no_bn_data_is_given(digits, caplog):
    from kiln.data.loader import make_loader

    x, y = torch.from_numpy(digits[0][:256]), torch.from_numpy(digits[1][:256])

    class ExposeLoader(kiln.Callback):  # stands in for a Model that exposes its training loader
        def __init__(self, loader):
            self.loader = loader

        def on_fit_start(self, model):
            model.train_loader = self.loader

    for loader in (make_loader((x, y), 64, shuffle=False), None):
        torch.manual_seed(0)
        model = kiln.Model(bn_net(), loss="cross_entropy", optimizer="sgd", lr=0.05)
        swa = SWA(start=0)
        with caplog.at_level(logging.WARNING, logger="kiln.train.averaging"):
            model.fit((x, y), epochs=2, batch_size=64, seed=0, callbacks=[ExposeLoader(loader), swa], verbose=0)
        if loader is not None:
            mean, _ = batch_statistics(swa.module, x, 64)
            torch.testing.assert_close(swa.module[1].running_mean, mean, rtol=1e-5, atol=1e-6)
            assert not caplog.records
        else:
            assert "pass SWA(bn_data=train)" in caplog.text


@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_evaluate_and_predict_use_the_averaged_weights(digits, averaging):
    x, y = digits
    train, test = ArrayDataset(x, y).split(0.8, seed=0)
    torch.manual_seed(0)
    model = kiln.Model(bn_net(), loss="cross_entropy", lr=1e-2, metrics=["accuracy"])
    callback = EMA(0.9) if averaging == "ema" else SWA(start=1, bn_data=train)
    history = model.fit(train, epochs=3, batch_size=64, validation=test, seed=0, callbacks=[callback], verbose=0)
    assert model.averaged is callback.module and model.inference_module is callback.module
    callback.module.eval()
    with torch.no_grad():
        averaged, live = callback.module(test.x), model.module.eval()(test.x)
    assert not torch.allclose(averaged, live)
    torch.testing.assert_close(model.predict(test.x), averaged)
    accuracy = (averaged.argmax(-1) == test.y).float().mean().item()
    assert model.evaluate(test)["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert history["val_accuracy"][-1] > 0.8


def test_the_averaged_copy_never_carries_the_doctors_forward_hooks(digits):
    from kiln.train.doctor import GradientDoctor

    model = kiln.Model(bn_net(), loss="cross_entropy", lr=1e-2)
    ema, swa, doctor = EMA(), SWA(start=0), GradientDoctor(every=1, print_findings=False)
    model.fit(digits, epochs=1, batch_size=64, seed=0, callbacks=[doctor, ema, swa], verbose=0)
    assert doctor.stats["grad_norms"]
    for copy in (ema.module, swa.module, model.module):
        assert sum(len(m._forward_hooks) for m in copy.modules()) == 0


def test_ema_counts_optimizer_steps_not_batches(digits):
    model = kiln.Model(nn.Linear(64, 10), loss="cross_entropy", lr=1e-2)
    ema = EMA()
    model.fit(digits, epochs=1, batch_size=64, accumulate=2, seed=0, callbacks=[ema], verbose=0)
    assert ema.num_updates == model.global_step == 15


def test_state_dict_round_trip_restores_the_average_before_fit_starts():
    module = toy_module()
    model, ema = stub(module), EMA(0.8)
    ema.on_fit_start(model)
    for step in (1, 2, 3):
        module.weight.data.add_(1.0)
        ema.on_train_batch_end(model, step, LOSS)
    state = ema.state_dict()
    json.dumps({k: v for k, v in state.items() if k != "module"})  # all but the tensors is JSON
    restored = EMA(0.8)
    restored.load_state_dict(state)
    assert restored.module is None  # applied when fit starts
    restored.on_fit_start(stub(module))
    assert restored.num_updates == 3 and torch.equal(restored.module.weight, ema.module.weight)
    assert restored.current_decay() == ema.current_decay()


@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_resumed_fit_continues_the_average_bit_for_bit(digits, tmp_path, averaging):
    x, y = digits[0][:512], digits[1][:512]

    def run(directory, resume=None):
        torch.manual_seed(0)
        model = kiln.Model(bn_net(), loss="cross_entropy", optimizer="sgd", lr=0.05)
        callback = EMA(0.9) if averaging == "ema" else SWA(start=1, swa_lr=0.02, every_steps=3, bn_data=(x, y))
        model.fit((x, y), epochs=3, batch_size=64, seed=0, callbacks=[callback], checkpoint=directory,
                  checkpoint_every=5, resume=resume, verbose=0)  # fmt: skip
        return callback

    whole = run(tmp_path / "whole")
    middle = sorted((tmp_path / "whole").glob("ckpt-*.safetensors"))[0]  # an earlier one is pruned; any will do
    resumed = run(tmp_path / "whole", resume=middle)
    assert resumed.num_updates == whole.num_updates
    for (name, a), b in zip(whole.module.state_dict().items(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EMA(1.0), "EMA decay must be in (0, 1), e.g. 0.999; got 1.0"),
        (lambda: EMA(every=0), "EMA every must be a positive int (optimizer steps), got 0"),
        (lambda: SWA(start=1.5), "SWA start must be an epoch (int >= 0) or a fraction of the epochs in [0, 1)"),
        (lambda: SWA(swa_lr=0), "SWA swa_lr must be a positive learning rate or None, got 0"),
        (lambda: SWA(every_steps=0), "SWA every_steps must be a positive int or None, got 0"),
    ],
)
def test_bad_settings_name_the_value_and_the_range(build, message):
    with pytest.raises(ConfigError, match=re_escape(message)):
        build()


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_recompute_batchnorm_leaves_modules_without_batchnorm_alone():
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    assert recompute_batchnorm(net, [torch.randn(4, 3)]) is net
