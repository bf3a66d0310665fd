"""The training state a callback sees: a narrow protocol, so that callbacks never import the Model.

``kiln.Model`` satisfies :class:`TrainState` structurally and is what the loop passes to every hook: no view object
is built, no attribute is forwarded, so the protocol costs nothing per step and ``model.stop_training``,
``model.module``, ``model.optimizer`` keep working in every existing callback. This module sits below the Model, the
loop and the callbacks and imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data.loader import Loader
    from .precision import Precision

__all__ = ["HistoryView", "Schedule", "TrainState"]


class Schedule(Protocol):
    """A learning-rate schedule as the loop steps it: after every optimizer step and at every epoch's end."""

    def step(self) -> None: ...

    def epoch_end(self, logs: dict[str, float]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class HistoryView(Protocol):
    """The record of a fit so far (:class:`kiln.History`): per-epoch logs and the gradient doctor's findings."""

    history: dict[str, list[float]]  # log name -> one value per finished epoch
    epochs: list[int]
    diagnostics: list[Any]


class TrainState(Protocol):
    """What a callback may read and change of a fit in progress; ``kiln.Model`` is one.

    Read (properties here, so a callback cannot swap them mid-fit): ``module``; ``optimizer`` and ``optimizers``
    (every optimizer by name; with one, ``{"default": optimizer}``: ``optimizer`` is the first of them); ``schedule``
    and ``schedules`` (the learning-rate schedules the loop steps, by the name of their optimizer; empty without
    ``lr_schedule``); ``precision`` (autocast and the fp16 loss scaler, ``precision.scaler``); ``device``; ``epoch``
    (from 0); ``global_step`` (optimizer steps done); ``steps_per_epoch`` (batches); ``fit_config`` (the arguments of
    ``fit``: epochs, batch_size, accumulate, ...); ``fit_status`` ("running", then "finished", "failed" or
    "killed"); ``history`` (every finished epoch's logs; the current epoch's reach ``on_epoch_end`` as ``logs``);
    ``train_data`` and ``train_loader``.

    Change: ``stop_training`` (True ends fit after the current epoch), ``averaged`` (the module evaluate, predict
    and export run instead of ``module``: EMA/SWA), ``weights_epoch`` (the epoch the weights are from when not the
    last one), ``run_id`` and ``data_fingerprint`` (set by run tracking).

    Example:
        >>> class StopAtLoss(kiln.Callback):
        ...     def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        ...         if logs["loss"] < 0.1:
        ...             model.stop_training = True
    """

    stop_training: bool
    averaged: nn.Module | None
    weights_epoch: int | None
    run_id: str | None
    data_fingerprint: str | None

    @property
    def module(self) -> nn.Module: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def optimizers(self) -> Mapping[str, torch.optim.Optimizer]: ...

    @property
    def schedule(self) -> Schedule | None: ...

    @property
    def schedules(self) -> Mapping[str, Schedule]: ...

    @property
    def precision(self) -> Precision: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def epoch(self) -> int: ...

    @property
    def global_step(self) -> int: ...

    @property
    def steps_per_epoch(self) -> int: ...

    @property
    def fit_config(self) -> dict[str, Any]: ...

    @property
    def fit_status(self) -> str: ...

    @property
    def history(self) -> HistoryView | None: ...

    @property
    def train_data(self) -> Any: ...

    @property
    def train_loader(self) -> Loader | None: ...
