"""Custom training steps: what ``Model.backward`` and ``Model.step`` do, and the epoch that runs such a step.

``kiln.Model.fit`` runs one of two epochs, picked once per fit: the built-in supervised step inlined in
:class:`kiln.train.loop.FitLoop` (one loss, one optimizer: the fast path, unchanged by anything here), or
:func:`run_step_epoch`, which calls ``model.train_step(batch)`` for every batch. The second runs when a Model
subclass overrides ``train_step``, when there are several optimizers, or when the optimizer steps through a closure
(L-BFGS). Inside a step the user calls ``self.backward(loss)`` and ``self.step(name)``; :class:`StepControl` makes
those keep what the built-in step does: loss scaling, gradient accumulation, clipping, the ``on_before_optimizer_step``
hooks (the gradient doctor), the learning-rate schedule of each optimizer and, over several ranks, averaged gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..distributed import all_reduce_sum, is_distributed, world_size
from ..errors import ConfigError, DataError
from .callbacks import Callback, overrides
from .optim import needs_closure
from .precision import Precision
from .schedules import make_schedule

if TYPE_CHECKING:
    from ..data.loader import Loader
    from .state import Schedule, TrainState

__all__ = [
    "StepControl",
    "average_gradients",
    "build_schedules",
    "check_step_options",
    "detach_carry",
    "evaluate_steps",
    "record_step",
    "run_step_epoch",
]

_FINITE_CHECK_EVERY = 32  # as in the built-in step: one stack + isfinite every 32 batches, not a sync every step


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    # Read at every call: a callback may add a param group (unfreezing layers) mid-fit.
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over every rank (what DDP does during backward), in one all-reduce per dtype.

    A parameter whose gradient is None on every rank keeps None (an optimizer then leaves it alone); one that has a
    gradient on some rank only gets zeros elsewhere, so that every rank reduces the same tensors.
    """
    if not params:
        return
    world = world_size()
    mask = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    present = all_reduce_sum(mask).tolist()
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for param, count in zip(params, present, strict=True):
        if count == 0:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        elif param.grad.is_sparse:
            raise ConfigError(
                "a custom train_step on several ranks averages dense gradients only; build the "
                "embedding with sparse=False."
            )
        groups.setdefault(param.grad.dtype, []).append(param.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = all_reduce_sum(flat).div_(world)
        torch._foreach_copy_(
            grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)]
        )


class StepControl:
    """The state of one fit behind ``Model.backward`` and ``Model.step``.

    ``boundary`` is True on the batch that ends an accumulation window (every batch with ``accumulate=1``): only then
    does ``step`` step an optimizer; between boundaries gradients keep accumulating. ``sync`` averages gradients over
    the ranks before each optimizer step (a custom step runs on the plain module, not a DDP wrapper, so that it may
    call submodules and step optimizers in any order).
    """

    def __init__(
        self,
        model: TrainState,
        *,
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedules: Mapping[str, Schedule],
        precision: Precision,
        accumulate: int,
        clip_grad_norm: float | None,
        callbacks: list[Callback],
        sync: bool,
    ) -> None:
        self.model, self.optimizers, self.schedules, self.precision = model, optimizers, schedules, precision
        self.accumulate, self.clip, self.sync = accumulate, clip_grad_norm, sync
        self.step_hooks = [cb for cb in callbacks if overrides(cb, "on_before_optimizer_step")]
        self.boundary, self.hooks_called, self.stepped = True, False, False

    # ------------------------------------------------------------------ per batch (the loop)
    def begin(self, boundary: bool) -> None:
        self.boundary, self.hooks_called, self.stepped = boundary, False, False

    def end(self) -> None:
        if self.stepped:
            self.precision.update()  # once per batch, however many optimizers stepped

    # ------------------------------------------------------------------ what train_step calls
    def name_of(self, name: str | None) -> str:
        if name is None:
            if len(self.optimizers) == 1:
                return next(iter(self.optimizers))
            raise ConfigError(
                f"this Model has several optimizers {list(self.optimizers)}; name the one to step, "
                "e.g. self.step('generator')."
            )
        if name not in self.optimizers:
            raise ConfigError(f"no optimizer named {name!r}; this Model has {list(self.optimizers)}.")
        return name

    def backward(self, loss: torch.Tensor, optimizer: str | None = None) -> None:
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise ConfigError(
                f"backward needs a loss tensor that requires grad; got {type(loss).__name__}"
                f"{'' if not isinstance(loss, torch.Tensor) else ' without grad'}."
            )
        if self.accumulate > 1:
            loss = loss / self.accumulate
        scaled = self.precision.scaler.scale(loss) if self.precision.scaler is not None else loss
        inputs = None if optimizer is None else _parameters(self.optimizers[self.name_of(optimizer)])
        device = self.precision.device.type
        off = torch.autocast(device, enabled=False) if self.precision.use_autocast else contextlib.nullcontext()
        with off:  # the backward pass runs in the dtypes autocast chose in the forward
            scaled.backward(inputs=inputs)

    def step(self, name: str | None, closure: Callable[[], torch.Tensor] | None) -> bool:
        name = self.name_of(name)
        if not self.boundary:
            return False
        optimizer = self.optimizers[name]
        if closure is not None:
            self._closure_step(optimizer, closure)
        else:
            self._prepare(optimizer)
            self.precision.step(optimizer, update=False)
            self.stepped = True
        for param in _parameters(optimizer):
            param.grad = None
        schedule = self.schedules.get(name)
        if schedule is not None:
            schedule.step()
        return True

    def _prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients of ``optimizer`` ready for its step: averaged over ranks, unscaled, clipped, shown to hooks."""
        params = _parameters(optimizer)
        if self.sync:
            average_gradients(params)
        if self.clip is not None or self.step_hooks:
            self.precision.unscale(optimizer)
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        if not self.hooks_called:  # once per batch, before its first optimizer step
            self.hooks_called = True
            for callback in self.step_hooks:
                callback.on_before_optimizer_step(self.model, self.model.global_step)

    def _closure_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], torch.Tensor]) -> None:
        if self.precision.scaler is not None:
            raise ConfigError(
                f"{type(optimizer).__name__} steps through a closure, which fp16 loss scaling cannot "
                "do; use precision='bf16' or 'fp32'."
            )

        def evaluate() -> torch.Tensor:
            for param in _parameters(optimizer):
                param.grad = None
            with torch.enable_grad():
                loss = closure()
            self._prepare(optimizer)
            if self.sync:  # every rank must see the same loss, or their line searches part ways
                loss = all_reduce_sum(loss.detach().clone()) / world_size()
            return loss

        optimizer.step(evaluate)  # type: ignore[arg-type]  # torch's stub says float; L-BFGS takes a tensor


def check_step_options(
    model: Any, custom: bool, *, on_nonfinite: str, mode: str, strategy: str, accumulate: int, precision: str
) -> None:
    """Refuse the fit options that the step path (kiln.train.steps) cannot honour, saying what to do instead."""
    if custom and on_nonfinite == "skip":
        raise ConfigError(
            "on_nonfinite='skip' drops batches of kiln's built-in step; a train_step decides itself: "
            "check torch.isfinite(loss) and return before self.step()."
        )
    if custom and mode == "graph":
        raise ConfigError(
            "mode='graph' compiles kiln's built-in step; with a train_step, compile what it calls "
            "(e.g. self.generator = torch.compile(...)) and fit with mode='eager'."
        )
    if strategy == "fsdp":
        raise ConfigError(
            "strategy='fsdp' supports kiln's built-in step with one optimizer; use strategy='ddp' "
            "for a train_step or several optimizers."
        )
    if needs_closure(model.optimizer) and len(model._optimizers) == 1:
        name = type(model.optimizer).__name__
        if accumulate != 1 or on_nonfinite == "skip":
            raise ConfigError(
                f"{name} re-evaluates the loss of one batch inside its step; fit it with "
                "accumulate=1 and on_nonfinite='stop'."
            )
        if Precision(precision, model.device).scaler is not None:
            raise ConfigError(
                f"{name} steps through a closure, which fp16 loss scaling cannot do; use precision='bf16' or 'fp32'."
            )
    if not custom and on_nonfinite == "skip":
        raise ConfigError("on_nonfinite='skip' works with one optimizer; with several, pass on_nonfinite='stop'.")


def build_schedules(
    spec: Any, optimizers: Mapping[str, torch.optim.Optimizer], *, total_steps: int, steps_per_epoch: int
) -> dict[str, Schedule]:
    """The schedule of each optimizer for ``fit(lr_schedule=...)``: one spec for every optimizer, or a dict by name."""
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(optimizers))
        if unknown:
            raise ConfigError(
                f"lr_schedule names {unknown}, which are not optimizers of this Model; its optimizers "
                f"are {list(optimizers)}."
            )
        specs = dict(spec)
    else:
        if spec is not None and len(optimizers) > 1 and hasattr(spec, "state_dict") and hasattr(spec, "step"):
            raise ConfigError(
                f"lr_schedule={spec!r} is built on one optimizer, and this Model has "
                f"{list(optimizers)}; pass a dict by optimizer name, or a kind name for each."
            )
        specs = dict.fromkeys(optimizers, spec)
    built = {
        name: make_schedule(specs.get(name), optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        for name, optimizer in optimizers.items()
    }
    return {name: schedule for name, schedule in built.items() if schedule is not None}


def _rows(batch: Any) -> int:
    """The number of rows of a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, tuple | list):
        for item in batch:
            rows = _rows(item)
            if rows:
                return rows
    return 0


@torch.inference_mode()
def evaluate_steps(model: Any, loader: Loader, *, shard: bool) -> dict[str, float]:
    """``evaluate`` through the Model's ``eval_step``: each value's mean over the rows of every batch (and rank)."""
    module = model.inference_module
    module.eval()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for batch in loader.epoch(0):
        batch = model._to_device(batch)
        with model.precision.autocast():
            returned = model.eval_step(batch)
        values: dict[str, list[torch.Tensor]] = {}
        record_step(values, returned, model.device, what="eval_step")
        rows = _rows(batch) or 1
        for key, (value,) in values.items():
            sums[key] = sums.get(key, 0.0) + value.double() * rows
        count += rows
    names = list(sums)
    totals = torch.stack(
        [
            *(sums[k].to(model.device) for k in names),
            torch.tensor(float(count), dtype=torch.float64, device=model.device),
        ]
    )
    if shard:  # every rank evaluated its share of the rows
        totals = all_reduce_sum(totals)
    results = dict(zip(names, (totals[:-1] / totals[-1].clamp(min=1)).tolist(), strict=True))
    metrics = model.metrics.metrics or {}
    if metrics and all(getattr(metric, "update_count", 0) for metric in metrics.values()):
        results.update(model.metrics.compute())  # the default eval_step updates them (super().eval_step(batch))
    return results


def detach_carry(value: Any) -> Any:
    """``value`` (tensors, possibly in dicts, tuples and lists) cut from the graph of the batch that made it."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {key: detach_carry(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(detach_carry(item) for item in value)
    return value


def _scalar(key: Any, value: Any, what: str, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ConfigError(
                f"{what} returned {key!r} of shape {tuple(value.shape)}; each value must be a number "
                "or a one-element tensor (reduce it first, e.g. loss.mean())."
            )
        return value.detach().reshape(())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return torch.tensor(float(value), device=device)
    raise ConfigError(
        f"{what} returned {key!r}: {type(value).__name__}; each value must be a number or a one-element tensor."
    )


def record_step(
    values: dict[str, list[torch.Tensor]], returned: Any, device: torch.device, what: str = "train_step"
) -> torch.Tensor:
    """Append the values of a step's dict to ``values``; return the one batch hooks get ("loss", else the first)."""
    if not isinstance(returned, Mapping) or not returned:
        shown = "an empty dict" if isinstance(returned, Mapping) else type(returned).__name__
        raise ConfigError(f"{what} must return a dict of name -> number, e.g. {{'loss': loss}}; it returned {shown}.")
    main = None
    for key, value in returned.items():
        if not isinstance(key, str):
            raise ConfigError(f"{what} returned the key {key!r}; names must be strings such as 'loss'.")
        scalar = _scalar(key, value, what, device)
        values.setdefault(key, []).append(scalar)
        if main is None or key == "loss":
            main = scalar
    assert main is not None
    return main


class _Loop(Protocol):
    """What :func:`run_step_epoch` needs of the FitLoop (which imports this module, not the other way round)."""

    model: Any
    loader: Loader
    options: Any
    hooks: dict[str, list[Callback]]
    control: StepControl | None
    step_values: dict[str, list[torch.Tensor]]

    def save(self, epoch: int, batch: int, losses: list[torch.Tensor]) -> None: ...

    def _check_finite(self, losses: list[torch.Tensor], epoch: int) -> None: ...


def run_step_epoch(loop: _Loop, epoch: int, start: int) -> dict[str, float]:
    """One epoch of ``model.train_step``: the mean of each value it returned over the epoch (and over ranks)."""
    model, options, control = loop.model, loop.options, loop.control
    assert control is not None
    train_step, autocast, accumulate = model.train_step, model.precision.autocast, options.accumulate
    move = model.device.type != "cpu"
    every = options.checkpoint_every if options.checkpoint is not None else None
    batch_hooks = loop.hooks["on_train_batch_end"]
    model.module.train()
    if not start:
        model.carry.clear()  # state carried between batches (a recurrent hidden state) starts afresh every epoch
        loop.step_values = {}
    values = loop.step_values
    losses: list[torch.Tensor] = []
    last = len(loop.loader) - 1
    for i, batch in enumerate(loop.loader.epoch(epoch, start), start=start):
        if move:
            batch = model._to_device(batch)
        boundary = accumulate == 1 or (i + 1) % accumulate == 0 or i == last
        control.begin(boundary)
        with autocast():
            returned = train_step(batch)
        control.end()
        if boundary:
            model.global_step += 1
        loss = record_step(values, returned, model.device)
        losses = values["loss"] if "loss" in values else next(iter(values.values()))
        if model.carry:
            model.carry = detach_carry(model.carry)  # truncated backpropagation: the next batch starts a new graph
        if len(losses) % _FINITE_CHECK_EVERY == 0:
            loop._check_finite(losses, epoch)
        for callback in batch_hooks:
            callback.on_train_batch_end(model, model.global_step, loss)
        if every is not None and boundary and model.global_step % every == 0 and i != last:
            loop.save(epoch, i + 1, losses)
    if not values:
        raise DataError(f"epoch {epoch} produced no batches (empty data).")
    loop._check_finite(losses, epoch)
    means = torch.stack([torch.stack(v).float().mean().to(model.device) for v in values.values()])
    if is_distributed():
        means = all_reduce_sum(means) / world_size()
    return dict(zip(values, means.tolist(), strict=True))
