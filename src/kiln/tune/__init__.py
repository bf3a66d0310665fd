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
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the real names, for type checkers; at run time they are imported on first use
    from .results import Study, list_studies, load_study
    from .space import parse_space, read_space
    from .study import tune
    from .summary import StudySummary, TrialSummary
    from .trial import PruningCallback

# Imported on first use: `kiln --help` imports kiln.tune.commands, which runs this file first, and must not pay for
# torch or Optuna.
_EXPORTS = {
    "PruningCallback": "kiln.tune.trial",
    "Study": "kiln.tune.results",
    "StudySummary": "kiln.tune.summary",
    "TrialSummary": "kiln.tune.summary",
    "list_studies": "kiln.tune.results",
    "load_study": "kiln.tune.results",
    "parse_space": "kiln.tune.space",
    "read_space": "kiln.tune.space",
    "tune": "kiln.tune.study",
}

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _CallableModule(types.ModuleType):
    """``kiln.tune`` is both this package and the function: importing a package binds its name on the parent
    package (``kiln.tune`` = the module), which would shadow a function of that name, so the module calls it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Study:
        from .study import tune

        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
