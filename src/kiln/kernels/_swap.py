"""Swapping torch modules and losses for the fused versions, where that is faster."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.errors import ConfigError
from kiln.kernels import _ops
from kiln.kernels.modules import CrossEntropyLoss, LayerNorm, RMSNorm

__all__ = ["apply", "backend", "fused_loss"]

logger = logging.getLogger(__name__)

# Exact torch classes and the fused subclass that replaces each. Subclasses of these are left alone: they may
# override forward.
_FUSED: dict[type[nn.Module], type[nn.Module]] = {
    nn.LayerNorm: LayerNorm,
    nn.RMSNorm: RMSNorm,
    nn.CrossEntropyLoss: CrossEntropyLoss,
}

LossFunction = Callable[[Tensor, Tensor], Tensor]


def backend(device: torch.device | str) -> str:
    """Which implementation the fused ops run on `device`: "triton" (CUDA with Triton installed) or "reference".

    Example:
        >>> kiln.kernels.backend("cpu")
        'reference'
    """
    device = torch.device(device)
    return "triton" if device.type == "cuda" and _ops.triton_available() else "reference"


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _swappable(module: nn.Module) -> bool:
    if type(module) not in _FUSED:
        return False
    # Class weights are not supported by the fused loss.
    return not (isinstance(module, nn.CrossEntropyLoss) and module.weight is not None)


def apply(module: nn.Module, *, device: torch.device | str | None = None, force: bool = False) -> nn.Module:
    """Swap `nn.LayerNorm`, `nn.RMSNorm` and `nn.CrossEntropyLoss` inside `module` for kiln's fused versions.

    Swaps only where they are faster: when `device` (default: where the module's parameters are) is CUDA and Triton
    is installed. On CPU the module is returned unchanged unless `force=True`. Each swapped module changes class in
    place to its fused subclass, which adds no state: parameters, buffers, hooks, state_dict keys and any optimizer
    holding the parameters are untouched, and outputs agree with torch within floating-point tolerance. Exact torch
    classes only: subclasses (which may override forward) and weighted cross-entropy are left alone.

    Example:
        >>> model = kiln.kernels.apply(model)  # on CUDA: fused norms; on CPU: unchanged
    """
    target = _module_device(module) if device is None else torch.device(device)
    if not force and backend(target) != "triton":
        logger.debug("kiln.kernels.apply: %s runs the reference ops; leaving the module unchanged", target)
        return module
    swapped = 0
    for submodule in module.modules():
        if _swappable(submodule):
            submodule.__class__ = _FUSED[type(submodule)]
            swapped += 1
    logger.info("kiln.kernels.apply: swapped %d module(s) for fused kernels on %s", swapped, target)
    return module


def fused_loss(
    loss: str | LossFunction | nn.Module, device: torch.device | str, *, force: bool = False
) -> LossFunction | None:
    """A fused replacement for `loss` on `device`, or None when there is none or it would not be faster.

    Recognises "cross_entropy", `torch.nn.functional.cross_entropy` and an unweighted `nn.CrossEntropyLoss`
    (keeping its ignore_index, label_smoothing and reduction). The replacement takes `(input, target)` like torch's,
    returns a float32 loss and falls back to torch for class-probability targets. None on CPU unless `force=True`.

    Example:
        >>> loss_fn = kiln.kernels.fused_loss("cross_entropy", "cuda") or torch.nn.CrossEntropyLoss()
    """
    if not force and backend(device) != "triton":
        return None
    if isinstance(loss, str):
        if loss != "cross_entropy":
            return None
        return CrossEntropyLoss()
    if loss is F.cross_entropy:
        return CrossEntropyLoss()
    if type(loss) is nn.CrossEntropyLoss and _swappable(loss):
        return CrossEntropyLoss(
            ignore_index=loss.ignore_index, reduction=loss.reduction, label_smoothing=loss.label_smoothing
        )
    if isinstance(loss, CrossEntropyLoss):
        return loss
    if not callable(loss):
        raise ConfigError(f"fused_loss: loss must be a name, a function or a module; got {type(loss).__name__}")
    return None
