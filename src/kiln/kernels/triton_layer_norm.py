"""LayerNorm in Triton: the shared row-normalisation kernels (`kiln.kernels._triton_norm`) with the mean subtracted.

Signatures match `kiln.kernels.reference`.
"""

from __future__ import annotations

from torch import Tensor

from kiln.kernels._triton_norm import norm_backward, norm_forward

__all__ = ["layer_norm_backward", "layer_norm_forward"]


def layer_norm_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Output (N, H), mean (N,) and rstd (N,); see `kiln.kernels.reference.layer_norm_forward`."""
    output, mean, rstd = norm_forward(input, weight, bias, eps, center=True)
    assert mean is not None  # center=True computes it
    return output, mean, rstd


def layer_norm_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients for input (N, H), weight (H,) and bias (H,); see `kiln.kernels.reference.layer_norm_backward`."""
    return norm_backward(grad_output, input, weight, bias, mean, rstd)
