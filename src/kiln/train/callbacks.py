"""Callbacks: small objects the training loop calls at a fixed set of typed hooks.

The loop only calls a hook on callbacks that override it, so an unused hook costs nothing per step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .state import TrainState

__all__ = ["Callback", "EarlyStopping", "History"]


class Callback:
    """Base class: override the hooks you need; each gets the :class:`kiln.Model` being trained.

    Hooks see the Model through :class:`~kiln.train.state.TrainState`, the part of it a callback may read and change
    (module, optimizer(s), schedule(s), precision, epoch, global_step, history, stop_training, ...), and are typed
    against that protocol so that callbacks never import the Model. Hooks, in the order the loop calls them::

        on_fit_start(model)                      once, after the loop is set up (fit_config, steps_per_epoch set)
        on_epoch_start(model, epoch)             epoch counts from 0
        on_before_optimizer_step(model, step)    gradients are ready (unscaled, clipped); step = optimizer steps so far
        on_train_batch_end(model, step, loss)    after every batch; step counts optimizer steps done; loss detached
        on_epoch_end(model, epoch, logs)         logs: {"loss": ..., "val_loss": ..., "val_accuracy": ..., "lr": ...}
        on_fit_end(model)                        always, also when fit stops early or raises

    Set ``model.stop_training = True`` to end fit after the current epoch. A callback with state that must survive
    a resume implements ``state_dict()`` / ``load_state_dict()``.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, model, epoch, logs):
        ...         print(epoch, logs["loss"])
    """

    def on_fit_start(self, model: TrainState) -> None:
        pass

    def on_epoch_start(self, model: TrainState, epoch: int) -> None:
        pass

    def on_before_optimizer_step(self, model: TrainState, step: int) -> None:
        pass

    def on_train_batch_end(self, model: TrainState, step: int, loss: torch.Tensor) -> None:
        pass

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_fit_end(self, model: TrainState) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def overrides(callback: Callback, hook: str) -> bool:
    """True when ``callback`` implements ``hook`` itself rather than inheriting the no-op."""
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class History(Callback):
    """Records the logs of every epoch; ``fit`` returns it.

    Example:
        >>> history = model.fit(train, epochs=3, validation=val)
        >>> history.history["val_accuracy"][-1]
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []
        self.diagnostics: list[Any] = []

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: round(v[-1], 5) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epochs)}, last={last})"

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epochs = list(state["epochs"])


def _monitor_mode(monitor: str, mode: str) -> str:
    if mode == "auto":
        return "min" if "loss" in monitor or "error" in monitor else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}.")
    return mode


class _Monitor:
    """Tracks the best value of one logged metric."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        self.monitor, self.mode, self.min_delta = monitor, _monitor_mode(monitor, mode), abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def value(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            from ..errors import ConfigError

            raise ConfigError(
                f"monitor {self.monitor!r} is not in the epoch logs; available: {sorted(logs)}. "
                "Pass validation= to fit for val_* metrics."
            )
        return logs[self.monitor]

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop training when a monitored metric has not improved for ``patience`` epochs.

    Example:
        >>> model.fit(train, epochs=100, validation=val, callbacks=[EarlyStopping("val_loss", patience=5)])
    """

    def __init__(self, monitor: str = "val_loss", *, patience: int = 5, mode: str = "auto", min_delta: float = 0.0,
                 restore_best: bool = False) -> None:
        self._monitor = _Monitor(monitor, mode, min_delta)
        self.patience, self.restore_best = patience, restore_best
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self._best_state: dict[str, Any] | None = None

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        value = self._monitor.value(logs)
        if self._monitor.improved(value):
            self._monitor.best, self.wait, self.best_epoch = value, 0, epoch
            if self.restore_best:
                self._best_state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            model.stop_training = True
            self.stopped_epoch = epoch

    def on_fit_end(self, model: TrainState) -> None:
        if self.restore_best and self._best_state is not None and self.stopped_epoch is not None:
            model.module.load_state_dict(self._best_state)
            model.weights_epoch = self.best_epoch  # register then records that epoch's metrics, not the last one's

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._monitor.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._monitor.best, self.wait = float(state["best"]), int(state["wait"])
