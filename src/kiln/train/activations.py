"""The gradient doctor's activation side: forward hooks on the step of a look, forward order and dead ReLU units."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .findings import _CHANNELS_FIRST, Finding, _dead_relu_finding, _Layer, _Remedies

__all__ = ["ActivationWatch"]

_ForwardHook = Callable[[nn.Module, Any, Any], None]


class ActivationWatch:
    """Forward hooks that exist only on the step of a look, and what they saw: forward order and ReLU units that fired.

    The first look records the order in which the layers ran forward and which layer feeds each ReLU; every look
    records, per ReLU, the units that gave a non-zero output for some sample. :meth:`check_dead` turns that into
    streaks of looks on which a ReLU's units stayed dead. Owned by :class:`~kiln.train.doctor.GradientDoctor`, which
    installs the hooks before the forward pass of a look and removes them when it looks at the gradients, so that
    the hooks cost nothing on other steps and a deep copy of the module (EMA, SWA) never carries them.

    Example:
        >>> watch = ActivationWatch()
        >>> watch.attach(layers, [(relu, watch.relu_hook("1"))], enabled=True)   # layers: order_hook set on each
        >>> watch.install()   # before the forward pass of a look
        >>> watch.remove()    # after its backward pass
        >>> for name, finding in watch.check_dead(step, dead_fraction=0.5, patience=2, ...): ...
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the layers, the forward order and the dead-unit streaks: a fresh diagnosis."""
        self.enabled = False
        self._layers: list[_Layer] = []
        self._modules_by_name: dict[str, nn.Module] = {}
        self._relus: list[tuple[nn.Module, _ForwardHook]] = []
        self._handles: list[RemovableHandle] = []
        self._recording_order = False
        self._order: list[str] = []  # layer names in the order of the forward pass
        self._feeder: dict[str, str] = {}  # ReLU name -> the layer that ran just before it
        self._alive: dict[str, torch.Tensor] = {}  # ReLU name -> (units,) bool: fired on some sample
        self._fired: dict[str, torch.Tensor] = {}  # ReLU name -> units that fired on some look of the current streak
        self._dead_streak: dict[str, int] = {}
        self._dead_since: dict[str, int] = {}

    def attach(self, layers: list[_Layer], relus: list[tuple[nn.Module, _ForwardHook]], *, enabled: bool) -> None:
        """Watch ``layers`` (``order_hook`` set on each) and ``relus`` as (module, hook); hooks only if ``enabled``."""
        self._layers, self._relus, self.enabled = layers, relus, enabled
        self._modules_by_name = {layer.name: layer.module for layer in layers}

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> None:
        self._alive = {}
        if not self._order:  # the forward order (and which layer feeds each ReLU) is recorded on the first look
            self._recording_order = True
            for layer in self._layers:
                self._handles.append(layer.module.register_forward_hook(layer.order_hook))
        for module, hook in self._relus:
            self._handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._recording_order = False

    def order_hook(self, name: str) -> _ForwardHook:
        """The forward hook of layer ``name``: records the forward order on the first look."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if module.training and name not in self._order:
                self._order.append(name)

        return hook

    def relu_hook(self, name: str) -> _ForwardHook:
        """The forward hook of ReLU ``name``: records which of its units fired on some sample."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not module.training or not isinstance(output, torch.Tensor) or output.ndim < 2:
                return
            if self._recording_order and name not in self._feeder:
                self._feeder[name] = self._order[-1] if self._order else ""
            ndim = output.ndim
            if ndim == 2:
                dims: tuple[int, ...] = (0,)  # (B, F)
            elif ndim >= 4 or isinstance(self._modules_by_name.get(self._feeder.get(name, "")), _CHANNELS_FIRST):
                dims = (0, *range(2, ndim))  # (B, C, ...): a unit is a channel
            else:
                dims = tuple(range(ndim - 1))  # (B, T, F)
            alive = output.detach().any(dim=dims)  # (units,) a unit fired on some sample (ReLU output is >= 0)
            previous = self._alive.get(name)  # gradient accumulation: several forward passes make one step
            self._alive[name] = alive if previous is None else previous | alive

        return hook

    def forward_ranks(self) -> dict[str, float]:
        """Position of each layer in the forward pass of the last look.

        A layer whose own forward was not called (MultiheadAttention.out_proj) takes its parent's position; one never
        seen at all (activations off, or graph mode) goes after them in registration order.
        """
        order = {name: float(position) for position, name in enumerate(self._order)}
        ranks: dict[str, float] = {}
        for index, layer in enumerate(self._layers):
            parts = layer.name.split(".")
            while ".".join(parts) not in order and len(parts) > 1:
                parts.pop()
            ranks[layer.name] = order.get(".".join(parts), len(order) + index)
        return ranks

    def check_dead(
        self,
        step: int,
        *,
        dead_fraction: float,
        patience: int,
        first_look: int | None,
        remedies: Callable[[], _Remedies],
    ) -> list[tuple[str, Finding]]:
        """The ReLUs whose units stayed dead on ``patience`` looks in a row, as (ReLU name, finding), in hook order.

        Takes what the hooks recorded on this look. ``remedies`` is called only when there is a finding to write.
        """
        alive, self._alive = self._alive, {}
        found: list[tuple[str, Finding]] = []
        if not alive:
            return found
        fired = torch.cat(list(alive.values())).tolist()  # one transfer and plain Python: a look runs on cold caches
        start = 0
        for name, mask in alive.items():
            size = mask.numel()
            count, start = size - sum(fired[start : start + size]), start + size
            threshold = dead_fraction * size
            union = self._fired.get(name)
            if count >= threshold and self._dead_streak.get(name, 0) >= 1 and union is not None:
                union = union | mask  # a unit is dead when it fired on none of the looks of the streak
                dead = size - int(union.sum())
                if dead >= threshold:
                    self._fired[name], self._dead_streak[name] = union, self._dead_streak[name] + 1
                    if self._dead_streak[name] >= patience:
                        found.append((name, self._dead_finding(step, name, dead, size, first_look, remedies())))
                    continue
            self._fired[name], self._dead_streak[name] = mask, int(count >= threshold)
            self._dead_since[name] = step
        return found

    def _dead_finding(
        self, step: int, name: str, dead: int, size: int, first_look: int | None, remedies: _Remedies
    ) -> Finding:
        feeder = next((layer for layer in self._layers if layer.name == self._feeder.get(name)), None)
        since, streak = self._dead_since.get(name), self._dead_streak[name]
        return _dead_relu_finding(step, name, dead, size, streak, feeder, since, first_look, remedies)
