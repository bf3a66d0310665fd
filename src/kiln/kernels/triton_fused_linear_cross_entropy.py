"""Fused linear + cross-entropy on CUDA: cuBLAS matmuls per chunk of rows, Triton kernels for the chunk's loss.

Each chunk's logits are overwritten in place by their gradient (`kiln.kernels.triton_cross_entropy`), so peak memory
is one chunk of logits plus the gradients. Signatures match `kiln.kernels.reference`.
"""

from __future__ import annotations

from torch import Tensor

from kiln.kernels import _linear_cross_entropy
from kiln.kernels.triton_cross_entropy import cross_entropy_backward, cross_entropy_forward

__all__ = ["fused_linear_cross_entropy_backward", "fused_linear_cross_entropy_forward"]


def fused_linear_cross_entropy_forward(
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
    """See `kiln.kernels.reference.fused_linear_cross_entropy_forward`."""
    return _linear_cross_entropy.forward(
        cross_entropy_forward,
        cross_entropy_backward,
        input,
        weight,
        target,
        bias,
        ignore_index,
        label_smoothing,
        reduction,
        chunk_size,
        compute_grad,
    )


def fused_linear_cross_entropy_backward(
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
    """See `kiln.kernels.reference.fused_linear_cross_entropy_backward`."""
    return _linear_cross_entropy.backward(
        cross_entropy_backward,
        grad_loss,
        input,
        weight,
        target,
        bias,
        lse,
        ignore_index,
        label_smoothing,
        chunk_size,
        compute_grad,
    )
