"""Triton RMSNorm against the reference and nn.RMSNorm. Float32 tolerance atol=rtol=1e-5; bfloat16 inputs with a
float32 weight: 1e-2 (one bfloat16 rounding of the output)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln.kernels as kk
from kiln.kernels import reference

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_match_reference(device: torch.device, with_weight: bool, dtype: torch.dtype) -> None:
    from kiln.kernels import triton_rms_norm

    generator = torch.Generator().manual_seed(0)
    # 40 rows of 300: forward 40 programs; backward 16 programs (interpreter) walking up to 3 rows each.
    x = torch.randn(40, 300, generator=generator).to(device, dtype)  # (N, H)
    weight = torch.randn(300, generator=generator).to(device) if with_weight else None  # (H,)
    grad_output = torch.randn(40, 300, generator=generator).to(device, dtype)  # (N, H)
    tolerance = TOLERANCE if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    output, rstd = triton_rms_norm.rms_norm_forward(x, weight, 1e-6)
    expected, expected_rstd = reference.rms_norm_forward(x, weight, 1e-6)
    torch.testing.assert_close(output, expected, **tolerance)
    torch.testing.assert_close(rstd, expected_rstd, **TOLERANCE)
    grads = triton_rms_norm.rms_norm_backward(grad_output, x, weight, rstd)
    expected_grads = reference.rms_norm_backward(grad_output, x, weight, expected_rstd)
    torch.testing.assert_close(grads[0], expected_grads[0], **tolerance)
    if with_weight:
        torch.testing.assert_close(grads[1], expected_grads[1], atol=1e-4, rtol=1e-5)
    else:
        assert grads[1] is None


def test_module_and_autograd_match_torch(device: torch.device) -> None:
    torch.manual_seed(0)
    expected_module = nn.RMSNorm(96, eps=1e-6).to(device)
    nn.init.normal_(expected_module.weight)
    module = kk.RMSNorm(96, eps=1e-6).to(device)
    module.load_state_dict(expected_module.state_dict())
    x = torch.randn(2, 10, 96, device=device, requires_grad=True)  # (B, T, H)
    output, expected = module(x), expected_module(x)
    torch.testing.assert_close(output, expected, **TOLERANCE)
    upstream = torch.randn_like(output)
    grads = torch.autograd.grad(output, (x, module.weight), upstream)
    expected_grads = torch.autograd.grad(expected, (x, expected_module.weight), upstream)
    torch.testing.assert_close(grads, expected_grads, atol=1e-4, rtol=1e-5)


def test_opcheck(device: torch.device) -> None:
    x = torch.randn(5, 32, device=device, requires_grad=True)
    weight = torch.randn(32, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.kiln.rms_norm.default, (x, weight, 1e-6))
