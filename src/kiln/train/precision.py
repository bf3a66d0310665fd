"""Numeric precision as one small object: autocast context, loss scaling and its state."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["PRECISIONS", "Precision"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"32": "fp32", "float32": "fp32", "bf16-mixed": "bf16", "bfloat16": "bf16", "16": "fp16",
            "16-mixed": "fp16", "float16": "fp16"}


class Precision:
    """Autocast and (for fp16) dynamic loss scaling on one device.

    Example:
        >>> precision = Precision("bf16", torch.device("cpu"))
        >>> with precision.autocast():
        ...     loss = loss_fn(module(x), y)
    """

    def __init__(self, name: str, device: torch.device, *, autocast: bool = True) -> None:
        key = _ALIASES.get(str(name), str(name))
        if key not in PRECISIONS:
            raise ConfigError(f"precision {name!r} is not supported; use one of {sorted(PRECISIONS)}.")
        self.name = key
        self.device = device
        self.dtype = PRECISIONS[key]
        # FSDP2 casts parameters itself (its MixedPrecisionPolicy), so autocast is off under it.
        self.use_autocast = autocast and self.dtype is not None
        self.scaler: torch.amp.GradScaler | None = None
        if key == "fp16":
            self.scaler = torch.amp.GradScaler(device.type)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.use_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping or inspecting them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, *, update: bool = True) -> None:
        """Optimizer step; with loss scaling, skipped when gradients overflowed.

        ``update=False`` leaves the scale as it is: a step with several optimizers steps each of them, then calls
        :meth:`update` once, so that one overflow halves the scale once.
        """
        if self.scaler is not None:
            self.scaler.step(optimizer)
            if update:
                self.scaler.update()
        else:
            optimizer.step()

    def update(self) -> None:
        """Adjust the loss scale after the optimizer steps of one batch (see :meth:`step`)."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
