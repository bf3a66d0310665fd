"""Triton cross-entropy kernels against the reference. Float32 tolerance: atol=rtol=1e-5 (both sum in float32 in a
different order). With bfloat16 logits the float32 loss keeps that tolerance; the bfloat16 gradient may differ by
one bfloat16 rounding (rtol=1.6e-2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kiln.kernels as kk
from kiln.kernels import reference

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def _case(device: torch.device, rows: int, classes: int, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(rows, classes, generator=generator)).to(device, dtype)  # (N, V)
    target = torch.randint(0, classes, (rows,), generator=generator).to(device)  # (N,)
    target[1] = -100
    return logits, target


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_match_reference(device: torch.device, label_smoothing: float, dtype: torch.dtype) -> None:
    from kiln.kernels import triton_cross_entropy

    # 20000 classes: three 8192-wide blocks per row forward, 12 x 5 programs backward.
    logits, classes = _case(device, 12, 20000, dtype)
    target = reference.CrossEntropyTarget(classes, ignore_index=-100, label_smoothing=label_smoothing)
    loss, lse = triton_cross_entropy.cross_entropy_forward(logits, target)
    expected_loss, expected_lse = reference.cross_entropy_forward(logits, target)
    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    torch.testing.assert_close(lse, expected_lse, **TOLERANCE)
    grad_loss = torch.rand(12, device=device)  # (N,)
    grad = triton_cross_entropy.cross_entropy_backward(grad_loss, logits, target, lse)
    expected = reference.cross_entropy_backward(grad_loss, logits, target, expected_lse)
    assert grad.dtype == dtype
    grad_tolerance = TOLERANCE if dtype == torch.float32 else {"atol": 1e-5, "rtol": 1.6e-2}
    torch.testing.assert_close(grad.float(), expected.float(), **grad_tolerance)


def test_backward_can_overwrite_the_logits(device: torch.device) -> None:
    from kiln.kernels import triton_cross_entropy

    logits, classes = _case(device, 6, 1000)
    target = reference.CrossEntropyTarget(classes)  # ignore_index -100, no smoothing
    _, lse = reference.cross_entropy_forward(logits, target)
    grad_loss = torch.ones(6, device=device).expand(6)  # a stride-0 upstream gradient, as from a sum
    expected = reference.cross_entropy_backward(grad_loss, logits, target, lse)
    result = triton_cross_entropy.cross_entropy_backward(grad_loss, logits, target, lse, out=logits)
    assert result.data_ptr() == logits.data_ptr()
    torch.testing.assert_close(logits, expected, **TOLERANCE)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_op_and_autograd_match_torch(device: torch.device, reduction: str) -> None:
    logits, target = _case(device, 8, 300)
    logits.requires_grad_()
    loss = kk.cross_entropy(logits, target, label_smoothing=0.05, reduction=reduction)
    expected = F.cross_entropy(logits, target, label_smoothing=0.05, reduction=reduction)
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    upstream = torch.rand(loss.shape, device=device)
    (grad,) = torch.autograd.grad(loss, logits, upstream)
    (expected_grad,) = torch.autograd.grad(expected, logits, upstream)
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


def test_opcheck(device: torch.device) -> None:
    logits, target = _case(device, 4, 50)
    torch.library.opcheck(torch.ops.kiln.cross_entropy.default, (logits.requires_grad_(), target, -100, 0.1))
