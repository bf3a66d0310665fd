"""RMSNorm in Triton: the shared row-normalisation kernels (`kiln.kernels._triton_norm`) without mean or bias.

Signatures match `kiln.kernels.reference`.
"""

from __future__ import annotations

from torch import Tensor

from kiln.kernels._triton_norm import norm_backward, norm_forward

__all__ = ["rms_norm_backward", "rms_norm_forward"]


def rms_norm_forward(input: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """Output (N, H) in the input dtype and rstd (N,) float32; see `kiln.kernels.reference.rms_norm_forward`."""
    output, _, rstd = norm_forward(input, weight, None, eps, center=False)
    return output, rstd


def rms_norm_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, rstd: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Gradients for input (N, H) and weight (H,); see `kiln.kernels.reference.rms_norm_backward`."""
    grad_input, grad_weight, _ = norm_backward(grad_output, input, weight, None, None, rstd)
    return grad_input, grad_weight
