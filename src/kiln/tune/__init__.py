"""kiln.tune: hyperparameter search on Optuna, with every trial a kiln run and the study in the kiln store.

``kiln.tune(objective, space=..., trials=50, ...)`` is :func:`kiln.tune.study.tune`; ``kiln tune`` and
``kiln tune show`` are its command line. Optuna is imported only when a study runs (``pip install 'kiln[tune]'``).

Example:
    >>> study = kiln.tune(objective, space={"lr": ("log", 1e-4, 1e-1), "width": (32, 256)}, trials=30,
    ...                   metric="val_accuracy", study="digits")
    >>> study.best_params
    >>> kiln.tune.load_study("digits").importances()
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .results import Study, list_studies, load_study
from .space import parse_space, read_space
from .study import tune
from .summary import StudySummary, TrialSummary
from .trial import PruningCallback

__all__ = [
    "PruningCallback",
    "Study",
    "StudySummary",
    "TrialSummary",
    "list_studies",
    "load_study",
    "parse_space",
    "read_space",
    "tune",
]


class _CallableModule(types.ModuleType):
    """``kiln.tune`` is both this package and the function: importing a package binds its name on the parent
    package (``kiln.tune`` = the module), which would shadow a function of that name, so the module calls it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Study:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
