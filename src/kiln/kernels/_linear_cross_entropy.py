"""Chunked linear + cross-entropy: the one implementation behind `kiln::fused_linear_cross_entropy`, on every device.

The driver walks the rows in chunks: one matmul gives a chunk's logits, a `ChunkLoss` turns them into the chunk's
loss and, in place, its gradient. Only that per-chunk step differs between devices: the op passes the reference's
torch functions or the Triton kernels (`kiln.kernels.triton_cross_entropy`); the matmuls are cuBLAS / oneDNN calls
either way. For `reduction="mean"` or `"sum"` the upstream gradient of the loss is a scalar, so the gradients are
computed during the forward, chunk by chunk, while each chunk's logits are at hand, and the backward only scales them.
That costs one matmul less than recomputing the logits in the backward and keeps peak memory at one chunk of logits
plus the gradients themselves. For `reduction="none"` the backward recomputes each chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from kiln.kernels.reference import CrossEntropyTarget

CrossEntropyForward = Callable[[Tensor, CrossEntropyTarget], tuple[Tensor, Tensor]]
CrossEntropyBackward = Callable[..., Tensor]
Gradients = tuple[Tensor | None, Tensor | None, Tensor | None]


@dataclass(frozen=True)
class ChunkLoss:
    """The cross-entropy of one chunk of rows against its targets: the step the driver runs on each chunk's logits.

    `cross_entropy_forward` and `cross_entropy_backward` are one backend's pair (`kiln.kernels.reference` or
    `kiln.kernels.triton_cross_entropy`); `target` holds the targets of all N rows.
    """

    cross_entropy_forward: CrossEntropyForward
    cross_entropy_backward: CrossEntropyBackward
    target: CrossEntropyTarget

    def forward(self, logits: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Loss (C,) and logsumexp (C,), float32, of the rows `start : start + C` given their logits (C, V)."""
        return self.cross_entropy_forward(logits, self.target.rows(start, start + logits.shape[0]))

    def backward_(self, grad_rows: Tensor, logits: Tensor, start: int, lse: Tensor) -> Tensor:
        """Overwrites the chunk's logits (C, V) with their gradient, given the rows' upstream gradient and lse (C,)."""
        target = self.target.rows(start, start + logits.shape[0])
        return self.cross_entropy_backward(grad_rows, logits, target, lse, out=logits)


def _chunks(
    input: Tensor, weight: Tensor, bias: Tensor | None, chunk_size: int
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(start, input rows (C, H), logits (C, V)) for each chunk of `chunk_size` rows of `input` (N, H)."""
    for start in range(0, input.shape[0], chunk_size):
        input_rows = input[start : start + chunk_size]  # (C, H)
        if bias is None:
            yield start, input_rows, input_rows @ weight.t()  # (C, V)
        else:
            yield start, input_rows, torch.addmm(bias, input_rows, weight.t())  # (C, V)


def _allocate_grads(input: Tensor, weight: Tensor, bias: Tensor | None, compute_grad: list[bool]) -> Gradients:
    grad_input = torch.empty_like(input) if compute_grad[0] else None  # (N, H)
    grad_weight = torch.zeros_like(weight) if compute_grad[1] else None  # (V, H)
    grad_bias = torch.zeros_like(bias) if bias is not None and compute_grad[2] else None  # (V,)
    return grad_input, grad_weight, grad_bias


def _accumulate_chunk(
    chunk_loss: ChunkLoss,
    grads: Gradients,
    start: int,
    grad_rows: Tensor,
    lse_rows: Tensor,
    input_rows: Tensor,
    logits: Tensor,
    weight: Tensor,
) -> None:
    grad_input, grad_weight, grad_bias = grads
    # The chunk's logits are not needed any more: overwrite them with their gradient.
    grad_logits = chunk_loss.backward_(grad_rows, logits, start, lse_rows)  # (C, V)
    if grad_input is not None:
        torch.mm(grad_logits, weight, out=grad_input[start : start + logits.shape[0]])  # (C, H)
    if grad_weight is not None:
        grad_weight.addmm_(grad_logits.t(), input_rows)  # (V, H)
    if grad_bias is not None:
        grad_bias += grad_logits.sum(dim=0)  # (V,)


def forward(
    chunk_loss: ChunkLoss,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    reduction: str,
    chunk_size: int,
    compute_grad: list[bool],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Loss of `input` (N, H) through `weight` (V, H) and `bias` (V,) against `chunk_loss.target` (N rows).

    Returns `(loss, lse, grad_input, grad_weight, grad_bias)`. The loss is float32: a scalar for "mean"/"sum", (N,)
    for "none"; the mean is over non-ignored rows (NaN when every row is ignored, as in torch). `lse` (N,) is kept
    for a recomputing backward. The gradients are those of the loss itself (upstream gradient 1), computed only for
    a "mean"/"sum" reduction and where `compute_grad` (input, weight, bias) asks; otherwise None.
    """
    n_rows = input.shape[0]
    loss_rows = input.new_empty(n_rows, dtype=torch.float32)  # (N,)
    lse = input.new_empty(n_rows, dtype=torch.float32)  # (N,)
    valid = chunk_loss.target.valid()  # (N,)
    n_valid = valid.sum()
    grads: Gradients = (None, None, None)
    grad_rows = None  # (N,): the upstream gradient of each row's loss, when the gradients are computed here
    if reduction != "none" and any(compute_grad):
        grads = _allocate_grads(input, weight, bias, compute_grad)
        scale = 1.0 / n_valid.clamp(min=1).float() if reduction == "mean" else torch.ones((), device=input.device)
        grad_rows = valid.float() * scale  # (N,)
    for start, input_rows, logits in _chunks(input, weight, bias, chunk_size):
        end = start + logits.shape[0]
        chunk_loss_rows, chunk_lse = chunk_loss.forward(logits, start)  # (C,), (C,)
        loss_rows[start:end] = chunk_loss_rows
        lse[start:end] = chunk_lse
        if grad_rows is not None:
            _accumulate_chunk(chunk_loss, grads, start, grad_rows[start:end], chunk_lse, input_rows, logits, weight)
    if reduction == "mean":
        loss = loss_rows.sum() / n_valid
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows
    return (loss, lse, *grads)


def backward(
    chunk_loss: ChunkLoss,
    grad_loss: Tensor,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lse: Tensor,
    chunk_size: int,
    compute_grad: list[bool],
) -> Gradients:
    """Gradients of `sum(grad_loss * loss_rows)`, recomputing each chunk's logits; `grad_loss` and `lse` are (N,)."""
    grads = _allocate_grads(input, weight, bias, compute_grad)
    for start, input_rows, logits in _chunks(input, weight, bias, chunk_size):
        end = start + logits.shape[0]
        _accumulate_chunk(chunk_loss, grads, start, grad_loss[start:end], lse[start:end], input_rows, logits, weight)
    return grads
