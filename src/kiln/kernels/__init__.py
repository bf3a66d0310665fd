"""Fused operators: Triton kernels on CUDA, a pure-torch reference everywhere else.

Every op is a `kiln::` custom op (forward and backward, with fake kernels), so it works under torch.compile and
torch.export; Triton is optional (`pip install kiln[kernels]`) and only imported when a CUDA tensor needs it.

Example:
    >>> import kiln.kernels as kk
    >>> model = kk.apply(model)  # fused LayerNorm / RMSNorm / CrossEntropyLoss where faster (CUDA + Triton)
    >>> loss = kk.fused_linear_cross_entropy(hidden, model.lm_head.weight, labels)  # no (N, V) logits held
"""

from __future__ import annotations

from kiln.kernels._ops import triton_available
from kiln.kernels._swap import apply, backend, fused_loss
from kiln.kernels.functional import cross_entropy, fused_linear_cross_entropy, layer_norm, rms_norm, swiglu
from kiln.kernels.modules import CrossEntropyLoss, LayerNorm, LinearCrossEntropyLoss, RMSNorm, SwiGLU

__all__ = [
    "CrossEntropyLoss",
    "LayerNorm",
    "LinearCrossEntropyLoss",
    "RMSNorm",
    "SwiGLU",
    "apply",
    "backend",
    "cross_entropy",
    "fused_linear_cross_entropy",
    "fused_loss",
    "layer_norm",
    "rms_norm",
    "swiglu",
    "triton_available",
]
