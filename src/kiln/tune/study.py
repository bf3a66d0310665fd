"""``kiln.tune``: an Optuna study whose trials are kiln runs, stored in the kiln store's database.

Optuna is the engine: its samplers (TPE by default, random, CMA-ES) choose the parameters, its pruners (median by
default, Hyperband, successive halving) stop trials that are behind, its RDBStorage keeps the study. kiln adds the
rest: every trial is a tracked run, the study lives in the store (so it survives a crash and ``resume=True``
continues it), worker processes share it, and the best trial can be registered as a model version.

A study has a budget of ``trials``: trials that completed, were pruned, or failed with an error count against it. A
trial whose process was killed does not: it is marked failed and re-run with the same parameters.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConfigError, NonFiniteLossError
from ..store import Store
from ..store.gitinfo import git_commit, recorded_git
from ..store.names import check_name
from .results import Study
from .space import parse_space
from .storage import fail_dead_trials, open_storage
from .trial import Objective, TrialRunner
from .workers import Work, WorkerFailed, run_workers

if TYPE_CHECKING:
    import optuna

__all__ = ["DIRECTIONS", "PRUNERS", "SAMPLERS", "count_done", "make_pruner", "make_sampler", "tune"]

logger = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "successive_halving", "none")


def make_sampler(spec: Any, seed: int | None) -> optuna.samplers.BaseSampler:
    """An Optuna sampler from a name in SAMPLERS (seeded) or an Optuna sampler object (used as it is)."""
    import optuna

    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec
    if spec == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError as error:
            raise ImportError("sampler='cmaes' needs the cmaes package: pip install cmaes.") from error
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)} or an optuna sampler; got {spec!r}.")


def make_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner from a name in PRUNERS (or None: no pruning) or an Optuna pruner object."""
    import optuna

    if isinstance(spec, optuna.pruners.BasePruner):
        return spec
    pruners: dict[Any, Callable[[], optuna.pruners.BasePruner]] = {
        "median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner,
        None: optuna.pruners.NopPruner,
    }  # fmt: skip
    if spec not in pruners:
        raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, None or an optuna pruner; got {spec!r}.")
    return pruners[spec]()


def count_done(study: optuna.Study) -> int:
    """Trials that count against the budget: completed, pruned, or failed with an error (not killed)."""
    from optuna.trial import TrialState

    done = 0
    for trial in study.get_trials(deepcopy=False):
        failed = trial.state == TrialState.FAIL and "kiln_error" in trial.user_attrs
        if failed or trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            done += 1
    return done


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int; got {value!r}.")
    return value


def _study_name(study: str | None, objective: Any) -> str:
    if study is not None:
        return check_name(study, what="study name")
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", getattr(objective, "__name__", "study")).strip("-_") or "study"
    return check_name(f"{base[:40]}-{time.strftime('%Y%m%d-%H%M%S')}", what="study name")


def _open_study(storage: Any, name: str, *, direction: str, metric: str, space_json: str, resume: bool,
                sampler: Any, pruner: Any) -> optuna.Study:  # fmt: skip
    import optuna

    try:
        found = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        found = None
    if found is not None and not resume:
        raise ConfigError(f"study {name!r} already exists in this store ({len(found.trials)} trials); pass "
                          "resume=True (--resume) to continue it, or choose another study name.")  # fmt: skip
    if found is not None:
        old_metric = found.user_attrs.get("kiln_metric")
        old_direction = found.direction.name.lower()
        if (old_metric, old_direction) != (metric, direction):
            raise ConfigError(f"study {name!r} optimises {old_metric!r} ({old_direction}); resuming it with "
                              f"{metric!r} ({direction}) would mix two goals. Resume with the same metric and "
                              "direction, or start another study.")  # fmt: skip
        found.set_user_attr("kiln_space", space_json)
        return found
    created = optuna.create_study(study_name=name, storage=storage, direction=cast(Any, direction), sampler=sampler,
                                  pruner=pruner)  # fmt: skip
    created.set_user_attr("kiln_metric", metric)
    created.set_user_attr("kiln_space", space_json)
    return created


def tune(
    objective: Objective,
    *,
    space: Mapping[str, Any],
    trials: int = 50,
    metric: str = "val_accuracy",
    direction: str = "maximize",
    workers: int = 1,
    timeout: float | None = None,
    pruner: Any = "median",
    sampler: Any = "tpe",
    study: str | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    resume: bool = False,
    seed: int | None = None,
    register: str | None = None,
) -> Study:
    """Search ``space`` for the parameters that give the best ``metric``; every trial is a kiln run.

    ``objective(params)`` returns ``(model, train_data, val_data)`` or ``(model, train_data, val_data, fit_kwargs)``:
    a fresh ``kiln.Model`` built from the trial's ``params`` and what ``fit`` should train it on (fit_kwargs: epochs,
    batch_size, ...; tune adds validation, callbacks and the run). ``metric`` is an epoch log of that fit
    (``val_accuracy``, ``val_loss``, ``loss``, ...), its value at the last epoch (or the restored best one) is the
    trial's. ``space`` maps names to distributions (see :mod:`kiln.tune.space`). ``pruner``: "median",
    "hyperband", "successive_halving", "none" or an Optuna pruner; ``sampler``: "tpe", "random", "cmaes" or an Optuna
    sampler (``seed`` seeds the named ones). ``workers`` > 1 runs trials in that many forked processes sharing the
    store. The study is kept in ``store`` (default: ``$KILN_HOME`` or ``./.kiln``) as ``study`` (default: the
    objective's name and the time); ``resume=True`` continues it up to ``trials`` trials in all. ``timeout``
    (seconds) ends the search early. ``register`` publishes the best trial's weights as the next version of that
    model, with lineage to its run and the study.

    Example:
        >>> def objective(params):
        ...     net = nn.Sequential(nn.Linear(64, params["width"]), nn.ReLU(), nn.Linear(params["width"], 10))
        ...     model = kiln.Model(net, loss="cross_entropy", optimizer=params["optimizer"], lr=params["lr"],
        ...                        metrics=["accuracy"])
        ...     return model, train, val, {"epochs": 10, "batch_size": 64}
        >>> study = kiln.tune(objective, space={"lr": ("log", 1e-4, 1e-1), "width": (32, 256),
        ...                                     "optimizer": ["adamw", "sgd"]}, trials=30, study="digits")
        >>> study.best_params
        {'lr': 0.0041, 'width': 212, 'optimizer': 'adamw'}
    """
    import optuna

    if not callable(objective):
        raise ConfigError(f"objective must be a function params -> (model, train, val[, fit_kwargs]); got "
                          f"{type(objective).__name__}.")  # fmt: skip
    parsed = parse_space(space)
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be 'maximize' or 'minimize'; got {direction!r}.")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"metric must name an epoch log such as 'val_accuracy' or 'val_loss'; got {metric!r}.")
    trials, workers = _positive_int("trials", trials), _positive_int("workers", workers)
    if timeout is not None and not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
        raise ConfigError(f"timeout must be a positive number of seconds or None; got {timeout!r}.")
    chosen_sampler, chosen_pruner = make_sampler(sampler, seed), make_pruner(pruner)
    if register is not None:
        check_name(register)
    name = _study_name(study, objective)
    if not isinstance(store, Store):
        store = Store(store)
    storage = open_storage(store)
    space_json = json.dumps({k: optuna.distributions.distribution_to_json(v) for k, v in parsed.items()})
    found = _open_study(storage, name, direction=direction, metric=metric, space_json=space_json, resume=resume,
                        sampler=chosen_sampler, pruner=chosen_pruner)  # fmt: skip
    fail_dead_trials(found)
    remaining = trials - count_done(found)
    git = _study_git()
    maximize = direction == "maximize"
    if remaining <= 0:
        logger.info("study %r already has %d trials; nothing to run", name, trials - remaining)
    elif workers == 1:
        runner = TrialRunner(objective, parsed, metric=metric, maximize=maximize, store=store, study_name=name)
        _optimize(found, runner, remaining, timeout, git)
    else:

        def work(index: int, count: int, on_ready: Callable[[], None]) -> None:
            store.database.engine.dispose(close=False)  # the parent's pool is the parent's: open our own
            storage.engine.dispose(close=False)
            if isinstance(sampler, optuna.samplers.BaseSampler):
                sampler.reseed_rng()
            own = make_sampler(sampler, None if seed is None else seed + 1 + index)
            mine = optuna.load_study(study_name=name, storage=storage, sampler=own, pruner=chosen_pruner)
            runner = TrialRunner(objective, parsed, metric=metric, maximize=maximize, store=store, study_name=name)
            runner.on_checked = on_ready
            _optimize(mine, runner, count, timeout, git)

        def close_connections() -> None:
            store.database.engine.dispose()
            storage.engine.dispose()

        threads = max(1, (os.cpu_count() or 1) // workers)
        _import_once()
        try:
            run_workers(Work(work, threads), remaining, workers, before_fork=close_connections)
        except Exception as error:
            fail_dead_trials(found)
            raise (_trial_error(found) or error) from None
    result = Study(found, store, objective=objective)
    if register is not None:
        result.register(register)
    return result


def _import_once() -> None:
    """Import in the tuner what every trial imports lazily, so forked workers share it instead of each paying.

    kiln's fused optimizers import torch._dynamo and its metrics torchmetrics on first use: seconds of CPU each,
    which eight workers on two cores would otherwise spend at once, before their first trial.
    """
    for name in ("torch._dynamo", "torchmetrics"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _study_git() -> dict[str, Any] | None:
    """The git state every trial's run records: checked once, as the trials run code imported once."""
    state = git_commit()
    return None if state is None else {**state, "checked": "study start"}


def _optimize(study: optuna.Study, runner: TrialRunner, trials: int, timeout: float | None,
              git: dict[str, Any] | None) -> None:  # fmt: skip
    from .storage import quiet_optuna

    with quiet_optuna(), recorded_git(git):
        # A diverging trial (NaN loss) fails alone; any other error stops the study and reaches the caller.
        study.optimize(runner, n_trials=trials, timeout=timeout, catch=(NonFiniteLossError,))


def _trial_error(study: optuna.Study) -> WorkerFailed | None:
    """The error of the latest trial that failed with one that stops the study (not a diverging loss)."""
    from optuna.trial import TrialState

    for trial in reversed(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))):
        message = trial.user_attrs.get("kiln_error")
        if message and not message.startswith(NonFiniteLossError.__name__):
            return WorkerFailed(f"trial {trial.number} of study {study.study_name!r} failed: {message}")
    return None
