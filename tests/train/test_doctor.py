"""The gradient doctor: each pathology planted in a tiny model is named with its layer and remedy; healthy is silent."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re

import pytest
import torch
from torch import nn

import kiln
from kiln.errors import ConfigError, NonFiniteLossError
from kiln.train.doctor import Finding, GradientDoctor


def fit(
    module: nn.Module,
    data,
    *,
    epochs: int = 1,
    optimizer: str = "adamw",
    lr: float = 1e-3,
    loss="cross_entropy",
    callbacks=(),
    **options,
):
    doctor = options.pop("doctor", None) or GradientDoctor(print_findings=False)
    model = kiln.Model(module, loss=loss, optimizer=optimizer, lr=lr)
    model.fit(data, epochs=epochs, batch_size=64, seed=0, callbacks=[*callbacks, doctor], verbose=0, **options)
    return model, doctor


def relu_mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class TotalGradNorm(kiln.Callback):
    """Records the global gradient norm of every step (what the doctor's clipping suggestion must come from)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, model, step):
        grads = [p.grad for p in model.module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_deep_sigmoid_mlp_reports_vanishing_gradients_in_the_early_layers(digits):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip([64, *[32] * 7], [32] * 8, strict=True):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    net = nn.Sequential(*layers, nn.Linear(32, 10))  # Linear layers at 0, 2, ..., 16
    model, doctor = fit(net, digits, optimizer="sgd", lr=0.1)
    assert [f.kind for f in doctor.findings] == ["vanishing"]
    finding = doctor.findings[0]
    assert finding.layers[:2] == ["0", "2"]  # forward order: the earliest layers first
    assert "16" not in finding.layers and "14" not in finding.layers
    assert finding.step <= 2  # confirmed on the second look
    assert re.search(r"'0' \d\.\de-0[5-9]", finding.evidence), finding.evidence
    remedies = " ".join(finding.remedies)
    assert "ReLU or GELU instead of Sigmoid" in remedies
    assert "normalisation" in remedies and "BatchNorm" in remedies
    assert "kiln.init(module, 'kaiming')" in remedies
    assert model.history.diagnostics == doctor.findings


def test_learning_rate_100x_too_high_reports_exploding_with_a_clip_value_from_healthy_norms(digits):
    torch.manual_seed(0)
    recorder = TotalGradNorm()
    _, doctor = fit(relu_mlp(64, 256, 256, 10), digits, lr=0.1, callbacks=[recorder])  # adamw's usual lr is 1e-3
    exploding = [f for f in doctor.findings if f.kind == "exploding"]
    assert len(exploding) == 1
    finding = exploding[0]
    assert finding.step <= 4
    assert set(finding.layers) <= {"0", "2", "4"} and finding.layers
    clip = [r for r in finding.remedies if "clip_grad_norm=" in r]
    assert clip, finding.remedies
    value = float(re.search(r"clip_grad_norm=([0-9.e+-]+)\)", clip[0]).group(1))
    healthy = recorder.norms[: finding.step]  # the looks before the explosion
    assert min(healthy) * 0.9 <= value <= max(healthy) * 1.1, (value, healthy)
    assert any("Lower the learning rate (now 0.1)" in r for r in finding.remedies)
    total = recorder.norms[finding.step]
    assert f"{total:.3g}" in finding.evidence


def test_dead_relu_names_the_layer_with_a_very_negative_bias(digits):
    torch.manual_seed(0)
    net = relu_mlp(64, 128, 64, 10)  # Linear 0, ReLU 1, Linear 2, ReLU 3, Linear 4
    with torch.no_grad():
        net[2].bias.fill_(-10.0)
    _, doctor = fit(net, digits)
    assert [(f.kind, f.layers) for f in doctor.findings] == [("dead_relu", ["2", "3"])]
    finding = doctor.findings[0]
    assert "100% of the 64 units of '3'" in finding.evidence
    assert "mean bias is -10" in finding.evidence
    assert "initialisation" in finding.evidence
    assert "kiln.init(module, 'kaiming', bias=0.0)" in finding.remedies[0]
    assert any("LeakyReLU or GELU" in r for r in finding.remedies)


def test_dead_relu_is_found_with_gradient_accumulation(digits):
    torch.manual_seed(0)
    net = relu_mlp(64, 32, 10)
    with torch.no_grad():
        net[0].bias.fill_(-10.0)
    _, doctor = fit(net, digits, accumulate=2)
    assert [(f.kind, f.layers) for f in doctor.findings] == [("dead_relu", ["0", "1"])]


class _NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.nan)


def test_nan_gradient_names_the_layer_where_it_starts(digits):
    torch.manual_seed(0)
    net = relu_mlp(64, 64, 64, 10)
    net[2].register_forward_hook(lambda module, inputs, output: _NaNGradient.apply(output))
    model = kiln.Model(net, loss="cross_entropy", lr=1e-3)
    doctor = GradientDoctor(print_findings=False)
    with pytest.raises(NonFiniteLossError):  # the NaN reaches the weights, then the loss
        model.fit(digits, epochs=1, batch_size=64, seed=0, callbacks=[doctor], verbose=0)
    assert len(doctor.findings) == 1  # the spread to every layer is not reported again
    finding = doctor.findings[0]
    assert finding.kind == "nonfinite" and finding.step == 0
    assert finding.layers == ["2", "0"]  # where it starts, then the layer that gets its gradient through it
    assert "'2' (Linear) is nan" in finding.evidence
    assert "weights are still finite" in finding.evidence
    assert "set_detect_anomaly" in " ".join(finding.remedies)
    assert model.history.diagnostics == doctor.findings


def test_under_fp16_loss_scaling_only_persistent_nonfinite_gradients_are_reported(digits):
    torch.manual_seed(0)
    net = relu_mlp(64, 64, 64, 10)
    net[2].register_forward_hook(lambda module, inputs, output: _NaNGradient.apply(output))
    _, doctor = fit(net, digits, precision="fp16")  # the scaler skips every step; the weights stay finite
    assert [(f.kind, f.layers[0], f.step) for f in doctor.findings] == [("nonfinite", "2", 2)]  # 3rd look: 0, 1, 2


class _SpikeOnce(nn.Module):
    """Scales the logits 10000x on one training batch: a loss spike with a known step."""

    def __init__(self, net: nn.Module, at_call: int) -> None:
        super().__init__()
        self.net, self.at_call, self.calls = net, at_call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        output = self.net(x)
        return output * 1e4 if self.training and self.calls == self.at_call else output


def test_loss_spike_names_its_step(digits):
    torch.manual_seed(0)
    _, doctor = fit(_SpikeOnce(relu_mlp(64, 64, 10), at_call=41), digits, epochs=2)  # the batch of step 40
    spikes = [f for f in doctor.findings if f.kind == "loss_spike"]
    assert len(spikes) == 1 and spikes[0].step == 40, doctor.findings
    assert "above the loss at the start" in spikes[0].evidence
    assert any("EMA" in r for r in spikes[0].remedies)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_healthy_model_on_digits_is_silent(digits, kind, caplog, capsys):
    torch.manual_seed(0)
    if kind == "mlp":
        net: nn.Module = relu_mlp(64, 128, 10)
    else:
        net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 4, 4)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 10),
        )  # fmt: skip
    doctor = GradientDoctor(every=5, print_findings=True)  # more looks than the default: a stricter test
    with caplog.at_level(logging.INFO, logger="kiln.doctor"):
        model, _ = fit(net, digits, epochs=8 if kind == "mlp" else 3, lr=2e-3, doctor=doctor)
    assert doctor.findings == [] and model.history.diagnostics == []
    assert not caplog.records
    assert "kiln doctor" not in capsys.readouterr().out
    assert doctor.stats["grad_norms"]  # it did look


def test_a_finding_is_reported_once_to_the_log_and_the_progress_output(digits, caplog, capsys):
    torch.manual_seed(0)
    net = relu_mlp(64, 32, 10)
    with torch.no_grad():
        net[0].bias.fill_(-10.0)
    with caplog.at_level(logging.WARNING, logger="kiln.doctor"):
        _, doctor = fit(net, digits, epochs=3, doctor=GradientDoctor(every=5, print_findings=True))
    assert len(doctor.findings) == 1
    assert [r.name for r in caplog.records] == ["kiln.doctor"]
    assert caplog.records[0].getMessage() == str(doctor.findings[0])
    out = capsys.readouterr().out
    assert out.count("kiln doctor: dead ReLU units in '0', '1'") == 1
    assert "  try: Re-initialise '0' (Linear)" in out


def test_forward_hooks_exist_only_on_the_steps_it_looks_at(digits):
    seen: dict[int, int] = {}

    class CountHooks(kiln.Callback):
        def on_before_optimizer_step(self, model, step):
            seen[step] = sum(len(m._forward_hooks) for m in model.module.modules())

    torch.manual_seed(0)
    model, _ = fit(
        relu_mlp(64, 32, 10),
        digits,
        epochs=2,
        callbacks=[CountHooks()],
        doctor=GradientDoctor(every=10, early=4, print_findings=False),
    )
    looks = {s for s in seen if s % 10 == 0 or s in (1, 2, 4)}
    assert all(seen[s] > 0 for s in looks), seen
    assert all(seen[s] == 0 for s in set(seen) - looks), seen
    assert sum(len(m._forward_hooks) for m in model.module.modules()) == 0


def test_state_dict_is_json_and_a_resumed_doctor_does_not_repeat_findings(digits):
    torch.manual_seed(0)
    net = relu_mlp(64, 32, 10)
    with torch.no_grad():
        net[0].bias.fill_(-10.0)
    model, doctor = fit(net, digits)
    state = json.loads(json.dumps(doctor.state_dict()))
    resumed = GradientDoctor(print_findings=False)
    resumed.load_state_dict(state)
    assert resumed.findings == doctor.findings and isinstance(resumed.findings[0], Finding)
    model.fit(digits, epochs=1, batch_size=64, seed=0, callbacks=[resumed], verbose=0)
    assert resumed.findings == doctor.findings  # the same finding, not reported a second time
    assert model.history.diagnostics == doctor.findings  # the resumed run's History still lists it


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every": 0}, "every must be a positive int, got 0"),
        ({"vanish_ratio": 2.0}, "vanish_ratio must be in (0, 1)"),
        ({"explode_factor": 1}, "explode_factor must be > 1"),
        ({"dead_fraction": 0}, "dead_fraction must be in (0, 1]"),
    ],
)
def test_bad_settings_name_the_value_and_the_range(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GradientDoctor(**options)


class LookStats(kiln.Callback):
    """After each batch whose step the doctor looked at: the doctor's stats of that look (put after the doctor)."""

    def __init__(self, doctor: GradientDoctor) -> None:
        self.doctor, self.looks = doctor, []

    def on_train_batch_end(self, model, step, loss):
        if self.doctor.stats.get("step") == step - 1:
            self.looks.append(json.loads(json.dumps(self.doctor.stats)))


def test_update_ratios_are_the_step_size_over_the_weights_on_every_look(digits):
    # Plain SGD moves each layer by lr * its gradient, so the update/weight ratio of a look is exactly
    # lr * grad norm / weight norm; several regular looks check the reused weight copy as well as the first one.
    torch.manual_seed(0)
    doctor = GradientDoctor(every=7, early=2, print_findings=False)
    stats = LookStats(doctor)
    kiln.Model(relu_mlp(64, 32, 10), loss="cross_entropy", optimizer="sgd", lr=0.1).fit(
        digits, epochs=2, batch_size=64, seed=0, callbacks=[doctor, stats], verbose=0)
    assert [look["step"] for look in stats.looks][:6] == [0, 1, 2, 7, 14, 21]
    for look in stats.looks:
        for name, ratio in look["update_ratios"].items():
            expected = 0.1 * look["grad_norms"][name] / look["weight_norms"][name]
            assert ratio == pytest.approx(expected, rel=1e-4), (look["step"], name)
