"""Softmax cross-entropy in Triton: one pass over each row for the loss, one for the gradient.

The forward keeps a running max, a running sum of exponentials and a running sum of logits (for label smoothing)
per row, so it reads the logits once and writes two floats per row; no softmax is ever stored. The backward
rebuilds the probabilities from the saved logsumexp and writes the gradient, optionally over the logits themselves.
Signatures match `kiln.kernels.reference`, targets included (`CrossEntropyTarget`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kiln.kernels._triton_utils import on_input_device, rows_contiguous
from kiln.kernels.reference import CrossEntropyTarget

__all__ = ["cross_entropy_backward", "cross_entropy_forward"]

# Columns one program holds at a time. The forward walks a row in blocks of this size; the backward launches one
# program per block of a row.
_FORWARD_BLOCK = 8192
_BACKWARD_BLOCK = 4096


@triton.jit
def _forward_kernel(
    logits_ptr,
    logits_row_stride,
    target_ptr,
    loss_ptr,
    lse_ptr,
    n_classes,
    ignore_index,
    label_smoothing,
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(target_ptr + row)
    if target == ignore_index:
        tl.store(loss_ptr + row, 0.0)
        tl.store(lse_ptr + row, 0.0)
        return
    logits_ptr += row * logits_row_stride
    running_max = float("-inf")
    running_sum = 0.0
    logit_sum = 0.0
    for start in range(0, n_classes, BLOCK_SIZE):
        columns = start + tl.arange(0, BLOCK_SIZE)
        mask = columns < n_classes
        x = tl.load(logits_ptr + columns, mask=mask, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        logit_sum += tl.sum(tl.where(mask, x, 0.0), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    target_logit = tl.load(logits_ptr + target).to(tl.float32)
    loss = lse - (1.0 - label_smoothing) * target_logit - label_smoothing * logit_sum / n_classes
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)


@triton.jit
def _backward_kernel(
    grad_logits_ptr,
    grad_logits_row_stride,
    logits_ptr,
    logits_row_stride,
    target_ptr,
    lse_ptr,
    grad_loss_ptr,
    grad_loss_stride,
    n_classes,
    ignore_index,
    label_smoothing,
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = columns < n_classes
    target = tl.load(target_ptr + row)
    scale = tl.load(grad_loss_ptr + row * grad_loss_stride).to(tl.float32)
    lse = tl.load(lse_ptr + row)
    x = tl.load(logits_ptr + row * logits_row_stride + columns, mask=mask, other=0.0).to(tl.float32)
    grad = tl.exp(x - lse) - label_smoothing / n_classes
    grad = tl.where(columns == target, grad - (1.0 - label_smoothing), grad)
    # An ignored row has no logsumexp (the forward stored 0): exp(x) could overflow, so select rather than scale.
    grad = tl.where(target == ignore_index, 0.0, grad * scale)
    grad_ptr = grad_logits_ptr + row * grad_logits_row_stride + columns
    tl.store(grad_ptr, grad.to(grad_logits_ptr.dtype.element_ty), mask=mask)


@on_input_device
def cross_entropy_forward(logits: Tensor, target: CrossEntropyTarget) -> tuple[Tensor, Tensor]:
    """Per-row loss (N,) and logsumexp (N,), both float32; see `kiln.kernels.reference.cross_entropy_forward`."""
    logits = rows_contiguous(logits)  # (N, V)
    n_rows, n_classes = logits.shape
    loss = logits.new_empty(n_rows, dtype=torch.float32)  # (N,)
    lse = logits.new_empty(n_rows, dtype=torch.float32)  # (N,)
    block = min(_FORWARD_BLOCK, triton.next_power_of_2(n_classes))
    _forward_kernel[(n_rows,)](
        logits,
        logits.stride(0),
        target.classes.contiguous(),
        loss,
        lse,
        n_classes,
        target.ignore_index,
        target.label_smoothing,
        BLOCK_SIZE=block,
        num_warps=_num_warps(block),
    )
    return loss, lse


@on_input_device
def cross_entropy_backward(
    grad_loss: Tensor, logits: Tensor, target: CrossEntropyTarget, lse: Tensor, out: Tensor | None = None
) -> Tensor:
    """Gradient for the logits (N, V); see `kiln.kernels.reference.cross_entropy_backward`. `out` may be `logits`."""
    logits = rows_contiguous(logits)  # (N, V)
    n_rows, n_classes = logits.shape
    if out is None:
        out = torch.empty_like(logits, memory_format=torch.contiguous_format)  # (N, V)
    elif out.stride(-1) != 1:
        raise ValueError(f"cross_entropy_backward needs `out` with contiguous rows; got strides {out.stride()}")
    block = min(_BACKWARD_BLOCK, triton.next_power_of_2(n_classes))
    _backward_kernel[(n_rows, triton.cdiv(n_classes, block))](
        out,
        out.stride(0),
        logits,
        logits.stride(0),
        target.classes.contiguous(),
        lse.contiguous(),
        grad_loss,
        grad_loss.stride(0),
        n_classes,
        target.ignore_index,
        target.label_smoothing,
        BLOCK_SIZE=block,
        num_warps=_num_warps(block),
    )
    return out


def _num_warps(block: int) -> int:
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4
