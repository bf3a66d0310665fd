"""The update/weight ratio of one optimizer step, per layer: a copy of the weights before it, compared after it."""

from __future__ import annotations

import math

import torch

__all__ = ["UpdateMeter"]

# Weight copies are kept between measurements up to this size: allocating them anew costs a small model more than the
# copy itself (fresh pages), while a large model should not hold a second copy of itself.
_KEEP_COPY_BYTES = 64 * 2**20


class UpdateMeter:
    """Measures ``|w_after - w_before| / |w_before|`` per layer for the step that follows :meth:`start`.

    Example:
        >>> meter.start(weights, owners, step=50)      # gradients ready, before optimizer.step()
        >>> optimizer.step()
        >>> meter.finish(weight_norms)                  # {layer index: update/weight ratio}
    """

    def __init__(self) -> None:
        self.step = -1  # the step being measured
        self._copy: list[torch.Tensor] | None = None
        self._params: list[torch.Tensor] = []
        self._owners: list[int] = []
        self._spare: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # (parameters, buffers) to reuse

    @property
    def pending(self) -> bool:
        """True between :meth:`start` and :meth:`finish`."""
        return self._copy is not None

    def start(self, weights: list[torch.Tensor], owners: list[int], step: int) -> None:
        """Copy ``weights`` (``owners[i]`` is the layer index of ``weights[i]``) before step ``step`` changes them."""
        spare, self._spare = self._spare, None
        with torch.no_grad():
            if spare is not None and spare[0] is weights:  # the same parameter list as last time: its buffers fit
                torch._foreach_copy_(spare[1], weights)
                self._copy = spare[1]
            else:
                self._copy = list(torch._foreach_mul(weights, 1.0))
        self._params, self._owners, self.step = weights, owners, step

    def finish(self, weight_norms: dict[int, float]) -> dict[int, float]:
        """After the step: the update norm of each layer over its weight norm before it (layers of norm 0 left out)."""
        copy, self._copy = self._copy, None
        assert copy is not None, "finish() without start()"
        with torch.no_grad():
            torch._foreach_sub_(copy, self._params)  # (old - new): the update, negated, in place
            norms = torch.stack(torch._foreach_norm(copy)).tolist()  # one transfer for all of them
        update_sq: dict[int, float] = {}
        for owner, norm in zip(self._owners, norms, strict=True):
            update_sq[owner] = update_sq.get(owner, 0.0) + norm**2
        if sum(t.numel() * t.element_size() for t in copy) <= _KEEP_COPY_BYTES:
            self._spare = (self._params, copy)  # the next start copies into these: no new allocation
        self._params = []
        return {
            owner: math.sqrt(value) / weight_norms[owner]
            for owner, value in update_sq.items()
            if weight_norms.get(owner, 0.0) > 0
        }

    def clear(self) -> None:
        """Drop the copy and the kept buffers (at the end of a fit)."""
        self._copy, self._spare, self._params = None, None, []
