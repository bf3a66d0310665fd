"""The `kiln::` custom ops: one forward and one backward op per fused operator, with fake (meta) kernels and autograd.

Registering through `torch.library.custom_op` makes the ops opaque, shape-known nodes for torch.compile and
torch.export. Each op picks its implementation when it runs: the Triton kernel for a non-empty CUDA tensor when
Triton is installed, the pure-torch reference otherwise. Ops take inputs already flattened to rows; the public,
validating functions live in `kiln.kernels.functional`.

An absent optional output (the weight gradient of an RMSNorm without weight, gradients that were not asked for) is
an empty tensor, because custom ops cannot return None.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from kiln.kernels import _linear_cross_entropy, reference
from kiln.kernels._linear_cross_entropy import ChunkLoss
from kiln.kernels.reference import CrossEntropyTarget


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (the `kernels` extra)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(tensor: Tensor) -> bool:
    """Whether an op on `tensor` runs the Triton kernel: a non-empty CUDA tensor with Triton installed."""
    return tensor.is_cuda and tensor.numel() > 0 and triton_available()


# Row-wise Triton kernels hold one row in registers; wider rows take the reference path.
_MAX_TRITON_ROW = 65536


def _backend(op: str, tensor: Tensor) -> ModuleType:
    if use_triton(tensor) and (op not in ("rms_norm", "layer_norm") or tensor.shape[-1] <= _MAX_TRITON_ROW):
        return importlib.import_module(f"kiln.kernels.triton_{op}")
    return reference


def _or_empty(tensor: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if tensor is None else tensor


def _or_none(tensor: Tensor) -> Tensor | None:
    return tensor if tensor.numel() > 0 else None


# --- cross-entropy -----------------------------------------------------------------------------------------------


@torch.library.custom_op("kiln::cross_entropy", mutates_args=())
def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, label_smoothing: float) -> tuple[Tensor, Tensor]:
    """Per-row loss (N,) and logsumexp (N,), float32, of logits (N, V) against class indices (N,)."""
    targets = CrossEntropyTarget(target, ignore_index, label_smoothing)
    return _backend("cross_entropy", logits).cross_entropy_forward(logits, targets)


@cross_entropy.register_fake
def _(logits: Tensor, target: Tensor, ignore_index: int, label_smoothing: float) -> tuple[Tensor, Tensor]:
    rows = logits.new_empty(logits.shape[0], dtype=torch.float32)
    return rows, torch.empty_like(rows)


@torch.library.custom_op("kiln::cross_entropy_backward", mutates_args=())
def cross_entropy_backward(
    grad_loss: Tensor, logits: Tensor, target: Tensor, lse: Tensor, ignore_index: int, label_smoothing: float
) -> Tensor:
    """Gradient (N, V) of `sum(grad_loss * loss)` for the logits."""
    targets = CrossEntropyTarget(target, ignore_index, label_smoothing)
    return _backend("cross_entropy", logits).cross_entropy_backward(grad_loss, logits, targets, lse)


@cross_entropy_backward.register_fake
def _(
    grad_loss: Tensor, logits: Tensor, target: Tensor, lse: Tensor, ignore_index: int, label_smoothing: float
) -> Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _cross_entropy_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    logits, target, ctx.ignore_index, ctx.label_smoothing = inputs
    ctx.save_for_backward(logits, target, output[1])


def _cross_entropy_grad(ctx: Any, grad_loss: Tensor, grad_lse: Tensor) -> tuple[Tensor, None, None, None]:
    logits, target, lse = ctx.saved_tensors
    grad = cross_entropy_backward(grad_loss, logits, target, lse, ctx.ignore_index, ctx.label_smoothing)
    return grad, None, None, None


cross_entropy.register_autograd(_cross_entropy_grad, setup_context=_cross_entropy_setup)


# --- fused linear + cross-entropy --------------------------------------------------------------------------------


@torch.library.custom_op("kiln::fused_linear_cross_entropy", mutates_args=())
def fused_linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    chunk_size: int,
    compute_grad: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, lse, grad_input, grad_weight, grad_bias) of cross-entropy over `input @ weight.T + bias`, chunked."""
    chunk_loss = _chunk_loss(input, target, ignore_index, label_smoothing)
    loss, lse, grad_input, grad_weight, grad_bias = _linear_cross_entropy.forward(
        chunk_loss, input, weight, bias, reduction, chunk_size, compute_grad
    )
    return loss, lse, _or_empty(grad_input, input), _or_empty(grad_weight, weight), _or_empty(grad_bias, weight)


# These fakes take the op's inputs as torch passes them, positionally, and unpack them as the setup_context functions
# do: the long signature is written once, on the op.
@fused_linear_cross_entropy.register_fake
def _(*inputs: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    input, weight, _, bias, _, _, reduction, _, compute_grad = inputs
    lse = input.new_empty(input.shape[0], dtype=torch.float32)
    loss = torch.empty_like(lse) if reduction == "none" else lse.new_empty(())
    # The gradients are computed in the forward only for a reduced loss.
    flags = compute_grad if reduction != "none" else [False, False, False]
    return (loss, lse, *_empty_grads(input, weight, bias, flags))


@torch.library.custom_op("kiln::fused_linear_cross_entropy_backward", mutates_args=())
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
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, weight, bias) of `sum(grad_loss * loss_rows)`, recomputing the logits chunk by chunk."""
    chunk_loss = _chunk_loss(input, target, ignore_index, label_smoothing)
    grads = _linear_cross_entropy.backward(chunk_loss, grad_loss, input, weight, bias, lse, chunk_size, compute_grad)
    return _or_empty(grads[0], input), _or_empty(grads[1], weight), _or_empty(grads[2], weight)


@fused_linear_cross_entropy_backward.register_fake
def _(*inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
    _, input, weight, _, bias, _, _, _, _, compute_grad = inputs
    return _empty_grads(input, weight, bias, compute_grad)


def _chunk_loss(input: Tensor, target: Tensor, ignore_index: int, label_smoothing: float) -> ChunkLoss:
    """The per-chunk cross-entropy of the backend that runs on `input`'s device (reference or Triton kernels)."""
    backend = _backend("cross_entropy", input)
    targets = CrossEntropyTarget(target, ignore_index, label_smoothing)
    return ChunkLoss(backend.cross_entropy_forward, backend.cross_entropy_backward, targets)


def _empty_grads(
    input: Tensor, weight: Tensor, bias: Tensor | None, compute_grad: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """Fake gradients for (input, weight, bias): like the parameter where `compute_grad` asks, empty elsewhere."""
    grad_input = torch.empty_like(input) if compute_grad[0] else input.new_empty(0)
    grad_weight = torch.empty_like(weight) if compute_grad[1] else weight.new_empty(0)
    grad_bias = torch.empty_like(bias) if bias is not None and compute_grad[2] else weight.new_empty(0)
    return grad_input, grad_weight, grad_bias


def _linear_cross_entropy_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    input, weight, target, bias, ctx.ignore_index, ctx.label_smoothing, ctx.reduction, ctx.chunk_size, computed = inputs
    ctx.computed = [bool(flag) for flag in computed] if ctx.reduction != "none" else [False, False, False]
    ctx.has_bias = bias is not None
    _, lse, grad_input, grad_weight, grad_bias = output
    ctx.save_for_backward(input, weight, target, bias, lse, grad_input, grad_weight, grad_bias)


def _scale(grad: Tensor, grad_loss: Tensor) -> Tensor:
    if type(grad) is Tensor:
        # Eager: in place, since the weight gradient is as large as the weight. A second backward through the same
        # graph then fails torch's saved-tensor version check instead of silently scaling twice.
        return grad.mul_(grad_loss)
    # Traced by torch.compile / export (fake or functional tensors): stay functional.
    return grad * grad_loss


def _linear_cross_entropy_grad(ctx: Any, grad_loss: Tensor, *unused: Tensor) -> tuple[Tensor | None, ...]:
    input, weight, target, bias, lse, grad_input, grad_weight, grad_bias = ctx.saved_tensors
    needed = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[3]]
    if all(computed or not need for computed, need in zip(ctx.computed, needed, strict=True)):
        # Gradients were computed in the forward for an upstream gradient of 1: scale them.
        precomputed = (grad_input, grad_weight, grad_bias)
        grads = [_scale(grad, grad_loss) if need else None for grad, need in zip(precomputed, needed, strict=True)]
        return grads[0], grads[1], None, grads[2], None, None, None, None, None
    # Recompute: the per-row upstream gradient of a reduced loss is the scalar (divided by the count for a mean).
    rows = grad_loss.expand(input.shape[0])  # (N,)
    if ctx.reduction == "mean":
        rows = rows / (target != ctx.ignore_index).sum().clamp(min=1)
    grads = fused_linear_cross_entropy_backward(
        rows, input, weight, target, bias, lse, ctx.ignore_index, ctx.label_smoothing, ctx.chunk_size, needed
    )
    grad_input, grad_weight, grad_bias = (grad if need else None for grad, need in zip(grads, needed, strict=True))
    return grad_input, grad_weight, None, grad_bias, None, None, None, None, None


fused_linear_cross_entropy.register_autograd(_linear_cross_entropy_grad, setup_context=_linear_cross_entropy_setup)


# --- RMSNorm -----------------------------------------------------------------------------------------------------


@torch.library.custom_op("kiln::rms_norm", mutates_args=())
def rms_norm(input: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """(output (N, H), rstd (N,) float32) of RMSNorm over the last dimension of input (N, H)."""
    return _backend("rms_norm", input).rms_norm_forward(input, weight, eps)


@rms_norm.register_fake
def _(input: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    output = input.new_empty(input.shape)
    return output, input.new_empty(input.shape[0], dtype=torch.float32)


@torch.library.custom_op("kiln::rms_norm_backward", mutates_args=())
def rms_norm_backward(grad_output: Tensor, input: Tensor, weight: Tensor | None, rstd: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients (input, weight) of RMSNorm; the weight gradient is empty without a weight."""
    grad_input, grad_weight = _backend("rms_norm", input).rms_norm_backward(grad_output, input, weight, rstd)
    return grad_input, _or_empty(grad_weight, input)


@rms_norm_backward.register_fake
def _(grad_output: Tensor, input: Tensor, weight: Tensor | None, rstd: Tensor) -> tuple[Tensor, Tensor]:
    grad_weight = torch.empty_like(weight) if weight is not None else input.new_empty(0)
    return input.new_empty(input.shape), grad_weight


def _rms_norm_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    input, weight, _ = inputs
    ctx.save_for_backward(input, weight, output[1])


def _rms_norm_grad(ctx: Any, grad_output: Tensor, grad_rstd: Tensor) -> tuple[Tensor | None, ...]:
    input, weight, rstd = ctx.saved_tensors
    grad_input, grad_weight = rms_norm_backward(grad_output, input, weight, rstd)
    return grad_input, _or_none(grad_weight), None


rms_norm.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup)


# --- LayerNorm ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("kiln::layer_norm", mutates_args=())
def layer_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(output (N, H), mean (N,), rstd (N,)) of LayerNorm over the last dimension of input (N, H)."""
    return _backend("layer_norm", input).layer_norm_forward(input, weight, bias, eps)


@layer_norm.register_fake
def _(input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    stats = input.new_empty(input.shape[0], dtype=torch.float32)
    return input.new_empty(input.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("kiln::layer_norm_backward", mutates_args=())
def layer_norm_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, weight, bias) of LayerNorm; absent parameters get empty gradients."""
    grads = _backend("layer_norm", input).layer_norm_backward(grad_output, input, weight, bias, mean, rstd)
    return grads[0], _or_empty(grads[1], input), _or_empty(grads[2], input)


@layer_norm_backward.register_fake
def _(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    grad_weight = torch.empty_like(weight) if weight is not None else input.new_empty(0)
    grad_bias = torch.empty_like(bias) if bias is not None else input.new_empty(0)
    return input.new_empty(input.shape), grad_weight, grad_bias


def _layer_norm_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    input, weight, bias, _ = inputs
    ctx.save_for_backward(input, weight, bias, output[1], output[2])


def _layer_norm_grad(ctx: Any, grad_output: Tensor, *unused: Tensor) -> tuple[Tensor | None, ...]:
    input, weight, bias, mean, rstd = ctx.saved_tensors
    grad_input, grad_weight, grad_bias = layer_norm_backward(grad_output, input, weight, bias, mean, rstd)
    return grad_input, _or_none(grad_weight), _or_none(grad_bias), None


layer_norm.register_autograd(_layer_norm_grad, setup_context=_layer_norm_setup)


# --- SwiGLU ------------------------------------------------------------------------------------------------------


@torch.library.custom_op("kiln::swiglu", mutates_args=())
def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """`silu(gate) * up`, elementwise."""
    return _backend("swiglu", gate).swiglu_forward(gate, up)


@swiglu.register_fake
def _(gate: Tensor, up: Tensor) -> Tensor:
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("kiln::swiglu_backward", mutates_args=())
def swiglu_backward(grad_output: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients (gate, up) of `silu(gate) * up`."""
    return _backend("swiglu", gate).swiglu_backward(grad_output, gate, up)


@swiglu_backward.register_fake
def _(grad_output: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    return (
        torch.empty_like(gate, memory_format=torch.contiguous_format),
        torch.empty_like(up, memory_format=torch.contiguous_format),
    )


def _swiglu_setup(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _swiglu_grad(ctx: Any, grad_output: Tensor) -> tuple[Tensor, Tensor]:
    gate, up = ctx.saved_tensors
    return swiglu_backward(grad_output, gate, up)


swiglu.register_autograd(_swiglu_grad, setup_context=_swiglu_setup)
