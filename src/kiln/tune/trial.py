"""One trial: the objective builds a Model and its data from the trial's parameters, kiln trains it as a run.

The run is named after the study and tagged ``study`` and ``trial``; its params are the fit's configuration and the
trial's parameters. Each epoch's value of the study's metric goes to Optuna (``trial.report``) from a callback, so
the pruner can stop a trial that is behind; a pruned trial's run ends with status "pruned". A trial that is the best
of its study when it finishes keeps its weights as the run's artifact ``weights.safetensors``, so the best trial can
be registered later from any process.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConfigError
from ..store.liveness import this_process
from ..train.callbacks import Callback
from ..train.tracking import TrackingCallback
from .space import suggest

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

    from ..store import Store
    from ..train.state import TrainState

__all__ = ["WEIGHTS", "Objective", "PruningCallback", "TrialRunner"]

logger = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"  # the run artifact holding a best-so-far trial's weights
Objective = Callable[[dict[str, Any]], Any]
_RESERVED = ("run", "validation", "callbacks")  # fit arguments tune sets itself (callbacks are added to)
_FORM = "(kiln.Model, train_data, val_data) or (kiln.Model, train_data, val_data, fit_kwargs)"


class PruningCallback(Callback):
    """Report ``metric`` to an Optuna trial at every epoch's end; stop the fit when the pruner says so.

    After ``fit`` returns, ``pruned`` tells whether the trial should end as pruned (``raise optuna.TrialPruned()``;
    ``kiln.tune`` does that itself).

    Example:
        >>> def objective(trial):
        ...     pruning = PruningCallback(trial, "val_accuracy")
        ...     history = model.fit(train, epochs=20, validation=val, callbacks=[pruning])
        ...     if pruning.pruned:
        ...         raise optuna.TrialPruned()
        ...     return history["val_accuracy"][-1]
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    @property
    def pruned(self) -> bool:
        return self.pruned_at is not None

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        if self.metric not in logs:
            raise ConfigError(f"the study's metric {self.metric!r} is not in the epoch logs, which hold "
                              f"{sorted(logs)}; pick one of those (val_* need validation data).")  # fmt: skip
        value = float(logs[self.metric])
        if not math.isfinite(value):
            return  # nothing to compare; the trial's end decides
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            model.stop_training = True


class _Pruned:
    """The trained Model as the tracking callback sees it at the end of a pruned trial: fit_status "pruned"."""

    fit_status = "pruned"

    def __init__(self, model: TrainState) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class _TrialTracking(TrackingCallback):
    """Run tracking that records the run's id on the trial at the start and ends a pruned trial's run "pruned"."""

    def __init__(self, store: Store, name: str, trial: optuna.Trial, params: Mapping[str, Any],
                 pruning: PruningCallback) -> None:  # fmt: skip
        super().__init__(store, name, params, tags={"study": name, "trial": str(trial.number)})
        self.trial, self.pruning = trial, pruning

    def on_fit_start(self, model: TrainState) -> None:
        super().on_fit_start(model)
        if self.run is not None:
            self.trial.set_user_attr("kiln_run_id", self.run.id)

    def on_fit_end(self, model: TrainState) -> None:
        pruned = self.pruning.pruned and model.fit_status == "finished"
        super().on_fit_end(cast("TrainState", _Pruned(model)) if pruned else model)


@dataclass(frozen=True)
class Setup:
    """What the objective returned for one trial."""

    model: Any
    train: Any
    validation: Any
    fit: dict[str, Any] = field(default_factory=dict)


def call_objective(objective: Objective, params: dict[str, Any]) -> Setup:
    """Call the objective and check the form of what it returns."""
    out = objective(dict(params))
    if not isinstance(out, tuple) or len(out) not in (3, 4):
        raise ConfigError(f"the objective must return {_FORM}; got {type(out).__name__}.")
    model = out[0]
    if not (hasattr(model, "fit") and hasattr(model, "module") and hasattr(model, "register")):
        raise ConfigError(f"the objective must return {_FORM}; its first item is a {type(model).__name__}, not a "
                          "kiln.Model.")  # fmt: skip
    fit = dict(out[3]) if len(out) == 4 and out[3] is not None else {}
    if not all(isinstance(k, str) for k in fit):
        raise ConfigError(f"the objective's fit_kwargs must be a dict of fit arguments; got {out[3]!r}.")
    reserved = [k for k in fit if k in _RESERVED[:2]]
    if reserved:
        raise ConfigError(f"the objective's fit_kwargs set {reserved}: tune names each trial's run and passes the "
                          "validation data it returns; leave them out.")  # fmt: skip
    return Setup(model, out[1], out[2], fit)


def check_metric(setup: Setup, metric: str) -> None:
    """Fail before training when ``metric`` is not among the epoch logs this objective's fit will write."""
    logged = {"loss", "lr"}
    if setup.validation is not None:
        logged |= {f"val_{key}" for key in setup.model.evaluate(setup.validation)}
    if metric not in logged:
        hint = "" if setup.validation is not None else " (return validation data from the objective for val_*)"
        raise ConfigError(f"metric {metric!r} is never reported: each epoch of this objective's fit logs "
                          f"{', '.join(sorted(logged))}{hint}; pass one of those as metric=.")  # fmt: skip


class TrialRunner:
    """The function Optuna calls per trial: parameters -> objective -> tracked, pruned fit -> metric value."""

    def __init__(self, objective: Objective, space: Mapping[str, BaseDistribution], *, metric: str,
                 maximize: bool, store: Store, study_name: str) -> None:  # fmt: skip
        self.objective, self.space, self.metric, self.maximize = objective, space, metric, maximize
        self.store, self.study_name = store, study_name
        self.checked = False  # the metric check runs on this process's first trial
        self.on_checked: Callable[[], None] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        trial.set_user_attr("kiln_process", this_process())
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("kiln_error", f"{type(error).__name__}: {error}"[:2000])
            raise

    def _run(self, trial: optuna.Trial) -> float:
        import optuna

        params = suggest(trial, self.space)
        setup = call_objective(self.objective, params)
        if not self.checked:
            check_metric(setup, self.metric)
            self.checked = True
            if self.on_checked is not None:
                self.on_checked()
        model = setup.model
        pruning = PruningCallback(trial, self.metric)
        tracking = _TrialTracking(self.store, self.study_name, trial, params, pruning)
        options = {"verbose": 0, **setup.fit}
        callbacks = [*options.pop("callbacks", ()), pruning, tracking]
        own_store, model.store = model.store, None  # fit would add a second, untagged run for a Model's store
        try:
            history = model.fit(setup.train, validation=setup.validation, callbacks=callbacks, **options)
        finally:
            model.store = own_store
        if pruning.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        values, epochs = history.history[self.metric], history.epochs
        epoch = model.weights_epoch if model.weights_epoch in epochs else epochs[-1]
        value = float(values[epochs.index(epoch)])
        if math.isfinite(value) and self._best_so_far(trial, value) and tracking.run is not None:
            self._keep_weights(model, tracking.run.id)
        return value

    def _best_so_far(self, trial: optuna.Trial, value: float) -> bool:
        try:
            best = trial.study.best_value
        except ValueError:  # no trial completed yet
            return True
        return value >= best if self.maximize else value <= best

    def _keep_weights(self, model: Any, run_id: str) -> None:
        from ..train.logging import save_weights

        with tempfile.TemporaryDirectory(prefix="kiln-tune-") as directory:
            path = Path(directory) / WEIGHTS
            save_weights(model.inference_module, path)
            self.store.log_artifact(run_id, WEIGHTS, path)
