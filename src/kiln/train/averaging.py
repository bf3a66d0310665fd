"""Model averaging: an exponential moving average (EMA) and stochastic weight averaging (SWA) of the weights.

Both keep an averaged copy of the module and set ``model.averaged`` to it, so that ``evaluate``, ``predict``,
export and the validation inside ``fit`` run the averaged weights (through ``model.inference_module``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..distributed import all_reduce_sum, is_distributed, is_rank_zero, world_size
from ..errors import ConfigError
from .callbacks import Callback

if TYPE_CHECKING:
    from .state import TrainState

__all__ = ["EMA", "SWA", "recompute_batchnorm"]

logger = logging.getLogger(__name__)


def _averaged_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` that holds the averaged weights."""
    averaged = copy.deepcopy(module)
    for param in averaged.parameters():
        param.requires_grad_(False)
        param.grad = None
    return averaged


def _floating(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.is_floating_point() or p.is_complex()]


class _Averager(Callback):
    """The averaged copy, the pairs of (averaged, live) tensors and the state both averaging callbacks share."""

    def __init__(self) -> None:
        self.module: nn.Module | None = None
        self.num_updates = 0
        self._source: nn.Module | None = None
        self._pending: dict[str, Any] | None = None
        self._averaged_params: list[torch.Tensor] = []
        self._live_params: list[torch.Tensor] = []
        self._averaged_buffers: list[torch.Tensor] = []
        self._live_buffers: list[torch.Tensor] = []

    def _attach(self, model: TrainState) -> nn.Module:
        # The copy is made once per module and kept across fit calls, so fitting again continues the average.
        if self.module is None or self._source is not model.module:
            self.module, self._source, self.num_updates = _averaged_copy(model.module), model.module, 0
        if self._pending is not None:
            self.module.load_state_dict(self._pending["module"])
            self.num_updates, self._pending = int(self._pending["num_updates"]), None
        self._averaged_params = _floating(self.module)
        self._live_params = _floating(model.module)
        self._averaged_buffers, self._live_buffers = list(self.module.buffers()), list(model.module.buffers())
        return self.module

    def _copy_buffers(self) -> None:
        # Buffers (BatchNorm running statistics) are not averaged; the live model's are the best estimate during fit.
        if self._averaged_buffers:
            torch._foreach_copy_(self._averaged_buffers, self._live_buffers)

    def state_dict(self) -> dict[str, Any]:
        if self.module is None:
            return dict(self._pending) if self._pending is not None else {"num_updates": 0}
        return {
            "num_updates": self.num_updates,
            "module": {name: tensor.detach() for name, tensor in self.module.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the average; before fit starts (resume) it is applied when the copy is made."""
        if "module" not in state:
            self.num_updates = int(state.get("num_updates", 0))
            return
        if self.module is not None:
            self.module.load_state_dict(state["module"])
            self.num_updates = int(state["num_updates"])
        else:
            self._pending = dict(state)


class EMA(_Averager):
    """Exponential moving average of the weights, updated after every optimizer step.

    After each step, ``averaged = d * averaged + (1 - d) * weights`` with ``d = min(decay, (1 + n) / (10 + n))``
    for the n-th update when ``warmup`` is on (so early averages are not dominated by the random initial weights),
    or ``d = decay`` without it. Buffers such as BatchNorm statistics are copied from the live model. ``every``
    updates only every that many optimizer steps (the decay then applies per update). The update is one fused
    ``torch._foreach_lerp_`` over all parameters.

    On fit start the averaged copy is made (or continued, when fitting the same module again) and set as
    ``model.averaged``: validation during fit, ``evaluate``, ``predict`` and export use it. ``ema.module`` is the
    averaged ``nn.Module``.

    Example:
        >>> ema = EMA(decay=0.999)
        >>> model.fit(train, epochs=10, validation=val, callbacks=[ema])   # val_* metrics are the EMA's
        >>> model.predict(x_test)                                           # runs ema.module
    """

    def __init__(self, decay: float = 0.999, *, warmup: bool = True, every: int = 1) -> None:
        super().__init__()
        if not 0 < decay < 1:
            raise ConfigError(f"EMA decay must be in (0, 1), e.g. 0.999; got {decay!r}.")
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"EMA every must be a positive int (optimizer steps), got {every!r}.")
        self.decay, self.warmup, self.every = decay, warmup, every
        self._last_step = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def on_fit_start(self, model: TrainState) -> None:
        model.averaged = self._attach(model)
        self._last_step = model.global_step

    def on_train_batch_end(self, model: TrainState, step: int, loss: torch.Tensor) -> None:
        if step == self._last_step:  # gradient accumulation: no optimizer step since the last batch
            return
        self._last_step = step
        if step % self.every == 0:
            self.update()

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live weights into the average once (the loop calls this after optimizer steps)."""
        torch._foreach_lerp_(self._averaged_params, self._live_params, 1.0 - self.current_decay())
        self._copy_buffers()
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decay": self.decay}


class SWA(_Averager):
    """Stochastic weight averaging: the equal-weight average of the weights along the end of training.

    Averaging starts at epoch ``start`` (an int), or after that fraction of the epochs (a float in (0, 1)); from
    then on the weights are added to the running average at the end of every epoch, or every ``every_steps``
    optimizer steps. With ``swa_lr`` the learning rate is annealed (cosine, over ``anneal_steps`` optimizer steps,
    one epoch by default) from its value at the start of averaging to ``swa_lr`` and held there, overriding any
    schedule. At the end of fit the BatchNorm statistics of the averaged weights are recomputed with one pass over
    ``bn_data`` (any data ``fit`` accepts; batches of ``bn_batch_size``, default fit's batch size), or, when that is
    None, over ``model.train_loader`` if the Model exposes its training loader.

    ``model.averaged`` is set once the first average exists, so validation before that runs the live weights;
    during fit the averaged copy uses the live model's BatchNorm statistics until they are recomputed.

    Example:
        >>> swa = SWA(start=0.75, swa_lr=0.01, bn_data=train)
        >>> model.fit(train, epochs=40, optimizer="sgd", callbacks=[swa])
        >>> model.evaluate(test)                    # the SWA weights with their own BatchNorm statistics
    """

    def __init__(
        self,
        *,
        start: int | float = 0.75,
        swa_lr: float | None = None,
        anneal_steps: int | None = None,
        every_steps: int | None = None,
        bn_data: Any = None,
        bn_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(start, bool) or not (
            (isinstance(start, int) and start >= 0) or (isinstance(start, float) and 0 <= start < 1)
        ):
            raise ConfigError(
                f"SWA start must be an epoch (int >= 0) or a fraction of the epochs in [0, 1); got {start!r}."
            )
        if swa_lr is not None and not swa_lr > 0:
            raise ConfigError(f"SWA swa_lr must be a positive learning rate or None, got {swa_lr!r}.")
        for name, value in (("anneal_steps", anneal_steps), ("every_steps", every_steps)):
            if value is not None and (not isinstance(value, int) or value < (0 if name == "anneal_steps" else 1)):
                raise ConfigError(
                    f"SWA {name} must be a {'non-negative' if name == 'anneal_steps' else 'positive'} "
                    f"int or None, got {value!r}."
                )
        self.start, self.swa_lr, self.anneal_steps, self.every_steps = start, swa_lr, anneal_steps, every_steps
        self.bn_data, self.bn_batch_size = bn_data, bn_batch_size
        self.start_epoch = 0
        self._anneal_from: list[float] | None = None
        self._anneal_start = 0
        self._anneal_length = 0
        self._last_step = 0

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, model: TrainState) -> None:
        # Copy now, before any callback adds forward hooks for the first step (the gradient doctor does).
        self._attach(model)
        epochs = int(model.fit_config.get("epochs", 1))
        self.start_epoch = self.start if isinstance(self.start, int) else int(self.start * epochs)
        accumulate = int(model.fit_config.get("accumulate", 1))
        per_epoch = max(-(-model.steps_per_epoch // accumulate), 1)
        self._anneal_length = per_epoch if self.anneal_steps is None else self.anneal_steps
        self._last_step = model.global_step
        if self.num_updates:  # resumed or fitting again: the average already exists
            model.averaged = self.module
        if self.start_epoch >= epochs:
            logger.warning(
                "SWA starts at epoch %d but fit runs %d epochs: nothing will be averaged.", self.start_epoch, epochs
            )

    def on_epoch_start(self, model: TrainState, epoch: int) -> None:
        if epoch < self.start_epoch:
            return
        if self._anneal_from is None:
            self._anneal_from = [float(group["lr"]) for group in model.optimizer.param_groups]
            self._anneal_start = model.global_step
        self._set_lr(model)

    def on_train_batch_end(self, model: TrainState, step: int, loss: torch.Tensor) -> None:
        if model.epoch < self.start_epoch or step == self._last_step:
            return
        self._last_step = step
        self._set_lr(model)  # for the next step; after the schedule, which the loop stepped already
        if self.every_steps is not None and step % self.every_steps == 0:
            self.update(model)

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        if self.every_steps is None and epoch >= self.start_epoch:
            self.update(model)

    def on_fit_end(self, model: TrainState) -> None:
        if self.num_updates == 0 or self.module is None:
            if model.fit_status == "finished":
                logger.info(
                    "SWA averaged nothing (averaging starts at epoch %d); model.averaged is unchanged.",
                    self.start_epoch,
                )
            return
        model.averaged = self.module
        if model.fit_status != "finished":
            return
        batches = self._bn_batches(model)
        if batches is not None:
            recompute_batchnorm(self.module, batches, device=model.device, autocast=model.precision.autocast)
        elif any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules()) and is_rank_zero():
            logger.warning(
                "SWA could not recompute the BatchNorm statistics of the averaged weights: pass "
                "SWA(bn_data=train) (the averaged model keeps the live model's statistics)."
            )

    # ------------------------------------------------------------------ averaging and lr
    @torch.no_grad()
    def update(self, model: TrainState) -> None:
        """Add the live weights to the equal-weight running average."""
        if self.num_updates == 0:
            torch._foreach_copy_(self._averaged_params, self._live_params)
        else:  # average + (weights - average) / (n + 1)
            torch._foreach_lerp_(self._averaged_params, self._live_params, 1.0 / (self.num_updates + 1))
        self._copy_buffers()
        self.num_updates += 1
        model.averaged = self.module

    def _set_lr(self, model: TrainState) -> None:
        if self.swa_lr is None or self._anneal_from is None:
            return
        done = model.global_step - self._anneal_start
        progress = 1.0 if self._anneal_length == 0 else min(done / self._anneal_length, 1.0)
        weight = 0.5 * (1 + math.cos(math.pi * progress))  # 1 at the start of averaging, 0 after the anneal
        for group, start_lr in zip(model.optimizer.param_groups, self._anneal_from, strict=True):
            group["lr"] = self.swa_lr + (start_lr - self.swa_lr) * weight

    def _bn_batches(self, model: TrainState) -> Any:
        if self.bn_data is not None:
            from ..data.loader import make_loader

            size = self.bn_batch_size or int(model.fit_config.get("batch_size", 32))
            return make_loader(self.bn_data, size, shuffle=False).epoch(0)
        loader = getattr(model, "train_loader", None)
        if loader is None:
            return None
        return loader.epoch(0) if hasattr(loader, "epoch") else iter(loader)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "anneal_from": self._anneal_from, "anneal_start": self._anneal_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        anneal_from = state.get("anneal_from")
        self._anneal_from = None if anneal_from is None else [float(lr) for lr in anneal_from]
        self._anneal_start = int(state.get("anneal_start", 0))


@torch.no_grad()
def recompute_batchnorm(
    module: nn.Module, batches: Any, *, device: torch.device | None = None, autocast: Any = None
) -> nn.Module:
    """Reset and re-estimate every BatchNorm's running statistics with one forward pass over ``batches``.

    Each batch is an input or an ``(inputs, targets)`` pair. The statistics become the plain average over the
    batches (momentum None); under torch.distributed the ranks' averages are averaged. Returns ``module``.

    Example:
        >>> recompute_batchnorm(swa.module, loader.epoch(0), device=torch.device("cuda"))
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return module
    momenta = [m.momentum for m in norms]
    training = module.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
    module.train()
    try:
        for batch in batches:
            inputs = batch[0] if isinstance(batch, tuple | list) and len(batch) == 2 else batch
            if device is not None:
                inputs = _to(inputs, device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                module(*inputs) if isinstance(inputs, tuple | list) else module(inputs)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        module.train(training)
    if is_distributed():
        for norm in norms:
            assert norm.running_mean is not None and norm.running_var is not None
            norm.running_mean.copy_(all_reduce_sum(norm.running_mean) / world_size())
            norm.running_var.copy_(all_reduce_sum(norm.running_var) / world_size())
    return module


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    return value
