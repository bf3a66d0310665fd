"""The fit loop: one readable pass per batch, and the complete training state for exact resume.

``Model.fit`` validates its arguments, builds the loaders and hands them to a :class:`FitLoop`. The loop's position
(epoch, batch within the epoch, optimizer step, the epoch's losses so far, the data seed) and every stateful part
(module, optimizers, loss scaler, schedules, callbacks, RNG states, the state a custom step carries between batches)
go into a checkpoint, so a run killed at any optimizer step continues bit for bit.

The loop runs the built-in step inlined below (:meth:`FitLoop.train_epoch`) or, for a Model with a custom
``train_step``, several optimizers or a closure optimizer, :func:`kiln.train.steps.run_step_epoch`; which one is
picked once per fit, so the built-in step pays nothing for the other.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..distributed import all_reduce_sum, is_distributed, is_rank_zero, world_size
from ..errors import CheckpointError, DataError, NonFiniteLossError
from .callbacks import Callback, overrides
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .state import Schedule, TrainState
from .steps import StepControl, run_step_epoch
from .strategy import full_state, is_sharded, load_full_state

if TYPE_CHECKING:
    from ..data.loader import Loader

__all__ = ["FitLoop", "FitOptions"]

logger = logging.getLogger(__name__)

HOOKS = ("on_fit_start", "on_epoch_start", "on_before_optimizer_step", "on_train_batch_end", "on_epoch_end",
         "on_fit_end")
_FINITE_CHECK_EVERY = 32  # steps between non-finite loss checks (one stack + isfinite, not a sync every step)


@dataclass(kw_only=True)
class FitOptions:
    epochs: int
    batch_size: int
    clip_grad_norm: float | None
    accumulate: int
    on_nonfinite: str
    data_seed: int
    checkpoint: Path | None
    checkpoint_every: int | None  # optimizer steps; None: at the end of every epoch
    keep_checkpoints: int


def call(module: Any, x: Any) -> Any:
    return module(*x) if isinstance(x, tuple | list) else module(x)


def split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, torch.Tensor):
        return batch, None
    length = f" of length {len(batch)}" if isinstance(batch, tuple | list) else ""
    raise DataError(f"each batch must be an (inputs, targets) pair; got {type(batch).__name__}{length}.")


def _zero_grad(optimizer: torch.optim.Optimizer) -> Any:
    """``optimizer.zero_grad(set_to_none=True)``, minus its per-call bookkeeping where the optimizer keeps torch's.

    torch's zero_grad builds a dict of gradients per device and opens a profiler range on every call: 6 µs on one CPU
    thread, 1 % of a step of the benchmark MLP. Setting the gradients to None is all it does with set_to_none=True.
    """
    if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
        return lambda: optimizer.zero_grad(set_to_none=True)
    groups = optimizer.param_groups  # read at every call: a callback may add a group (unfreezing layers) mid-fit

    def zero_grad() -> None:
        for group in groups:
            for param in group["params"]:
                param.grad = None

    return zero_grad


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(value: Any, device: torch.device) -> Any:
    """A checkpoint's tensors (in dicts, tuples and lists) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_to_device(item, device) for item in value)
    return value


class _Trainee(TrainState, Protocol):
    """What the loop needs of ``kiln.Model`` beyond what callbacks see: it advances the position and evaluates."""

    epoch: int
    global_step: int
    fit_status: str
    carry: dict[str, Any]

    @property
    def loss(self) -> Any: ...

    def train_step(self, batch: Any) -> Mapping[str, Any]: ...

    def _to_device(self, value: Any) -> Any: ...

    def _evaluate(self, loader: Loader) -> dict[str, float]: ...


class FitLoop:
    """One call of ``Model.fit``: runs epochs, calls callbacks, writes and restores checkpoints."""

    def __init__(self, model: _Trainee, loader: Loader, val_loader: Loader | None, forward: Any,
                 schedules: Mapping[str, Schedule], callbacks: list[Callback], options: FitOptions,
                 control: StepControl | None = None) -> None:
        self.model, self.loader, self.val_loader, self.forward = model, loader, val_loader, forward
        self.schedules, self.callbacks, self.options = schedules, callbacks, options
        self.schedule = next(iter(schedules.values()), None)  # the built-in step's (it has one optimizer)
        self.hooks = {name: [cb for cb in callbacks if overrides(cb, name)] for name in HOOKS}
        self.start_epoch, self.start_batch = 0, 0
        self.resumed_losses: list[torch.Tensor] = []
        self.skipped_steps = 0
        self.control = control  # set when the Model's train_step runs each batch (kiln.train.steps)
        self.step_values: dict[str, list[torch.Tensor]] = {}  # what train_step returned this epoch, by name

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        model, hooks = self.model, self.hooks
        try:
            for callback in hooks["on_fit_start"]:
                callback.on_fit_start(model)
            for epoch in range(self.start_epoch, self.options.epochs):
                model.epoch = epoch
                for callback in hooks["on_epoch_start"]:
                    callback.on_epoch_start(model, epoch)
                start = self.start_batch if epoch == self.start_epoch else 0
                if self.control is None:
                    logs = {"loss": self.train_epoch(epoch, start)}
                else:
                    logs = run_step_epoch(self, epoch, start)
                if self.val_loader is not None:
                    logs.update({f"val_{k}": v for k, v in model._evaluate(self.val_loader).items()})
                for schedule in self.schedules.values():
                    schedule.epoch_end(logs)
                logs["lr"] = model.optimizer.param_groups[0]["lr"]
                if len(model.optimizers) > 1:
                    logs.update({f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in model.optimizers.items()})
                if self.skipped_steps:
                    logs["skipped_steps"] = float(self.skipped_steps)
                for callback in hooks["on_epoch_end"]:
                    callback.on_epoch_end(model, epoch, logs)
                last_epoch = epoch + 1 == self.options.epochs or model.stop_training
                if self.options.checkpoint is not None and (self.options.checkpoint_every is None or last_epoch):
                    # Every epoch's end with checkpoint_every="epoch"; with a step interval, the end of the fit too,
                    # so running the same fit(..., resume="latest") line again finds the run finished.
                    self.save(epoch + 1, 0, [])
                if model.stop_training:
                    break
            model.fit_status = "finished"
        except KeyboardInterrupt:
            model.fit_status = "killed"
            raise
        except BaseException:
            model.fit_status = "failed"
            raise
        finally:
            for callback in hooks["on_fit_end"]:
                callback.on_fit_end(model)

    def train_epoch(self, epoch: int, start: int) -> float:
        model, options = self.model, self.options
        module, optimizer, loss_fn, precision, schedule = (model.module, model.optimizer, model.loss,
                                                           model.precision, self.schedule)
        assert loss_fn is not None
        forward, autocast, accumulate, clip = self.forward, precision.autocast, options.accumulate, \
            options.clip_grad_norm
        move = model.device.type != "cpu"
        skip_nonfinite = options.on_nonfinite == "skip"
        every = options.checkpoint_every if options.checkpoint is not None else None
        batch_hooks, step_hooks = self.hooks["on_train_batch_end"], self.hooks["on_before_optimizer_step"]
        zero_grad = _zero_grad(optimizer)
        module.train()
        losses: list[torch.Tensor] = self.resumed_losses if start else []
        last = len(self.loader) - 1
        for i, batch in enumerate(self.loader.epoch(epoch, start), start=start):
            x, y = split_batch(batch)
            if move:
                x, y = model._to_device(x), model._to_device(y)
            with autocast():
                output = call(forward, x)
                loss = loss_fn(output, y)
            detached = loss.detach()
            if skip_nonfinite and not bool(torch.isfinite(detached)):
                self._skip(epoch, i, float(detached))
                continue
            precision.backward(loss / accumulate if accumulate > 1 else loss)
            stepped = accumulate == 1 or (i + 1) % accumulate == 0 or i == last
            if stepped:
                if clip is not None or step_hooks:
                    precision.unscale(optimizer)
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
                for callback in step_hooks:
                    callback.on_before_optimizer_step(model, model.global_step)
                precision.step(optimizer)
                zero_grad()
                model.global_step += 1
                if schedule is not None:
                    schedule.step()
            losses.append(detached)
            if not skip_nonfinite and len(losses) % _FINITE_CHECK_EVERY == 0:
                self._check_finite(losses, epoch)
            for callback in batch_hooks:
                callback.on_train_batch_end(model, model.global_step, detached)
            if every is not None and stepped and model.global_step % every == 0 and i != last:
                self.save(epoch, i + 1, losses)
        if not losses:
            raise DataError(f"epoch {epoch} produced no usable batches (empty data, or every loss was non-finite).")
        if not skip_nonfinite:
            self._check_finite(losses, epoch)
        mean = torch.stack(losses).float().mean()
        if is_distributed():
            mean = all_reduce_sum(mean) / world_size()
        return float(mean)

    def _skip(self, epoch: int, batch: int, value: float) -> None:
        self.model.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        if self.skipped_steps == 1 and is_rank_zero():
            logger.warning("skipping a batch with non-finite loss %s at epoch %d, batch %d (on_nonfinite='skip'); "
                           "later skips are counted in the logs as skipped_steps.", value, epoch, batch)

    def _check_finite(self, losses: list[torch.Tensor], epoch: int) -> None:
        # losses holds one entry per batch of the epoch from batch 0 (a resumed epoch starts with the saved ones).
        recent = torch.stack(losses[-_FINITE_CHECK_EVERY:])
        finite = torch.isfinite(recent)
        if bool(finite.all()):
            return
        index = len(losses) - len(recent) + int((~finite).nonzero()[0, 0])
        # The check runs every few batches: count back from the batch just done (the step the doctor also names).
        later, accumulate = len(losses) - 1 - index, self.options.accumulate
        step = self.model.global_step - later // accumulate
        where = f"optimizer step {step}" if accumulate == 1 else f"around optimizer step {step}"
        raise NonFiniteLossError(
            f"the loss became {float(losses[index])} at epoch {epoch}, batch {index} ({where}). "
            "Lower the learning rate, "
            "set clip_grad_norm (e.g. 1.0), pass on_nonfinite='skip', or check that batch's inputs for NaN/Inf."
        )

    # ------------------------------------------------------------------ checkpoints
    def _compatibility(self) -> dict[str, Any]:
        return {
            "batch_size": self.options.batch_size,
            "accumulate": self.options.accumulate,
            "steps_per_epoch": len(self.loader),
            "world_size": world_size(),
            "parameters": {name: list(p.shape) for name, p in self.model.module.named_parameters()},
        }

    def state_dict(self, epoch: int, batch: int, losses: list[torch.Tensor]) -> dict[str, Any]:
        model = self.model
        optimizers = dict(model.optimizers)
        if is_sharded(model.module):  # FSDP: one optimizer, its full state gathered (a collective)
            module_state, optimizer_state = full_state(model.module, model.optimizer)
            optimizer_states = {name: optimizer_state for name in optimizers}
        else:
            module_state = model.module.state_dict()
            optimizer_states = {name: optimizer.state_dict() for name, optimizer in optimizers.items()}
        in_epoch = bool(batch)  # at an epoch's end the next epoch starts afresh: nothing of this one is kept
        return {
            "loop": {"epoch": epoch, "batch": batch, "global_step": model.global_step,
                     "data_seed": self.options.data_seed, "skipped_steps": self.skipped_steps,
                     "losses": torch.stack(losses) if losses else torch.zeros(0),
                     "values": {k: torch.stack(v) for k, v in self.step_values.items()} if in_epoch else {}},
            "compatibility": self._compatibility(),
            "module": module_state,
            "optimizers": optimizer_states,
            "precision": model.precision.state_dict(),
            "schedules": {name: schedule.state_dict() for name, schedule in self.schedules.items()},
            "carry": model.carry if in_epoch else {},
            "callbacks": [{"class": type(cb).__name__, "state": cb.state_dict()} for cb in self.callbacks],
            "rng": _rng_state(),
        }

    def save(self, epoch: int, batch: int, losses: list[torch.Tensor]) -> None:
        if self.options.checkpoint is None:
            return
        sharded = is_sharded(self.model.module)
        if not (sharded or is_rank_zero()):
            return
        state = self.state_dict(epoch, batch, losses)  # under FSDP a collective: every rank gathers
        if is_rank_zero():
            save_checkpoint(self.options.checkpoint, state, step=self.model.global_step,
                            keep=self.options.keep_checkpoints)

    def resume(self, resume: str | Path) -> bool:
        """Restore the state of a checkpoint; ``"latest"`` with no checkpoint yet starts fresh (returns False)."""
        if resume == "latest":
            if self.options.checkpoint is None:
                raise CheckpointError("resume='latest' needs checkpoint=<directory> to know where to look.")
            path = latest_checkpoint(self.options.checkpoint)
            if path is None:
                logger.info("no checkpoint in %s yet; starting from scratch", self.options.checkpoint)
                return False
        else:
            path = Path(resume)
        state = load_checkpoint(path)
        self._check_compatible(state["compatibility"], path, at_epoch_start=int(state["loop"]["batch"]) == 0)
        model = self.model
        optimizers, schedules = self._saved_by_name(state, path)
        if is_sharded(model.module):
            load_full_state(model.module, model.optimizer, state["module"], optimizers[next(iter(optimizers))])
        else:
            model.module.load_state_dict(state["module"])
            for name, optimizer in model.optimizers.items():
                optimizer.load_state_dict(optimizers[name])
        model.precision.load_state_dict(state["precision"])
        for name, schedule in self.schedules.items():
            if schedules.get(name) is not None:
                schedule.load_state_dict(schedules[name])
        model.carry = _to_device(state.get("carry", {}), model.device)
        saved = state["callbacks"]
        for callback in self.callbacks:
            match = next((s for s in saved if s["class"] == type(callback).__name__), None)
            if match is not None:
                saved.remove(match)
                callback.load_state_dict(match["state"])
        loop = state["loop"]
        self.start_epoch, self.start_batch = int(loop["epoch"]), int(loop["batch"])
        model.global_step, self.skipped_steps = int(loop["global_step"]), int(loop["skipped_steps"])
        self.options.data_seed = int(loop["data_seed"])
        self.resumed_losses = list(loop["losses"].unbind()) if loop["losses"].numel() else []
        self.step_values = {k: list(v.to(model.device).unbind()) for k, v in loop.get("values", {}).items()}
        _set_rng_state(state["rng"])
        logger.info("resumed from %s at epoch %d, batch %d (step %d)", path, self.start_epoch, self.start_batch,
                    model.global_step)
        return True

    def _saved_by_name(self, state: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The optimizer and schedule states of a checkpoint by optimizer name (one unnamed in older checkpoints)."""
        names = list(self.model.optimizers)
        if "optimizers" not in state:  # written before kiln named its optimizers: one, with one schedule
            return {names[0]: state["optimizer"]}, {names[0]: state.get("schedule")}
        saved = state["optimizers"]
        if sorted(saved) != sorted(names):
            raise CheckpointError(f"checkpoint {path.name} holds the optimizers {sorted(saved)}; this Model has "
                                  f"{sorted(names)}. Resume with the optimizers it was trained with, or start anew.")
        return saved, state["schedules"]

    def _check_compatible(self, saved: dict[str, Any], path: Path, *, at_epoch_start: bool) -> None:
        current = self._compatibility()
        keys = ["batch_size", "accumulate", "steps_per_epoch"]
        saved_world = saved.get("world_size", 1)
        if saved_world != current["world_size"]:
            # Model and optimizer state are full (unsharded) in every kiln checkpoint, so any rank count can load
            # them; only the position inside an epoch depends on how the epoch was split across ranks.
            if not at_epoch_start:
                raise CheckpointError(
                    f"checkpoint {path.name} was written mid-epoch by {saved_world} rank(s); this job has "
                    f"{current['world_size']}. Resume on {saved_world} rank(s), or from a checkpoint written at an "
                    "epoch's end (checkpoint_every='epoch'), which resumes on any number of ranks."
                )
            keys.remove("steps_per_epoch")
        for key in keys:
            if saved[key] != current[key]:
                raise CheckpointError(f"checkpoint {path.name} was written with {key}={saved[key]}, this fit uses "
                                      f"{key}={current[key]}; resume with the same {key}, or start a new run.")
        if saved["parameters"] != current["parameters"]:
            names = set(saved["parameters"]) | set(current["parameters"])
            changed = sorted(k for k in names if saved["parameters"].get(k) != current["parameters"].get(k))
            detail = ", ".join(f"{k}: {saved['parameters'].get(k)} -> {current['parameters'].get(k)}"
                               for k in changed[:5])
            raise CheckpointError(f"checkpoint {path.name} holds a model of another shape ({detail}); resume with "
                                  "the architecture it was trained with, or start a new run.")
