"""Row normalisation in Triton, shared by LayerNorm and RMSNorm (`triton_layer_norm.py`, `triton_rms_norm.py`).

RMSNorm is LayerNorm without the mean: one kernel pair serves both, the constexpr `CENTER` switching the mean on.
Forward: one program per row. Backward: a fixed number of programs, each owning a run of rows and accumulating its
share of the weight and bias gradients in registers (float32), summed by torch at the end. Imports triton: only
loaded on the Triton path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kiln.kernels._triton_utils import backward_programs, on_input_device, row_block, rows_contiguous

__all__ = ["norm_backward", "norm_forward"]


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
    CENTER: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK_SIZE)
    mask = columns < n_columns
    x = tl.load(input_ptr + row * row_stride + columns, mask=mask, other=0.0).to(tl.float32)
    # Each row statistic is stored where it is computed: one CENTER branch, and the mean is not kept to the end.
    if CENTER:
        mean = tl.sum(x, axis=0) / n_columns
        tl.store(mean_ptr + row, mean)
        x = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_columns + eps)
    tl.store(rstd_ptr + row, rstd)
    y = x * rstd
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + columns, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + columns, mask=mask, other=0.0).to(tl.float32)
    tl.store(output_ptr + row * n_columns + columns, y.to(output_ptr.dtype.element_ty), mask=mask)


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
    CENTER: tl.constexpr,
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
        x_hat = tl.where(mask, (x - tl.load(mean_ptr + row)) * rstd, 0.0) if CENTER else x * rstd
        weighted = dy * w if HAS_WEIGHT else dy
        mean_projection = tl.sum(weighted * x_hat, axis=0) / n_columns
        if CENTER:
            mean_weighted = tl.sum(weighted, axis=0) / n_columns
            dx = (weighted - mean_weighted - x_hat * mean_projection) * rstd
        else:
            dx = (weighted - x_hat * mean_projection) * rstd
        tl.store(grad_input_ptr + row * n_columns + columns, dx.to(grad_input_ptr.dtype.element_ty), mask=mask)
        grad_weight += dy * x_hat
        if HAS_BIAS:
            grad_bias += dy
    if HAS_WEIGHT:
        tl.store(grad_weight_partial_ptr + program * n_columns + columns, grad_weight, mask=mask)
    if HAS_BIAS:
        tl.store(grad_bias_partial_ptr + program * n_columns + columns, grad_bias, mask=mask)


@on_input_device
def norm_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, *, center: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Output (N, H) in the input dtype, mean (N,) (None unless `center`) and rstd (N,) float32 of `input` (N, H).

    `center=True` is LayerNorm, `center=False` RMSNorm.
    """
    input = rows_contiguous(input)  # (N, H)
    n_rows, n_columns = input.shape
    output = torch.empty((n_rows, n_columns), dtype=input.dtype, device=input.device)  # (N, H)
    rstd = input.new_empty(n_rows, dtype=torch.float32)  # (N,)
    mean = input.new_empty(n_rows, dtype=torch.float32) if center else None  # (N,)
    block, warps = row_block(n_columns)
    # Absent tensors are passed as a stand-in pointer that the kernel never reads or writes.
    _forward_kernel[(n_rows,)](
        output,
        mean if mean is not None else rstd,
        rstd,
        input,
        weight if weight is not None else input,
        bias if bias is not None else input,
        input.stride(0),
        n_columns,
        eps,
        CENTER=center,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_SIZE=block,
        num_warps=warps,
    )
    return output, mean, rstd


@on_input_device
def norm_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor | None, rstd: Tensor
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients for input (N, H), weight (H,) and bias (H,) (None where the parameter is None).

    `mean` (N,) is the forward's for LayerNorm and None for RMSNorm.
    """
    input = rows_contiguous(input)  # (N, H)
    grad_output = rows_contiguous(grad_output)  # (N, H)
    n_rows, n_columns = input.shape
    grad_input = torch.empty((n_rows, n_columns), dtype=input.dtype, device=input.device)  # (N, H)
    programs = backward_programs(n_rows, input.device)
    grad_weight_partial = input.new_empty((programs, n_columns), dtype=torch.float32)  # (P, H)
    # Without a bias the weight's buffer stands in: the kernel writes a bias share only when there is a bias.
    grad_bias_partial = (
        input.new_empty((programs, n_columns), dtype=torch.float32) if bias is not None else grad_weight_partial
    )
    rstd = rstd.contiguous()  # (N,)
    block, warps = row_block(n_columns)
    _backward_kernel[(programs,)](
        grad_input,
        grad_weight_partial,
        grad_bias_partial,
        grad_output,
        input,
        weight if weight is not None else input,
        mean.contiguous() if mean is not None else rstd,
        rstd,
        grad_output.stride(0),
        input.stride(0),
        n_rows,
        n_columns,
        triton.cdiv(n_rows, programs),
        CENTER=mean is not None,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_SIZE=block,
        num_warps=warps,
    )
    grad_weight = grad_weight_partial.sum(dim=0).to(weight.dtype) if weight is not None else None  # (H,)
    grad_bias = grad_bias_partial.sum(dim=0).to(bias.dtype) if bias is not None else None  # (H,)
    return grad_input, grad_weight, grad_bias
