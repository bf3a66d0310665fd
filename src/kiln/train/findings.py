"""What the gradient doctor reports: the kinds of finding, :class:`Finding`, and the evidence and remedies it prints.

Everything here turns numbers the doctor measured into text. Deciding that something is wrong, and when, stays in
:mod:`kiln.train.doctor` (and, for dead ReLU units, :mod:`kiln.train.activations`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = ["KINDS", "Finding"]

KINDS = ("vanishing", "exploding", "loss_spike", "dead_relu", "nonfinite")
_TITLES = {
    "vanishing": "vanishing gradients",
    "exploding": "exploding gradients",
    "loss_spike": "loss spike",
    "dead_relu": "dead ReLU units",
    "nonfinite": "non-finite values",
}
_SATURATING = (nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardtanh, nn.Softsign, nn.LogSigmoid)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_RELUS = (nn.ReLU, nn.ReLU6)
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
)
_EMA_HINT = "callbacks=[EMA(decay=0.999)] from kiln.train.averaging"


@dataclass
class Finding:
    """One diagnosis: what (``kind``), where (module paths), when (optimizer step), the numbers, and what to try.

    ``kind`` is one of :data:`KINDS`; ``layers`` are paths as ``module.named_modules()`` spells them ("(root)" for
    parameters that sit directly on the top module); ``step`` counts the optimizer steps done before the evidence.

    Example:
        >>> finding = history.diagnostics[0]
        >>> finding.kind, finding.layers, finding.step
        ('vanishing', ['0', '2'], 1)
        >>> print(finding)   # the same text the progress output shows
    """

    kind: str
    layers: list[str]
    step: int
    evidence: str
    remedies: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = ", ".join(repr(name) for name in self.layers) or "the model"
        lines = [
            f"kiln doctor: {_TITLES.get(self.kind, self.kind)} in {where} (step {self.step})",
            f"  evidence: {self.evidence}",
        ]
        return "\n".join([*lines, *(f"  try: {remedy}" for remedy in self.remedies)])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Layer:
    name: str
    module: nn.Module
    params: list[torch.Tensor]
    order_hook: Any = None

    @property
    def label(self) -> str:
        return f"'{self.name}' ({type(self.module).__name__})"


def _round(value: float) -> float:
    """Two significant digits: a value a person would type."""
    if value <= 0 or not math.isfinite(value):
        return value
    return float(f"{value:.2g}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ---------------------------------------------------------------------- remedies
def _clip_remedy(healthy_norms: Iterable[float], clip_percentile: float) -> list[str]:
    norms = list(healthy_norms)
    if not norms:
        return ["Clip gradients: fit(..., clip_grad_norm=1.0)."]
    value = _round(_percentile(norms, clip_percentile))
    return [
        f"Clip gradients: fit(..., clip_grad_norm={value:g}), the {clip_percentile:g}th percentile of "
        f"the total gradient norm over {len(norms)} healthy looks (median {statistics.median(norms):.3g})."
    ]


def _lr_remedy(lr: float, total_steps: int) -> str:
    warmup = max(10, min(1000, total_steps // 20))
    return (
        f"Lower the learning rate (now {lr:.3g}), e.g. to {lr / 10:.3g}, and warm it up and decay it: "
        f"lr_schedule=LRSchedule('cosine', warmup_steps={warmup})."
    )


def _precision_remedy(precision: str) -> list[str]:
    if precision != "fp16":
        return []
    return ["fp16 overflows above 65504: train in precision='bf16' (fp32's range) if the device supports it."]


def _vanishing_remedies(root: nn.Module) -> list[str]:
    modules = list(root.named_modules())
    saturating = [(name, module) for name, module in modules if isinstance(module, _SATURATING)]
    remedies = []
    if saturating:
        kinds = sorted({type(module).__name__ for _, module in saturating})
        where = ", ".join(repr(name) for name, _ in saturating[:4]) + (" ..." if len(saturating) > 4 else "")
        remedies.append(
            f"Use ReLU or GELU instead of {'/'.join(kinds)} (at {where}): a saturating activation's "
            "slope is at most 1 (0.25 for Sigmoid) and shrinks the gradient at every layer."
        )
    if any(isinstance(module, nn.RNN) for _, module in modules):
        remedies.append("Use LSTM or GRU instead of nn.RNN: their gates carry the gradient across time steps.")
    if not any(isinstance(module, _NORMS) for _, module in modules):
        remedies.append(
            "Add normalisation between layers: BatchNorm (MLPs, CNNs) or LayerNorm (transformers, "
            "RNNs) keeps every layer's activations and gradients at a similar scale."
        )
    remedies.append(
        "Initialise for the activation: kiln.init(module, 'kaiming') for ReLU/GELU networks, "
        "kiln.init(module, 'xavier', nonlinearity='tanh') for tanh/sigmoid ones."
    )
    remedies.append("Add residual connections (x + layer(x)) so the gradient reaches early layers directly.")
    return remedies


class _Remedies(NamedTuple):
    """The remedies that quote the run, made when a finding is reported, and whether it already normalises."""

    clip: list[str]
    lr: str
    precision: list[str]
    normalised: bool  # the model has a BatchNorm, LayerNorm, GroupNorm or InstanceNorm: do not suggest adding one


def _run_remedies(
    *,
    healthy_norms: Iterable[float],
    clip_percentile: float,
    lr: float,
    total_steps: int,
    precision: str,
    root: nn.Module,
) -> _Remedies:
    return _Remedies(
        clip=_clip_remedy(healthy_norms, clip_percentile),
        lr=_lr_remedy(lr, total_steps),
        precision=_precision_remedy(precision),
        normalised=any(isinstance(module, _NORMS) for module in root.modules()),
    )


# ---------------------------------------------------------------------- findings
def _nonfinite_gradient_finding(
    step: int, bad: list[_Layer], norm: float, every_layer: bool, bad_weights: list[str], remedies: _Remedies
) -> Finding:
    """``bad``: the layers with a non-finite gradient in forward order, the last (``norm``) where it starts."""
    origin = bad[-1]
    evidence = f"the gradient norm of {origin.label} is {norm} at step {step}"
    if every_layer:
        evidence += "; every layer's gradient is non-finite, so it starts at the loss or the output layer"
    elif len(bad) > 1:
        before = ", ".join(repr(layer.name) for layer in bad[:-1][:4])
        evidence += (
            f"; the {len(bad) - 1} layer(s) before it in the forward pass ({before}"
            f"{', ...' if len(bad) > 5 else ''}) get their gradient through it and are non-finite too, "
            "the layers after it are finite"
        )
    if bad_weights:
        evidence += f"; the weights of {bad_weights[:4]} are already non-finite (an earlier update overflowed)"
    else:
        evidence += "; all weights are still finite, so it arises in this step's backward pass"
    lines = [
        f"Check the forward of {origin.label} and what follows it for operations whose gradient overflows or "
        "divides by zero (log, sqrt, pow, division, exp, the norm of a zero vector): add an epsilon or clamp.",
        "Run one step under torch.autograd.set_detect_anomaly(True) to name the operation that made it.",
    ]
    if bad_weights:
        lines.append(remedies.lr)
    lines += remedies.precision
    return Finding("nonfinite", [layer.name for layer in reversed(bad)], step, evidence, lines)


def _nonfinite_loss_finding(step: int, value: float, bad: list[str], remedies: _Remedies) -> Finding:
    """``bad``: the layers whose weights are non-finite now."""
    evidence = f"the training loss was {value} at step {step}"
    evidence += (
        f"; the weights of {bad[:4]}{' ...' if len(bad) > 4 else ''} are non-finite now"
        if bad
        else "; the weights are finite, so the inputs or the loss computation produced it"
    )
    lines = [
        remedies.lr,
        *remedies.clip,
        "Check the inputs and targets of that batch for NaN/Inf, and the loss for log(0) or division by 0.",
        *remedies.precision,
    ]
    return Finding("nonfinite", bad, step, evidence, lines)


def _loss_spike_finding(
    step: int, value: float, median: float, batches: int, initial_loss: float, spikes: int, remedies: _Remedies
) -> Finding:
    """The largest of ``spikes`` batch losses above the running ``median`` of ``batches`` batches."""
    evidence = (
        f"the batch loss {value:.4g} at step {step} is {value / median:.0f}x the running median "
        f"{median:.4g} of the last {batches} batches and above the loss at the start "
        f"({initial_loss:.4g}); {spikes} such batch(es) since the previous look"
    )
    lines = [
        *remedies.clip,
        remedies.lr,
        f"Average the weights so one bad step does not decide the result: {_EMA_HINT}.",
        f"Look at the batch of step {step} for outliers or wrong labels.",
    ]
    return Finding("loss_spike", [], step, evidence, lines)


def _exploding_finding(
    step: int,
    total: float,
    median: float,
    top: float,
    looks: int,
    largest: list[tuple[float, str]],
    update_ratios: dict[str, float],
    remedies: _Remedies,
) -> Finding:
    """``median``, ``top``: of the ``looks`` healthy total gradient norms before; ``largest``: (norm, name) by layer."""
    evidence = (
        f"the total gradient norm {total:.3g} at step {step} is {total / max(median, 1e-30):.0f}x the "
        f"median {median:.3g} of {looks} earlier looks (largest earlier {top:.3g}); largest layers: "
        + ", ".join(f"'{name}' {norm:.3g}" for norm, name in largest)
    )
    if update_ratios:
        name, ratio = max(update_ratios.items(), key=lambda item: item[1])
        evidence += f"; the update after the previous look moved '{name}' by {ratio:.2g} of its norm (1e-3 is usual)"
    lines = [*remedies.clip, remedies.lr]
    if not remedies.normalised:
        lines.append(
            "Add normalisation (BatchNorm for MLPs and CNNs, LayerNorm for transformers and RNNs) to "
            "keep activations and gradients in range."
        )
    lines.append(f"Average the weights to smooth out unstable steps: {_EMA_HINT}.")
    return Finding("exploding", [name for _, name in largest], step, evidence, lines)


def _vanishing_finding(
    step: int,
    names: list[str],
    norms: dict[str, float],
    top: float,
    last: str,
    vanish_ratio: float,
    streak: int,
    root: nn.Module,
) -> Finding:
    """``names``: the low layers in forward order; ``norms``: every layer's gradient norm; ``last``: the output's."""
    top_name = max(norms, key=lambda name: norms[name])
    shown = ", ".join(f"'{name}' {norms[name]:.2g}" for name in names[:5]) + (" ..." if len(names) > 5 else "")
    evidence = (
        f"gradient norms {shown} at step {step} are below {vanish_ratio:g}x the largest, "
        f"'{top_name}' {norms[top_name]:.2g} (smallest ratio {min(norms[n] for n in names) / top:.1e}), "
        f"on {streak} looks in a row"
    )
    if last != top_name:
        evidence += f"; the last layer '{last}' has {norms[last]:.2g}"
    return Finding("vanishing", names, step, evidence, _vanishing_remedies(root))


def _dead_relu_finding(
    step: int,
    name: str,
    dead: int,
    size: int,
    streak: int,
    feeder: _Layer | None,
    dead_since: int | None,
    first_look: int | None,
    remedies: _Remedies,
) -> Finding:
    """``dead`` of the ``size`` units of the ReLU ``name`` never fired; ``feeder`` is the layer that feeds it."""
    evidence = (
        f"{dead / size:.0%} of the {size} units of '{name}' gave zero for every "
        f"sample on {streak} looks in a row up to step {step}"
    )
    bias = getattr(feeder.module, "bias", None) if feeder is not None else None
    if feeder is not None:
        evidence += f"; it follows {feeder.label}"
        if isinstance(bias, torch.Tensor):
            evidence += f", whose mean bias is {float(bias.detach().float().mean()):.3g}"
    init = (
        f"Re-initialise {feeder.label if feeder else 'the layer before it'} with kiln.init(module, 'kaiming', "
        "bias=0.0): He-scaled weights and zero biases keep about half the units active."
    )
    leaky = f"Use LeakyReLU or GELU instead of ReLU at '{name}' so units that stop firing still get a gradient."
    if dead_since == first_look:
        evidence += f"; dead from the first look (step {first_look}), so the initialisation put them there"
        lines = [init, leaky]
    else:
        evidence += f"; alive before step {dead_since}, so training pushed them there"
        lines = [remedies.lr, leaky, init]
    if not remedies.normalised:
        lines.append("Add BatchNorm before the ReLU to keep its inputs centred around zero.")
    layers = [feeder.name, name] if feeder is not None else [name]
    return Finding("dead_relu", layers, step, evidence, lines)
