"""SwiGLU (`silu(gate) * up`) in Triton: one elementwise pass forward and one backward, float32 inside.

Eager torch makes two passes forward (silu, then the product, with an intermediate tensor) and several backward;
here each element of gate and up is read once per direction. Signatures match `kiln.kernels.reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kiln.kernels._triton_utils import on_input_device

__all__ = ["swiglu_backward", "swiglu_forward"]

_BLOCK = 1024


@triton.jit
def _forward_kernel(output_ptr, gate_ptr, up_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    output = gate * tl.sigmoid(gate) * up
    tl.store(output_ptr + offsets, output.to(output_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_gate_ptr, grad_up_ptr, grad_output_ptr, gate_ptr, up_ptr, n_elements, BLOCK_SIZE: tl.constexpr
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    grad = tl.load(grad_output_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    sigmoid = tl.sigmoid(gate)
    grad_gate = grad * up * sigmoid * (1.0 + gate * (1.0 - sigmoid))
    tl.store(grad_gate_ptr + offsets, grad_gate.to(grad_gate_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_up_ptr + offsets, (grad * gate * sigmoid).to(grad_up_ptr.dtype.element_ty), mask=mask)


@on_input_device
def swiglu_forward(gate: Tensor, up: Tensor) -> Tensor:
    """`silu(gate) * up`; see `kiln.kernels.reference.swiglu_forward`."""
    gate, up = gate.contiguous(), up.contiguous()
    output = torch.empty_like(gate)
    n_elements = gate.numel()
    _forward_kernel[(triton.cdiv(n_elements, _BLOCK),)](output, gate, up, n_elements, BLOCK_SIZE=_BLOCK)
    return output


@on_input_device
def swiglu_backward(grad_output: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients for gate and up; see `kiln.kernels.reference.swiglu_backward`."""
    grad_output, gate, up = grad_output.contiguous(), gate.contiguous(), up.contiguous()
    grad_gate = torch.empty_like(gate)
    grad_up = torch.empty_like(up)
    n_elements = gate.numel()
    _backward_kernel[(triton.cdiv(n_elements, _BLOCK),)](
        grad_gate, grad_up, grad_output, gate, up, n_elements, BLOCK_SIZE=_BLOCK
    )
    return grad_gate, grad_up
