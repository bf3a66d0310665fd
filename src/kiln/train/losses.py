"""Loss resolution and the shape checks that turn a cryptic broadcasting bug into a clear error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError

__all__ = ["LOSSES", "Loss", "resolve_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: dict[str, LossFn] = {
    "cross_entropy": F.cross_entropy,
    "binary_cross_entropy": F.binary_cross_entropy_with_logits,
    "nll": F.nll_loss,
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "l1": F.l1_loss,
    "huber": F.huber_loss,
    "smooth_l1": F.smooth_l1_loss,
    "kl_div": F.kl_div,
}
_CLASS_INDEX_LOSSES = {"cross_entropy", "nll"}


class Loss:
    """A loss function plus the first-batch check of output/target shapes and dtypes.

    The first call validates shapes and decides whether a layout adaptation is needed (sequence outputs
    ``(B, T, C)`` with targets ``(B, T)`` are flattened for cross-entropy; ``(B, 1)`` outputs meet ``(B,)``
    targets); later calls go straight to the loss function.
    """

    def __init__(self, fn: LossFn, name: str) -> None:
        self.fn, self.name = fn, name
        self.class_index = name in _CLASS_INDEX_LOSSES
        self._adapt: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
        self._checked = False

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self._checked:
            return self._first_call(output, target)
        if self._adapt is not None:
            output, target = self._adapt(output, target)
        return self.fn(output, target)

    def _first_call(self, output: Any, target: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise ShapeError(f"the model returned {type(output).__name__}; loss {self.name!r} needs a tensor. "
                             "Return a single tensor from forward, or pass a loss function that takes your output.")
        if target is None:
            raise ShapeError(f"loss {self.name!r} needs targets, but the batch has none: give the dataset a y.")
        self._adapt = self._plan(output, target)
        adapted = self._adapt(output, target) if self._adapt is not None else (output, target)
        try:
            value = self.fn(*adapted)
        except (RuntimeError, ValueError, IndexError) as error:
            raise ShapeError(f"loss {self.name!r} failed on model output of shape {tuple(output.shape)} "
                             f"({output.dtype}) and targets of shape {tuple(target.shape)} ({target.dtype}): {error}"
                             ) from error
        if value.ndim != 0:
            raise ShapeError(f"loss {self.name!r} returned shape {tuple(value.shape)}; it must return a scalar "
                             "(use reduction='mean').")
        self._checked = True
        return value

    def _plan(self, output: torch.Tensor, target: torch.Tensor) -> Any:
        out_shape, tgt_shape = tuple(output.shape), tuple(target.shape)
        if self.class_index and not target.is_floating_point():
            if output.ndim == 2 and tgt_shape == out_shape[:1]:
                return None
            if output.ndim >= 3 and tgt_shape == out_shape[:-1]:
                # (B, T, C) logits with (B, T) labels: classes are last, torch wants them second.
                return lambda o, t: (o.reshape(-1, o.shape[-1]), t.reshape(-1))
            if output.ndim >= 3 and tgt_shape == out_shape[:1] + out_shape[2:]:
                return None
            raise ShapeError(f"loss {self.name!r}: model output {out_shape} does not match class-index targets "
                             f"{tgt_shape}; expected output (B, C) for targets (B,), or (B, T, C) for (B, T).")
        if self.class_index and target.is_floating_point() and tgt_shape != out_shape:
            raise ShapeError(f"loss {self.name!r}: targets are {target.dtype} with shape {tgt_shape} but the output "
                             f"is {out_shape}. Class labels must be integers (int64): use y.long(); "
                             "class probabilities must have the output's shape.")
        if tgt_shape == out_shape:
            return None
        if out_shape == (*tgt_shape, 1):
            return lambda o, t: (o.squeeze(-1), t)
        if tgt_shape == (*out_shape, 1):
            return lambda o, t: (o, t.squeeze(-1))
        raise ShapeError(f"loss {self.name!r}: model output shape {out_shape} and target shape {tgt_shape} differ; "
                         "they must match (broadcasting them would silently compute the wrong loss).")


def resolve_loss(loss: Any) -> Loss | Callable[..., torch.Tensor]:
    """A loss name (see LOSSES), a torch loss module, or any callable(output, target) -> scalar tensor."""
    if isinstance(loss, str):
        fn = LOSSES.get(loss)
        if fn is None:
            raise ConfigError(f"unknown loss {loss!r}; valid names: {sorted(LOSSES)}, or pass a torch loss module "
                              "or a function (output, target) -> scalar tensor.")
        return Loss(fn, loss)
    if isinstance(loss, torch.nn.Module) or callable(loss):
        return Loss(loss, type(loss).__name__ if isinstance(loss, torch.nn.Module) else getattr(loss, "__name__",
                                                                                               "loss"))
    raise ConfigError(f"loss must be a name {sorted(LOSSES)}, a torch loss module or a callable; got {loss!r}.")
