"""Pure-torch reference implementations of every fused op: the CPU path and the oracle the Triton kernels are tested on.

Each op is a forward/backward pair with exactly the signature of its Triton counterpart in `triton_<op>.py`, so the
dispatcher in `kiln.kernels._ops` can pick either one by device. Inputs arrive already flattened to rows: `(N, V)`
logits, `(N, H)` activations. Arithmetic happens in float32 whatever the input dtype; outputs are cast back to the
input dtype, while per-row statistics (logsumexp, mean, rstd) and per-row losses stay float32.

The cross-entropy functions take their targets as one `CrossEntropyTarget`: the class indices with the two options
that always travel with them (`ignore_index`, `label_smoothing`). They walk the rows in chunks so that the float32
temporaries torch needs (`logsumexp`, `exp`) stay bounded instead of growing to a full-size `(N, V)` float32 copy of
bfloat16 logits. The fused linear cross-entropy has no twin here: it is one chunked driver
(`kiln.kernels._linear_cross_entropy`) over these cross-entropy functions or their Triton twins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "CrossEntropyTarget",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "rms_norm_backward",
    "rms_norm_forward",
    "swiglu_backward",
    "swiglu_forward",
]

# Elements of float32 temporaries per chunk of rows (64 MiB): large enough to keep torch's kernels busy.
_CHUNK_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True)
class CrossEntropyTarget:
    """What each row's logits are scored against: class indices and the options that go with them.

    `classes` (N,) holds one class index per row; rows equal to `ignore_index` have no loss and no gradient. With
    `label_smoothing` s the target distribution is `(1 - s)` on the class plus `s` spread evenly over all classes,
    as in `torch.nn.CrossEntropyLoss`.

    Example:
        >>> target = CrossEntropyTarget(torch.tensor([3, -100, 1]), ignore_index=-100, label_smoothing=0.1)
        >>> loss, lse = cross_entropy_forward(torch.randn(3, 5), target)
    """

    classes: Tensor  # (N,)
    ignore_index: int = -100
    label_smoothing: float = 0.0

    def rows(self, start: int, end: int) -> CrossEntropyTarget:
        """The target of rows `start:end` (a view of `classes`, the same options)."""
        return dataclasses.replace(self, classes=self.classes[start:end])

    def valid(self) -> Tensor:
        """(N,) bool: the rows that count (their class is not `ignore_index`)."""
        return self.classes != self.ignore_index

    def gather_index(self) -> Tensor:
        """(N,) class indices safe to gather with: ignored rows point at class 0 (their result is masked out)."""
        return torch.where(self.valid(), self.classes, 0)


def _row_chunks(n_rows: int, n_cols: int) -> Iterator[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def cross_entropy_forward(logits: Tensor, target: CrossEntropyTarget) -> tuple[Tensor, Tensor]:
    """Per-row softmax cross-entropy of `logits` (N, V) against `target` (N rows).

    Returns `(loss, lse)`, both (N,) float32: the per-row loss and the row's logsumexp, which the backward needs;
    both are 0 on ignored rows. With label smoothing `s` the loss is `(1 - s) * nll + s * mean_j(-log p_j)`, as in
    `torch.nn.CrossEntropyLoss`.
    """
    n_rows, n_classes = logits.shape
    smoothing = target.label_smoothing
    loss = logits.new_empty(n_rows, dtype=torch.float32)  # (N,)
    lse = logits.new_empty(n_rows, dtype=torch.float32)  # (N,)
    for start, end in _row_chunks(n_rows, n_classes):
        x = logits[start:end].float()  # (C, V)
        rows_target = target.rows(start, end)
        valid = rows_target.valid()  # (C,)
        chunk_lse = torch.logsumexp(x, dim=-1)  # (C,)
        target_logit = x.gather(1, rows_target.gather_index().unsqueeze(1)).squeeze(1)  # (C,)
        chunk_loss = chunk_lse - (1.0 - smoothing) * target_logit  # (C,)
        if smoothing > 0.0:
            chunk_loss = chunk_loss - smoothing * x.mean(dim=-1)
        loss[start:end] = torch.where(valid, chunk_loss, 0.0)
        lse[start:end] = torch.where(valid, chunk_lse, 0.0)
    return loss, lse


def cross_entropy_backward(
    grad_loss: Tensor, logits: Tensor, target: CrossEntropyTarget, lse: Tensor, out: Tensor | None = None
) -> Tensor:
    """Gradient of `sum(grad_loss * loss)` with respect to `logits` (N, V), given the forward's `lse` (N,).

    `grad_loss` (N,) is the upstream gradient of each row's loss (already scaled for a mean). The result is written
    to `out` when given; `out` may be `logits` itself, which the fused linear cross-entropy uses to save memory.
    """
    n_rows, n_classes = logits.shape
    smoothing = target.label_smoothing
    grad = logits.new_empty(logits.shape) if out is None else out  # (N, V), contiguous
    for start, end in _row_chunks(n_rows, n_classes):
        rows_target = target.rows(start, end)
        probs = torch.exp(logits[start:end].float() - lse[start:end].unsqueeze(1))  # (C, V)
        if smoothing > 0.0:
            probs -= smoothing / n_classes
        rows = torch.arange(end - start, device=logits.device)
        probs[rows, rows_target.gather_index()] -= 1.0 - smoothing
        probs *= torch.where(rows_target.valid(), grad_loss[start:end].float(), 0.0).unsqueeze(1)
        grad[start:end] = probs
    return grad


def rms_norm_forward(input: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """`input * rsqrt(mean(input**2) + eps) * weight` over the last dimension of `input` (N, H).

    Returns `(output, rstd)`: output (N, H) in the input dtype and the reciprocal RMS (N,) float32.
    """
    x = input.float()  # (N, H)
    rstd = torch.rsqrt(x.square().mean(dim=-1) + eps)  # (N,)
    output = x * rstd.unsqueeze(1)  # (N, H)
    if weight is not None:
        output = output * weight.float()
    return output.to(input.dtype).contiguous(), rstd


def rms_norm_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, rstd: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Gradients of RMSNorm for input (N, H) and weight (H,) (None without a weight)."""
    x_hat = input.float() * rstd.unsqueeze(1)  # (N, H)
    grad = grad_output.float()  # (N, H)
    weighted = grad * weight.float() if weight is not None else grad  # (N, H)
    grad_input = (weighted - x_hat * (weighted * x_hat).mean(dim=-1, keepdim=True)) * rstd.unsqueeze(1)  # (N, H)
    grad_weight = (grad * x_hat).sum(dim=0).to(weight.dtype) if weight is not None else None  # (H,)
    return grad_input.to(input.dtype).contiguous(), grad_weight


def layer_norm_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """`(input - mean) * rstd * weight + bias` over the last dimension of `input` (N, H), biased variance.

    Returns `(output, mean, rstd)`: output (N, H) in the input dtype, mean and rstd (N,) float32.
    """
    x = input.float()  # (N, H)
    mean = x.mean(dim=-1)  # (N,)
    centered = x - mean.unsqueeze(1)  # (N, H)
    rstd = torch.rsqrt(centered.square().mean(dim=-1) + eps)  # (N,)
    output = centered * rstd.unsqueeze(1)  # (N, H)
    if weight is not None:
        output = output * weight.float()
    if bias is not None:
        output = output + bias.float()
    return output.to(input.dtype).contiguous(), mean, rstd


def layer_norm_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of LayerNorm for input (N, H), weight (H,) and bias (H,) (None where the parameter is None)."""
    x_hat = (input.float() - mean.unsqueeze(1)) * rstd.unsqueeze(1)  # (N, H)
    grad = grad_output.float()  # (N, H)
    weighted = grad * weight.float() if weight is not None else grad  # (N, H)
    grad_input = (
        weighted - weighted.mean(dim=-1, keepdim=True) - x_hat * (weighted * x_hat).mean(dim=-1, keepdim=True)  # (N, H)
    ) * rstd.unsqueeze(1)
    grad_weight = (grad * x_hat).sum(dim=0).to(weight.dtype) if weight is not None else None  # (H,)
    grad_bias = grad.sum(dim=0).to(bias.dtype) if bias is not None else None  # (H,)
    return grad_input.to(input.dtype).contiguous(), grad_weight, grad_bias


def swiglu_forward(gate: Tensor, up: Tensor) -> Tensor:
    """`silu(gate) * up`, elementwise; gate and up have the same shape."""
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(gate.dtype).contiguous()


def swiglu_backward(grad_output: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of `silu(gate) * up` for gate and up."""
    g = gate.float()
    grad = grad_output.float()
    sigmoid = torch.sigmoid(g)
    silu = g * sigmoid
    grad_gate = grad * up.float() * sigmoid * (1.0 + g * (1.0 - sigmoid))
    return grad_gate.to(gate.dtype).contiguous(), (grad * silu).to(up.dtype).contiguous()
