"""Triton LayerNorm against the reference and nn.LayerNorm. Float32 tolerance atol=rtol=1e-5 (1e-4 absolute for the
weight and bias gradients, sums over rows); bfloat16 inputs with float32 parameters: 1e-2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln.kernels as kk
from kiln.kernels import reference

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.mark.parametrize("affine", ["weight_and_bias", "weight_only", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_match_reference(device: torch.device, affine: str, dtype: torch.dtype) -> None:
    from kiln.kernels import triton_layer_norm

    generator = torch.Generator().manual_seed(0)
    # 40 rows of 300: forward 40 programs; backward 16 programs (interpreter) walking up to 3 rows each.
    x = (1 + 2 * torch.randn(40, 300, generator=generator)).to(device, dtype)  # (N, H)
    weight = torch.randn(300, generator=generator).to(device) if affine != "none" else None  # (H,)
    bias = torch.randn(300, generator=generator).to(device) if affine == "weight_and_bias" else None  # (H,)
    grad_output = torch.randn(40, 300, generator=generator).to(device, dtype)  # (N, H)
    tolerance = TOLERANCE if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    output, mean, rstd = triton_layer_norm.layer_norm_forward(x, weight, bias, 1e-5)
    expected, expected_mean, expected_rstd = reference.layer_norm_forward(x, weight, bias, 1e-5)
    torch.testing.assert_close(output, expected, **tolerance)
    torch.testing.assert_close((mean, rstd), (expected_mean, expected_rstd), **TOLERANCE)
    grads = triton_layer_norm.layer_norm_backward(grad_output, x, weight, bias, mean, rstd)
    expected_grads = reference.layer_norm_backward(grad_output, x, weight, bias, expected_mean, expected_rstd)
    torch.testing.assert_close(grads[0], expected_grads[0], **tolerance)
    for grad, expected_grad in zip(grads[1:], expected_grads[1:], strict=True):
        assert (grad is None) == (expected_grad is None)
        if grad is not None:
            torch.testing.assert_close(grad, expected_grad, atol=1e-4, rtol=1e-5)


def test_module_and_autograd_match_torch(device: torch.device) -> None:
    torch.manual_seed(0)
    expected_module = nn.LayerNorm(96).to(device)
    for parameter in expected_module.parameters():
        nn.init.normal_(parameter)
    module = kk.LayerNorm(96).to(device)
    module.load_state_dict(expected_module.state_dict())
    x = torch.randn(2, 10, 96, device=device, requires_grad=True)  # (B, T, H)
    output, expected = module(x), expected_module(x)
    torch.testing.assert_close(output, expected, **TOLERANCE)
    upstream = torch.randn_like(output)
    grads = torch.autograd.grad(output, (x, *module.parameters()), upstream)
    expected_grads = torch.autograd.grad(expected, (x, *expected_module.parameters()), upstream)
    torch.testing.assert_close(grads, expected_grads, atol=1e-4, rtol=1e-5)


def test_opcheck(device: torch.device) -> None:
    x = torch.randn(5, 32, device=device, requires_grad=True)
    weight = torch.randn(32, device=device, requires_grad=True)
    bias = torch.randn(32, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.kiln.layer_norm.default, (x, weight, bias, 1e-5))
