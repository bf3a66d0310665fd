"""The reference path (what every op runs on CPU) against torch's own modules, in value and gradient (float32).

Tolerances: float32 throughout; the fused ops reorder float32 sums, so values agree to about 1e-6 relative. Checks
use atol=rtol=1e-5 unless stated.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln.kernels as kk
from kiln.errors import ConfigError, ShapeError
from kiln.kernels import reference

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def _grads(output: torch.Tensor, inputs: tuple[torch.Tensor, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(output.shape, generator=generator)  # a non-uniform upstream gradient
    return torch.autograd.grad(output, inputs, upstream)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(reduction: str, label_smoothing: float) -> None:
    torch.manual_seed(0)
    logits = (3 * torch.randn(16, 37)).requires_grad_()  # (N, V)
    target = torch.randint(0, 37, (16,))  # (N,)
    target[[1, 5, 6]] = -100
    expected_fn = nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=label_smoothing, reduction=reduction)
    loss = kk.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction)
    expected = expected_fn(logits, target)
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    torch.testing.assert_close(_grads(loss, (logits,)), _grads(expected, (logits,)), **TOLERANCE)


def test_cross_entropy_handles_class_dimension_one_and_custom_ignore_index() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 11, 5, 3, requires_grad=True)  # (N, C, d1, d2)
    target = torch.randint(0, 11, (2, 5, 3))  # (N, d1, d2)
    target[0, 1] = 7
    loss = kk.cross_entropy(logits, target, ignore_index=7, reduction="none")
    expected = F.cross_entropy(logits, target, ignore_index=7, reduction="none")
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    torch.testing.assert_close(_grads(loss, (logits,)), _grads(expected, (logits,)), **TOLERANCE)
    single = kk.cross_entropy(logits[0, :, 0, 0], target[0, 0, 0])  # (C,) logits, () target
    torch.testing.assert_close(single, F.cross_entropy(logits[0, :, 0, 0], target[0, 0, 0]), **TOLERANCE)


def test_cross_entropy_all_ignored_mean_is_nan_like_torch() -> None:
    logits = torch.randn(4, 6)
    target = torch.full((4,), -100)
    assert torch.isnan(kk.cross_entropy(logits, target)) and torch.isnan(F.cross_entropy(logits, target))
    assert kk.cross_entropy(logits, target, reduction="sum").item() == 0.0


def test_cross_entropy_reference_walks_rows_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking the rows (to bound float32 temporaries) changes nothing: force 3-row chunks."""
    monkeypatch.setattr(reference, "_CHUNK_ELEMENTS", 3 * 50)
    torch.manual_seed(0)
    logits = torch.randn(10, 50, dtype=torch.float64)  # (N, V)
    target = torch.randint(0, 50, (10,))
    target[4] = -100
    smoothed = reference.CrossEntropyTarget(target, ignore_index=-100, label_smoothing=0.2)
    loss, lse = reference.cross_entropy_forward(logits, smoothed)
    expected = F.cross_entropy(logits, target, label_smoothing=0.2, reduction="none").float()
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    grad_loss = torch.rand(10)  # (N,)
    grad = reference.cross_entropy_backward(grad_loss, logits, smoothed, lse)
    leaf = logits.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(
        F.cross_entropy(leaf, target, label_smoothing=0.2, reduction="none"), leaf, grad_loss.double()
    )
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


def test_cross_entropy_bfloat16_logits_give_float32_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 40).bfloat16()
    target = torch.randint(0, 40, (8,))
    loss = kk.cross_entropy(logits, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), target), atol=1e-5, rtol=1e-5)


def test_cross_entropy_rejects_bad_arguments() -> None:
    logits, target = torch.randn(4, 6), torch.randint(0, 6, (4,))
    with pytest.raises(ConfigError, match="reduction='avg'"):
        kk.cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ConfigError, match=r"label_smoothing=1\.5"):
        kk.cross_entropy(logits, target, label_smoothing=1.5)
    with pytest.raises(ConfigError, match="class-index targets"):
        kk.cross_entropy(logits, torch.rand(4, 6))
    with pytest.raises(ShapeError, match=r"target has shape \(5,\); expected \(4,\)"):
        kk.cross_entropy(logits, torch.randint(0, 6, (5,)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_fused_linear_cross_entropy_matches_unfused(reduction: str, with_bias: bool, chunk_size: int | None) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)  # (B, T, H)
    weight = (0.3 * torch.randn(90, 16)).requires_grad_()  # (V, H)
    bias = torch.randn(90, requires_grad=True) if with_bias else None
    target = torch.randint(0, 90, (3, 7))  # (B, T)
    target[0, :3] = -100
    inputs = (hidden, weight) + ((bias,) if bias is not None else ())
    loss = kk.fused_linear_cross_entropy(
        hidden, weight, target, bias, label_smoothing=0.1, reduction=reduction, chunk_size=chunk_size
    )
    logits = F.linear(hidden, weight, bias)  # (B, T, V)
    expected = F.cross_entropy(logits.transpose(1, 2), target, label_smoothing=0.1, reduction=reduction)
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    torch.testing.assert_close(_grads(loss, inputs), _grads(expected, inputs), **TOLERANCE)


def test_fused_linear_cross_entropy_frozen_weight_and_no_grad() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(12, 8, requires_grad=True)  # (N, H)
    weight = torch.randn(30, 8)  # (V, H), frozen
    target = torch.randint(0, 30, (12,))
    loss = kk.fused_linear_cross_entropy(hidden, weight, target, chunk_size=4)
    expected = F.cross_entropy(hidden @ weight.T, target)
    torch.testing.assert_close(_grads(loss, (hidden,)), _grads(expected, (hidden,)), **TOLERANCE)
    with torch.no_grad():
        torch.testing.assert_close(kk.fused_linear_cross_entropy(hidden, weight, target), expected.detach())


def test_fused_linear_cross_entropy_rejects_mismatched_shapes_and_dtypes() -> None:
    hidden, weight, target = torch.randn(4, 8), torch.randn(30, 8), torch.randint(0, 30, (4,))
    with pytest.raises(ShapeError, match="must share H"):
        kk.fused_linear_cross_entropy(hidden, torch.randn(30, 9), target)
    with pytest.raises(ConfigError, match="need one dtype"):
        kk.fused_linear_cross_entropy(hidden, weight.double(), target)
    with pytest.raises(ConfigError, match="chunk_size=0"):
        kk.fused_linear_cross_entropy(hidden, weight, target, chunk_size=0)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rms_norm_matches_torch(affine: bool, eps: float | None) -> None:
    torch.manual_seed(0)
    expected_module = nn.RMSNorm(24, eps=eps, elementwise_affine=affine)
    if affine:
        nn.init.normal_(expected_module.weight)
    module = kk.RMSNorm(24, eps=eps, elementwise_affine=affine)
    module.load_state_dict(expected_module.state_dict())
    x = torch.randn(3, 5, 24, requires_grad=True)  # (B, T, H)
    output, expected = module(x), expected_module(x)
    torch.testing.assert_close(output, expected, **TOLERANCE)
    params = (x, *module.parameters())
    expected_params = (x, *expected_module.parameters())
    torch.testing.assert_close(_grads(output, params), _grads(expected, expected_params), **TOLERANCE)


@pytest.mark.parametrize("affine", ["weight_and_bias", "weight_only", "none"])
def test_layer_norm_matches_torch(affine: str) -> None:
    torch.manual_seed(0)
    shape = (4, 6)  # a two-dimensional normalized_shape is flattened to one row of 24
    kwargs = {"elementwise_affine": affine != "none", "bias": affine == "weight_and_bias"}
    expected_module = nn.LayerNorm(shape, eps=1e-5, **kwargs)
    for parameter in expected_module.parameters():
        nn.init.normal_(parameter)
    module = kk.LayerNorm(shape, eps=1e-5, **kwargs)
    module.load_state_dict(expected_module.state_dict())
    x = (2 + 3 * torch.randn(5, 4, 6)).requires_grad_()  # (N, 4, 6), off-centre to exercise the mean
    output, expected = module(x), expected_module(x)
    torch.testing.assert_close(output, expected, **TOLERANCE)
    params = (x, *module.parameters())
    expected_params = (x, *expected_module.parameters())
    torch.testing.assert_close(_grads(output, params), _grads(expected, expected_params), **TOLERANCE)


def test_norms_reject_mismatched_shapes() -> None:
    with pytest.raises(ShapeError, match="normalized_shape"):
        kk.layer_norm(torch.randn(4, 8), (7,))
    with pytest.raises(ShapeError, match="weight has shape"):
        kk.rms_norm(torch.randn(4, 8), (8,), torch.ones(7))


def test_swiglu_matches_plain_torch() -> None:
    torch.manual_seed(0)
    gate = torch.randn(4, 3, 10, requires_grad=True)
    up = torch.randn(4, 3, 10, requires_grad=True)
    output = kk.swiglu(gate, up)
    expected = F.silu(gate) * up
    torch.testing.assert_close(output, expected, **TOLERANCE)
    torch.testing.assert_close(_grads(output, (gate, up)), _grads(expected, (gate, up)), **TOLERANCE)
    with pytest.raises(ShapeError, match="same shape and dtype"):
        kk.swiglu(gate, up[..., :5])


def test_swiglu_module_matches_plain_block() -> None:
    torch.manual_seed(0)
    module = kk.SwiGLU(12, 20)
    x = torch.randn(2, 5, 12, requires_grad=True)
    expected = module.down_proj(F.silu(module.gate_proj(x)) * module.up_proj(x))
    torch.testing.assert_close(module(x), expected, **TOLERANCE)
    assert sorted(module.state_dict()) == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]


def test_linear_cross_entropy_loss_module() -> None:
    torch.manual_seed(0)
    head = nn.Linear(16, 50)
    hidden, target = torch.randn(2, 9, 16), torch.randint(0, 50, (2, 9))
    loss_fn = kk.LinearCrossEntropyLoss(label_smoothing=0.05, chunk_size=4)
    expected = F.cross_entropy(head(hidden).flatten(0, 1), target.flatten(), label_smoothing=0.05)
    torch.testing.assert_close(loss_fn(hidden, head.weight, target, head.bias), expected, **TOLERANCE)
