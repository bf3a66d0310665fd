"""LayerNorm in Triton: one program per row forward; a fixed number of programs backward, each owning a run of rows
and accumulating its share of the weight and bias gradients in registers (float32), summed by torch at the end.

Signatures match `kiln.kernels.reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kiln.kernels._triton_utils import backward_programs, on_input_device, row_block, rows_contiguous

__all__ = ["layer_norm_backward", "layer_norm_forward"]


@triton.jit
def _forward_kernel(
    output_ptr,
    mean_ptr,
    rstd_ptr,
    input_ptr,
    weight_ptr,
    bias_ptr,
    row_stride,
    n_columns,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK_SIZE)
    mask = columns < n_columns
    x = tl.load(input_ptr + row * row_stride + columns, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_columns
    centered = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / n_columns + eps)
    y = centered * rstd
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + columns, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + columns, mask=mask, other=0.0).to(tl.float32)
    tl.store(output_ptr + row * n_columns + columns, y.to(output_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward_kernel(
    grad_input_ptr,
    grad_weight_partial_ptr,
    grad_bias_partial_ptr,
    grad_output_ptr,
    input_ptr,
    weight_ptr,
    mean_ptr,
    rstd_ptr,
    grad_output_row_stride,
    input_row_stride,
    n_rows,
    n_columns,
    rows_per_program,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    program = tl.program_id(0)
    columns = tl.arange(0, BLOCK_SIZE)
    mask = columns < n_columns
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + columns, mask=mask, other=0.0).to(tl.float32)
    grad_weight = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    grad_bias = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    # int64 bounds make the loop index int64, so row offsets cannot overflow on large tensors.
    first = program.to(tl.int64) * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    for row in range(first, last):
        dy = tl.load(grad_output_ptr + row * grad_output_row_stride + columns, mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        x = tl.load(input_ptr + row * input_row_stride + columns, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        x_hat = tl.where(mask, (x - tl.load(mean_ptr + row)) * rstd, 0.0)
        weighted = dy * w if HAS_WEIGHT else dy
        mean_weighted = tl.sum(weighted, axis=0) / n_columns
        mean_projection = tl.sum(weighted * x_hat, axis=0) / n_columns
        dx = (weighted - mean_weighted - x_hat * mean_projection) * rstd
        tl.store(grad_input_ptr + row * n_columns + columns, dx.to(grad_input_ptr.dtype.element_ty), mask=mask)
        grad_weight += dy * x_hat
        grad_bias += dy
    if HAS_WEIGHT:
        tl.store(grad_weight_partial_ptr + program * n_columns + columns, grad_weight, mask=mask)
    if HAS_BIAS:
        tl.store(grad_bias_partial_ptr + program * n_columns + columns, grad_bias, mask=mask)


@on_input_device
def layer_norm_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Output (N, H), mean (N,) and rstd (N,); see `kiln.kernels.reference.layer_norm_forward`."""
    input = rows_contiguous(input)  # (N, H)
    n_rows, n_columns = input.shape
    output = torch.empty((n_rows, n_columns), dtype=input.dtype, device=input.device)  # (N, H)
    mean = input.new_empty(n_rows, dtype=torch.float32)  # (N,)
    rstd = input.new_empty(n_rows, dtype=torch.float32)  # (N,)
    block, warps = row_block(n_columns)
    _forward_kernel[(n_rows,)](
        output,
        mean,
        rstd,
        input,
        weight if weight is not None else input,
        bias if bias is not None else input,
        input.stride(0),
        n_columns,
        eps,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_SIZE=block,
        num_warps=warps,
    )
    return output, mean, rstd


@on_input_device
def layer_norm_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients for input (N, H), weight (H,) and bias (H,); see `kiln.kernels.reference.layer_norm_backward`."""
    input = rows_contiguous(input)  # (N, H)
    grad_output = rows_contiguous(grad_output)  # (N, H)
    n_rows, n_columns = input.shape
    grad_input = torch.empty((n_rows, n_columns), dtype=input.dtype, device=input.device)  # (N, H)
    programs = backward_programs(n_rows, input.device)
    grad_weight_partial = input.new_empty((programs, n_columns), dtype=torch.float32)  # (P, H)
    grad_bias_partial = input.new_empty((programs, n_columns), dtype=torch.float32)  # (P, H)
    block, warps = row_block(n_columns)
    _backward_kernel[(programs,)](
        grad_input,
        grad_weight_partial,
        grad_bias_partial,
        grad_output,
        input,
        weight if weight is not None else input,
        mean.contiguous(),
        rstd.contiguous(),
        grad_output.stride(0),
        input.stride(0),
        n_rows,
        n_columns,
        triton.cdiv(n_rows, programs),
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_SIZE=block,
        num_warps=warps,
    )
    grad_weight = grad_weight_partial.sum(dim=0).to(weight.dtype) if weight is not None else None  # (H,)
    grad_bias = grad_bias_partial.sum(dim=0).to(bias.dtype) if bias is not None else None  # (H,)
    return grad_input, grad_weight, grad_bias
