"""Triton SwiGLU against the reference and plain torch. Float32 tolerance atol=rtol=1e-5; bfloat16: identical
inputs and float32 math on both sides, so outputs agree to one bfloat16 rounding (1e-2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kiln.kernels as kk
from kiln.kernels import reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_match_reference(device: torch.device, dtype: torch.dtype) -> None:
    from kiln.kernels import triton_swiglu

    generator = torch.Generator().manual_seed(0)
    # 6 x 1000 elements, non-contiguous views: 6 programs of 1024.
    gate = torch.randn(6, 2000, generator=generator).to(device, dtype)[:, ::2]  # (6, 1000)
    up = torch.randn(6, 1000, generator=generator).to(device, dtype)  # (6, 1000)
    grad_output = torch.randn(6, 1000, generator=generator).to(device, dtype)  # (6, 1000)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(triton_swiglu.swiglu_forward(gate, up), reference.swiglu_forward(gate, up), **tolerance)
    torch.testing.assert_close(
        triton_swiglu.swiglu_backward(grad_output, gate, up),
        reference.swiglu_backward(grad_output, gate, up),
        **tolerance,
    )


def test_op_and_autograd_match_torch(device: torch.device) -> None:
    torch.manual_seed(0)
    gate = torch.randn(4, 700, device=device, requires_grad=True)
    up = torch.randn(4, 700, device=device, requires_grad=True)
    output, expected = kk.swiglu(gate, up), F.silu(gate) * up
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(output)
    grads = torch.autograd.grad(output, (gate, up), upstream)
    expected_grads = torch.autograd.grad(expected, (gate, up), upstream)
    torch.testing.assert_close(grads, expected_grads, atol=1e-5, rtol=1e-5)


def test_opcheck(device: torch.device) -> None:
    gate = torch.randn(3, 40, device=device, requires_grad=True)
    up = torch.randn(3, 40, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.kiln.swiglu.default, (gate, up))
