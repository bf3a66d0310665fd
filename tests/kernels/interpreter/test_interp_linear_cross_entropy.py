"""Fused linear + cross-entropy on the Triton path (torch matmuls, Triton loss kernels) against the unfused torch
computation, float32. Tolerance atol=rtol=1e-5 (1e-4 absolute for the summed loss)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kiln.kernels as kk


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_unfused(device: torch.device, reduction: str, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(24, 16, generator=generator).to(device).requires_grad_()  # (N, H)
    weight = (0.5 * torch.randn(500, 16, generator=generator)).to(device).requires_grad_()  # (V, H)
    bias = torch.randn(500, generator=generator).to(device).requires_grad_() if with_bias else None  # (V,)
    target = torch.randint(0, 500, (24,), generator=generator).to(device)  # (N,)
    target[[0, 9]] = -100
    inputs = (hidden, weight) + ((bias,) if bias is not None else ())
    # Three chunks of 8 rows: 8 programs forward and 8 backward per chunk.
    loss = kk.fused_linear_cross_entropy(
        hidden, weight, target, bias, label_smoothing=0.1, reduction=reduction, chunk_size=8
    )
    expected = F.cross_entropy(F.linear(hidden, weight, bias), target, label_smoothing=0.1, reduction=reduction)
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-5)
    upstream = torch.rand(loss.shape, device=device)
    grads = torch.autograd.grad(loss, inputs, upstream)
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    torch.testing.assert_close(grads, expected_grads, atol=1e-5, rtol=1e-5)


def test_opcheck(device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=generator).to(device).requires_grad_()
    weight = torch.randn(40, 8, generator=generator).to(device).requires_grad_()
    target = torch.randint(0, 40, (6,), generator=generator).to(device)
    args = (hidden, weight, target, None, -100, 0.0, "mean", 3, [True, True, False])
    torch.library.opcheck(torch.ops.kiln.fused_linear_cross_entropy.default, args)
