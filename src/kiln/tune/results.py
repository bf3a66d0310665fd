"""A finished (or running) study as kiln shows it: best trial, trials with their runs, importances, registration."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.arrays import ArrayDataset
from ..errors import ConfigError, NotFoundError
from ..store import Store
from ..store.names import check_name
from .summary import StudySummary, TrialSummary
from .trial import WEIGHTS, Objective, call_objective

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from ..store import ModelVersion

__all__ = ["Study", "StudySummary", "TrialSummary", "list_studies", "load_study"]


def _summary(trial: FrozenTrial) -> TrialSummary:
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return TrialSummary(
        number=trial.number, state=trial.state.name, value=trial.value, params=dict(trial.params),
        run_id=trial.user_attrs.get("kiln_run_id"), epochs=len(trial.intermediate_values), seconds=seconds,
        retry_of=trial.system_attrs.get("failed_trial"), error=trial.user_attrs.get("kiln_error"),
    )  # fmt: skip


def example_input(data: Any) -> Any:
    """One input row (shape (1, ...)) of training data in the forms ``fit`` takes, to fix a signature."""
    import torch

    if isinstance(data, tuple) and len(data) == 2:
        data = ArrayDataset(*data)
    if isinstance(data, ArrayDataset):
        return data.take(slice(0, 1))[0]
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and len(data):
        item = data[0]
        x = item[0] if isinstance(item, tuple | list) else item
        return tuple(torch.as_tensor(t)[None] for t in x) if isinstance(x, tuple | list) else torch.as_tensor(x)[None]
    raise ConfigError(f"cannot take an example input from a {type(data).__name__}; register the best trial's "
                      "model with Model.register(..., example_input=x[:1]) instead.")  # fmt: skip


class Study:
    """A kiln study: an Optuna study in the store's database whose trials are kiln runs.

    Example:
        >>> study = kiln.tune.load_study("digits")
        >>> study.best_params, study.best_value, study.best_run_id
        >>> [(t.number, t.state, t.value) for t in study.trials()]
        >>> study.importances()
        {'lr': 0.81, 'width': 0.15, 'optimizer': 0.04}
        >>> study.register("digits", objective=objective)
    """

    def __init__(self, study: optuna.Study, store: Store, *, objective: Objective | None = None) -> None:
        self.optuna, self.store, self.objective = study, store, objective

    def __repr__(self) -> str:
        best = f", best={self.best_value:.4g}" if self._complete() else ""
        return f"Study({self.name!r}, metric={self.metric!r}, trials={len(self.optuna.trials)}{best})"

    @property
    def name(self) -> str:
        return self.optuna.study_name

    @property
    def metric(self) -> str | None:
        return self.optuna.user_attrs.get("kiln_metric")

    @property
    def direction(self) -> str:
        return self.optuna.direction.name.lower()

    def _complete(self) -> bool:
        from optuna.trial import TrialState

        return bool(self.optuna.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    @property
    def best_trial(self) -> TrialSummary:
        """The best completed trial; ConfigError while none has completed."""
        if not self._complete():
            raise ConfigError(f"study {self.name!r} has no completed trial yet.")
        return _summary(self.optuna.best_trial)

    @property
    def best_params(self) -> dict[str, Any]:
        return self.best_trial.params

    @property
    def best_value(self) -> float:
        value = self.best_trial.value
        assert value is not None
        return value

    @property
    def best_run_id(self) -> str | None:
        return self.best_trial.run_id

    def trials(self) -> list[TrialSummary]:
        """Every trial, by number."""
        return [_summary(t) for t in self.optuna.get_trials(deepcopy=False)]

    def importances(self) -> dict[str, float]:
        """Each parameter's share of the variation of the metric, by Optuna's fANOVA (needs 2+ completed trials).

        fANOVA needs scikit-learn; without it Optuna's default evaluator (PED-ANOVA) is used. Parameters that were
        not varied (one choice) are left out.
        """
        import optuna

        from .storage import quiet_optuna

        completed = [t for t in self.trials() if t.state == "COMPLETE"]
        if len(completed) < 2:
            return {}
        try:
            import sklearn  # noqa: F401

            evaluator: Any = optuna.importance.FanovaImportanceEvaluator(seed=0)
        except ImportError:
            evaluator = None
        with quiet_optuna():
            return dict(optuna.importance.get_param_importances(self.optuna, evaluator=evaluator))

    def register(
        self, name: str, *, objective: Objective | None = None, description: str | None = None, **options: Any
    ) -> ModelVersion:
        """Publish the best trial's weights as the next version of model ``name``, with lineage to its run.

        ``objective`` (default: the one this study was tuned with) rebuilds the Model for the best parameters; the
        weights come from the best trial's run (its ``weights.safetensors`` artifact). The version records the run,
        its data fingerprint and metrics, and tags ``study`` and ``trial``. ``options`` go to ``Model.register``
        (``onnx=False``, ``factory=``, ...).

        Example:
            >>> version = study.register("digits")
            >>> version.run_id == study.best_run_id
            True
        """
        from safetensors.torch import load_model

        check_name(name)
        objective = objective or self.objective
        if objective is None:
            raise ConfigError(f"registering the best trial of {self.name!r} needs the objective that builds its "
                              "model: study.register(name, objective=objective).")  # fmt: skip
        best = self.best_trial
        if best.run_id is None:
            raise NotFoundError(f"the best trial ({best.number}) of study {self.name!r} has no run.")
        run = self.store.run(best.run_id)
        blob = run.artifacts.get(WEIGHTS)
        if blob is None:
            raise NotFoundError(
                f"run {run.id} of trial {best.number} kept no {WEIGHTS}; it was not the best "
                "trial when it finished. Re-run it, then register it with Model.register."
            )
        setup = call_objective(objective, dict(best.params))
        model = setup.model
        with tempfile.TemporaryDirectory(prefix="kiln-tune-") as directory:
            path = Path(directory) / WEIGHTS
            path.write_bytes(self.store.blobs.read(blob, label=f"run {run.id} artifact {WEIGHTS}"))
            load_model(model.module, str(path))
        model.run_id, model.data_fingerprint = run.id, run.params.get("data_fingerprint")
        metrics = {k: v for k, v in run.latest.items() if k not in ("batch_loss", "epoch", "lr")}
        text = description or f"best trial ({best.number}) of study {self.name}: {self.metric} {best.value:.6g}"
        known = getattr(objective, "register_options", None)  # a job config's objective knows its factory
        options = {**(known(dict(best.params)) if known is not None else {}), **options}
        return model.register(name, store=self.store, example_input=example_input(setup.train), metrics=metrics,
                              description=text, tags={"study": self.name, "trial": str(best.number)},
                              **options)  # fmt: skip

    def plot(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write the optimisation history and the parameter importances as PNGs into ``directory``; their paths."""
        from .report import plot_study

        return plot_study(self, Path(directory))


def load_study(name: str, *, store: Store | str | os.PathLike[str] | None = None) -> Study:
    """The study ``name`` of ``store`` (default: ``$KILN_HOME`` or ``./.kiln``).

    Example:
        >>> study = kiln.tune.load_study("digits", store=".kiln")
    """
    import optuna

    from .storage import open_storage

    check_name(name, what="study name")
    store = store if isinstance(store, Store) else Store(store, create=False)
    try:
        found = optuna.load_study(study_name=name, storage=open_storage(store))
    except KeyError:
        known = ", ".join(s.name for s in list_studies(store)) or "none"
        raise NotFoundError(f"no study {name!r} in the store at {store.path}; its studies: {known}.") from None
    return Study(found, store)


def list_studies(store: Store | str | os.PathLike[str] | None = None) -> Sequence[StudySummary]:
    """Every study of the store with its metric, direction, trial counts by state and best value."""
    import optuna

    from .storage import open_storage

    store = store if isinstance(store, Store) else Store(store, create=False)
    storage = open_storage(store)
    out = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        states: dict[str, int] = {}
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
        best = summary.best_trial.value if summary.best_trial is not None else None
        out.append(StudySummary(summary.study_name, summary.user_attrs.get("kiln_metric"),
                                summary.direction.name.lower(), summary.n_trials, best, states))  # fmt: skip
    return out
