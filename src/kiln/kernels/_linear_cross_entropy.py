"""Chunked linear + cross-entropy, shared by the reference and the Triton path.

Only the per-chunk cross-entropy differs between the two (torch ops or Triton kernels); the matmuls are cuBLAS /
oneDNN calls either way. For `reduction="mean"` or `"sum"` the upstream gradient of the loss is a scalar, so the
gradients are computed during the forward, chunk by chunk, while each chunk's logits are at hand, and the backward
only scales them. That costs one matmul less than recomputing the logits in the backward and keeps peak memory at
one chunk of logits plus the gradients themselves. For `reduction="none"` the backward recomputes each chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CrossEntropyForward = Callable[[Tensor, Tensor, int, float], tuple[Tensor, Tensor]]
CrossEntropyBackward = Callable[..., Tensor]


def _chunks(n_rows: int, chunk_size: int) -> range:
    return range(0, n_rows, chunk_size)


def _logits(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return input @ weight.t()  # (C, V)
    return torch.addmm(bias, input, weight.t())  # (C, V)


def _allocate_grads(
    input: Tensor, weight: Tensor, bias: Tensor | None, compute_grad: list[bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    grad_input = torch.empty_like(input) if compute_grad[0] else None  # (N, H)
    grad_weight = torch.zeros_like(weight) if compute_grad[1] else None  # (V, H)
    grad_bias = torch.zeros_like(bias) if bias is not None and compute_grad[2] else None  # (V,)
    return grad_input, grad_weight, grad_bias


def _accumulate_chunk(
    cross_entropy_backward: CrossEntropyBackward,
    grads: tuple[Tensor | None, Tensor | None, Tensor | None],
    start: int,
    grad_rows: Tensor,
    input_rows: Tensor,
    logits: Tensor,
    weight: Tensor,
    target_rows: Tensor,
    lse_rows: Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> None:
    grad_input, grad_weight, grad_bias = grads
    # The chunk's logits are not needed any more: overwrite them with their gradient.
    grad_logits = cross_entropy_backward(
        grad_rows, logits, target_rows, lse_rows, ignore_index, label_smoothing, out=logits
    )  # (C, V)
    if grad_input is not None:
        torch.mm(grad_logits, weight, out=grad_input[start : start + logits.shape[0]])  # (C, H)
    if grad_weight is not None:
        grad_weight.addmm_(grad_logits.t(), input_rows)  # (V, H)
    if grad_bias is not None:
        grad_bias += grad_logits.sum(dim=0)  # (V,)


def forward(
    cross_entropy_forward: CrossEntropyForward,
    cross_entropy_backward: CrossEntropyBackward,
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    chunk_size: int,
    compute_grad: list[bool],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Loss of `input` (N, H) through `weight` (V, H) and `bias` (V,) against `target` (N,).

    Returns `(loss, lse, grad_input, grad_weight, grad_bias)`. The loss is float32: a scalar for "mean"/"sum", (N,)
    for "none"; the mean is over non-ignored rows (NaN when every row is ignored, as in torch). `lse` (N,) is kept
    for a recomputing backward. The gradients are those of the loss itself (upstream gradient 1), computed only for
    a "mean"/"sum" reduction and where `compute_grad` (input, weight, bias) asks; otherwise None.
    """
    n_rows = input.shape[0]
    loss_rows = input.new_empty(n_rows, dtype=torch.float32)  # (N,)
    lse = input.new_empty(n_rows, dtype=torch.float32)  # (N,)
    valid = target != ignore_index  # (N,)
    n_valid = valid.sum()
    precompute = reduction != "none" and any(compute_grad)
    grads: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None)
    grad_rows = loss_rows  # placeholder, replaced when gradients are precomputed
    if precompute:
        grads = _allocate_grads(input, weight, bias, compute_grad)
        scale = 1.0 / n_valid.clamp(min=1).float() if reduction == "mean" else torch.ones((), device=input.device)
        grad_rows = valid.float() * scale  # (N,)
    for start in _chunks(n_rows, chunk_size):
        end = min(start + chunk_size, n_rows)
        input_rows = input[start:end]  # (C, H)
        logits = _logits(input_rows, weight, bias)  # (C, V)
        chunk_loss, chunk_lse = cross_entropy_forward(logits, target[start:end], ignore_index, label_smoothing)
        loss_rows[start:end] = chunk_loss
        lse[start:end] = chunk_lse
        if precompute:
            _accumulate_chunk(
                cross_entropy_backward,
                grads,
                start,
                grad_rows[start:end],
                input_rows,
                logits,
                weight,
                target[start:end],
                chunk_lse,
                ignore_index,
                label_smoothing,
            )
    if reduction == "mean":
        loss = loss_rows.sum() / n_valid
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows
    return (loss, lse, *grads)


def backward(
    cross_entropy_backward: CrossEntropyBackward,
    grad_loss: Tensor,
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    lse: Tensor,
    ignore_index: int,
    label_smoothing: float,
    chunk_size: int,
    compute_grad: list[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of `sum(grad_loss * loss_rows)`, recomputing each chunk's logits; `grad_loss` is (N,)."""
    grads = _allocate_grads(input, weight, bias, compute_grad)
    for start in _chunks(input.shape[0], chunk_size):
        end = min(start + chunk_size, input.shape[0])
        input_rows = input[start:end]  # (C, H)
        logits = _logits(input_rows, weight, bias)  # (C, V)
        _accumulate_chunk(
            cross_entropy_backward,
            grads,
            start,
            grad_loss[start:end],
            input_rows,
            logits,
            weight,
            target[start:end],
            lse[start:end],
            ignore_index,
            label_smoothing,
        )
    return grads
