"""Public functional ops: validate, flatten to rows, call the `kiln::` custom op, restore the shape.

Each function mirrors its torch counterpart (`F.cross_entropy`, `F.layer_norm`, `F.rms_norm`) where one exists and
runs the Triton kernel on CUDA (with Triton installed) or the pure-torch reference elsewhere. Losses are returned in
float32 whatever the logits dtype: they are accumulated in float32 and that is what autocast gives for torch's loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from kiln.errors import ConfigError, ShapeError
from kiln.kernels import _ops

__all__ = ["cross_entropy", "fused_linear_cross_entropy", "layer_norm", "rms_norm", "swiglu"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_loss_options(reduction: str, label_smoothing: float) -> None:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction={reduction!r} is not supported; use one of {', '.join(map(repr, _REDUCTIONS))}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ConfigError(f"label_smoothing={label_smoothing} is out of range; use a value in [0.0, 1.0]")


def _check_target(target: Tensor, expected_shape: torch.Size, name: str) -> None:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ConfigError(
            f"{name} takes class-index targets (an integer tensor); got target of dtype {target.dtype}. "
            "For class-probability targets use torch.nn.functional.cross_entropy."
        )
    if target.shape != expected_shape:
        raise ShapeError(f"{name}: target has shape {tuple(target.shape)}; expected {tuple(expected_shape)}")


def _reduce(loss_rows: Tensor, target: Tensor, ignore_index: int, reduction: str) -> Tensor:
    if reduction == "none":
        return loss_rows.reshape(target.shape)
    if reduction == "sum":
        return loss_rows.sum()
    # Mean over the rows that count; 0 / 0 gives NaN when every row is ignored, as torch does.
    return loss_rows.sum() / (target != ignore_index).sum()


def cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy with class-index targets, as `torch.nn.functional.cross_entropy` without `weight`.

    `input` is (N, C) or (N, C, d1, ...) with the classes in dimension 1 (or (C,) for one sample); `target` holds
    class indices of shape (N,) or (N, d1, ...). The loss is float32.

    Example:
        >>> logits = torch.randn(8, 32000, requires_grad=True)
        >>> loss = cross_entropy(logits, torch.randint(0, 32000, (8,)), label_smoothing=0.1)
        >>> loss.backward()
    """
    _check_loss_options(reduction, label_smoothing)
    if input.dim() == 0 or not input.is_floating_point():
        raise ShapeError(
            f"cross_entropy: input must be floating point with a class dimension; got {input.dtype} "
            f"of shape {tuple(input.shape)}"
        )
    if input.dim() == 1:
        input, target_rows = input.unsqueeze(0), target.reshape(1)  # (1, C), (1,)
        _check_target(target, torch.Size([]), "cross_entropy")
    else:
        _check_target(target, input.shape[:1] + input.shape[2:], "cross_entropy")
        target_rows = target.reshape(-1)  # (N * d1 * ...,)
        if input.dim() > 2:
            input = input.movedim(1, -1)  # (N, d1, ..., C)
    logits = input.reshape(-1, input.shape[-1])  # (rows, C)
    loss_rows, _ = _ops.cross_entropy(logits, target_rows, ignore_index, float(label_smoothing))
    return _reduce(loss_rows, target, ignore_index, reduction)


def fused_linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """`cross_entropy(input @ weight.T + bias, target)` without materialising the (N, V) logits.

    `input` is (..., H) hidden states, `weight` the (V, H) output projection (an `nn.Linear(H, V).weight`), `target`
    (...) class indices. Rows are processed `chunk_size` at a time (default: chunks whose logits are about as large
    as `input`, at least 256 rows). For "mean" and "sum" the gradients are computed during the forward, so peak
    memory is one chunk of logits plus the gradients. Under autocast the matmuls run in the autocast dtype, as
    `nn.Linear` would.

    Example:
        >>> hidden = torch.randn(4, 128, 512, requires_grad=True)  # (B, T, H)
        >>> lm_head = torch.nn.Linear(512, 32000, bias=False)
        >>> loss = fused_linear_cross_entropy(hidden, lm_head.weight, torch.randint(0, 32000, (4, 128)))
        >>> loss.backward()
    """
    _check_loss_options(reduction, label_smoothing)
    if weight.dim() != 2 or input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ShapeError(
            f"fused_linear_cross_entropy: input (..., H) and weight (V, H) must share H; got input "
            f"{tuple(input.shape)} and weight {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ShapeError(
            f"fused_linear_cross_entropy: bias has shape {tuple(bias.shape)}; expected ({weight.shape[0]},)"
        )
    _check_target(target, input.shape[:-1], "fused_linear_cross_entropy")
    if torch.is_autocast_enabled(input.device.type):
        dtype = torch.get_autocast_dtype(input.device.type)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if input.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ConfigError(
            f"fused_linear_cross_entropy: input, weight and bias need one dtype; got {input.dtype}, {weight.dtype}"
            f"{'' if bias is None else ', ' + str(bias.dtype)}. Cast them, or run under torch.autocast."
        )
    rows = input.reshape(-1, input.shape[-1])  # (N, H)
    if chunk_size is None:
        chunk_size = _default_chunk_size(rows.shape[0], weight.shape[1], weight.shape[0])
    elif chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size} must be a positive number of rows (or None for automatic)")
    grad_enabled = torch.is_grad_enabled()
    compute_grad = [
        grad_enabled and input.requires_grad,
        grad_enabled and weight.requires_grad,
        grad_enabled and bias is not None and bias.requires_grad,
    ]
    loss = _ops.fused_linear_cross_entropy(
        rows,
        weight,
        target.reshape(-1),
        bias,
        ignore_index,
        float(label_smoothing),
        reduction,
        chunk_size,
        compute_grad,
    )[0]
    return loss.reshape(target.shape) if reduction == "none" else loss


# Fewer rows than this make the per-chunk matmuls too thin to run near peak (K = rows in the weight gradient).
_MIN_CHUNK_ROWS = 256


def _default_chunk_size(n_rows: int, hidden: int, vocab: int) -> int:
    """Rows per chunk: a power of two whose (C, V) logits hold about as many elements as the (N, H) input, at least
    `_MIN_CHUNK_ROWS` (a few MiB of logits at most), at most N."""
    chunks = max(1, math.ceil(vocab / max(1, hidden)))
    rows = 1 << max(0, math.ceil(n_rows / chunks) - 1).bit_length()
    return max(1, min(n_rows, max(rows, _MIN_CHUNK_ROWS)))


def _check_normalized_shape(name: str, input: Tensor, normalized_shape: Sequence[int] | int) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or tuple(input.shape[-len(shape) :]) != shape:
        raise ShapeError(
            f"{name}: normalized_shape {shape} must equal the trailing dimensions of input {tuple(input.shape)}"
        )
    return shape


def _check_parameter(name: str, parameter: Tensor | None, label: str, shape: tuple[int, ...]) -> Tensor | None:
    if parameter is None:
        return None
    if tuple(parameter.shape) != shape:
        raise ShapeError(f"{name}: {label} has shape {tuple(parameter.shape)}; expected normalized_shape {shape}")
    return parameter.reshape(-1)  # (H,)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int] | int,
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """Root-mean-square normalisation over the trailing `normalized_shape`, as `torch.nn.functional.rms_norm`.

    `eps=None` uses `torch.finfo(input.dtype).eps`, like torch. The output has the input's dtype.

    Example:
        >>> x = torch.randn(4, 128, 512)  # (B, T, H)
        >>> y = rms_norm(x, (512,), torch.ones(512))
    """
    shape = _check_normalized_shape("rms_norm", input, normalized_shape)
    flat_weight = _check_parameter("rms_norm", weight, "weight", shape)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    rows = input.reshape(-1, math.prod(shape))  # (N, H)
    output, _ = _ops.rms_norm(rows, flat_weight, float(eps))
    return output.reshape(input.shape)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int] | int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalisation over the trailing `normalized_shape`, as `torch.nn.functional.layer_norm`.

    Example:
        >>> x = torch.randn(4, 128, 512)  # (B, T, H)
        >>> y = layer_norm(x, (512,), torch.ones(512), torch.zeros(512))
    """
    shape = _check_normalized_shape("layer_norm", input, normalized_shape)
    flat_weight = _check_parameter("layer_norm", weight, "weight", shape)
    flat_bias = _check_parameter("layer_norm", bias, "bias", shape)
    rows = input.reshape(-1, math.prod(shape))  # (N, H)
    output, _, _ = _ops.layer_norm(rows, flat_weight, flat_bias, float(eps))
    return output.reshape(input.shape)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """`silu(gate) * up` in one pass: the gated activation of a SwiGLU feed-forward block.

    Example:
        >>> gate, up = torch.randn(4, 128, 1376), torch.randn(4, 128, 1376)
        >>> hidden = swiglu(gate, up)  # (4, 128, 1376)
    """
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ShapeError(
            f"swiglu: gate and up need the same shape and dtype; got {tuple(gate.shape)} {gate.dtype} and "
            f"{tuple(up.shape)} {up.dtype}"
        )
    return _ops.swiglu(gate, up)
