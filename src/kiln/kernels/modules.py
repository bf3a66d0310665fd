"""nn.Modules over the fused ops. The norms and the loss subclass their torch counterparts and add no state, so they
take the same constructor arguments, load the same state_dict and can stand in for them (see `kiln.kernels.apply`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kiln.errors import ConfigError
from kiln.kernels import functional

__all__ = ["CrossEntropyLoss", "LayerNorm", "LinearCrossEntropyLoss", "RMSNorm", "SwiGLU"]


class RMSNorm(nn.RMSNorm):
    """`torch.nn.RMSNorm` computed by the fused `kiln::rms_norm` op.

    Example:
        >>> norm = RMSNorm(512)
        >>> y = norm(torch.randn(4, 128, 512))
    """

    def forward(self, input: Tensor) -> Tensor:
        return functional.rms_norm(input, self.normalized_shape, self.weight, self.eps)


class LayerNorm(nn.LayerNorm):
    """`torch.nn.LayerNorm` computed by the fused `kiln::layer_norm` op.

    Example:
        >>> norm = LayerNorm(512)
        >>> y = norm(torch.randn(4, 128, 512))
    """

    def forward(self, input: Tensor) -> Tensor:
        return functional.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """`torch.nn.CrossEntropyLoss` (class-index targets, no class weights) computed by the fused op; float32 loss.

    Class-probability (floating point) targets fall back to torch's own implementation.

    Example:
        >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
        >>> loss = loss_fn(torch.randn(8, 10), torch.randint(0, 10, (8,)))
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        if weight is not None:
            raise ConfigError(
                "kiln.kernels.CrossEntropyLoss does not support class weights; got a weight tensor. "
                "Use torch.nn.CrossEntropyLoss for weighted classes."
            )
        super().__init__(None, size_average, ignore_index, reduce, reduction, label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if target.is_floating_point():
            return super().forward(input, target)
        return functional.cross_entropy(
            input,
            target,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )


class LinearCrossEntropyLoss(nn.Module):
    """Cross-entropy of an output projection, fused so the (N, V) logits are never held at once.

    Call it with the hidden states, the projection's weight (and bias) and the targets, in place of
    `CrossEntropyLoss()(lm_head(hidden), target)`.

    Example:
        >>> lm_head = torch.nn.Linear(512, 32000, bias=False)
        >>> loss_fn = LinearCrossEntropyLoss(ignore_index=-100)
        >>> hidden = torch.randn(4, 128, 512, requires_grad=True)  # (B, T, H)
        >>> loss = loss_fn(hidden, lm_head.weight, torch.randint(0, 32000, (4, 128)))
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.chunk_size = chunk_size

    def forward(self, input: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None = None) -> Tensor:
        return functional.fused_linear_cross_entropy(
            input,
            weight,
            target,
            bias,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


class SwiGLU(nn.Module):
    """The SwiGLU feed-forward block of Llama-style models: `down_proj(silu(gate_proj(x)) * up_proj(x))`.

    Parameter names follow Hugging Face Llama (`gate_proj`, `up_proj`, `down_proj`), so state_dicts map directly.

    Example:
        >>> mlp = SwiGLU(512, 1376)
        >>> y = mlp(torch.randn(4, 128, 512))  # (4, 128, 512)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        out_features = in_features if out_features is None else out_features
        self.gate_proj = nn.Linear(in_features, hidden_features, bias=bias, device=device, dtype=dtype)
        self.up_proj = nn.Linear(in_features, hidden_features, bias=bias, device=device, dtype=dtype)
        self.down_proj = nn.Linear(hidden_features, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        return self.down_proj(functional.swiglu(self.gate_proj(input), self.up_proj(input)))  # (..., out)
