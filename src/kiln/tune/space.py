"""Search spaces: Optuna distributions, written as Optuna objects, as plain Python, or as a TOML table.

One parameter per key; each value is one of

- an Optuna distribution: ``FloatDistribution(1e-5, 1e-1, log=True)``, ``IntDistribution(32, 512)``,
  ``CategoricalDistribution(["adam", "sgd"])``;
- a tuple (Python): ``("log", 1e-5, 1e-1)`` log-uniform, ``(32, 512)`` an int range (a float range when either end
  is a float), ``("int", 32, 512, 32)`` / ``("float", 0.0, 0.5, 0.1)`` with a step, ``("uniform", 0.0, 0.5)``;
- a list: the choices of a categorical parameter, ``["adam", "sgd"]``;
- a table (TOML, where arrays are lists): ``{log = [1e-5, 1e-1]}``, ``{int = [32, 512], step = 32}``,
  ``{float = [0.0, 0.5]}``, ``{choice = ["adam", "sgd"]}``.

Everything is checked when the space is parsed, before a trial runs: an empty space, an unknown kind, bounds in
the wrong order or of the wrong type fail with one line that names the parameter and shows the accepted forms.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the backport tomllib came from
    import tomli as tomllib

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

__all__ = ["FORMS", "parse_space", "read_space", "suggest"]

FORMS = (
    "('log', 1e-5, 1e-1), (32, 512), ('int', 32, 512[, step]), ('float', 0.0, 0.5[, step]), ['adam', 'sgd'], "
    "an optuna distribution, or in TOML {log = [1e-5, 1e-1]}, {int = [32, 512], step = 32}, {choice = [...]}"
)
_KINDS = ("log", "int", "float", "uniform", "choice")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fail(name: str, spec: Any, why: str) -> ConfigError:
    return ConfigError(f"search space parameter {name!r}: {why} (got {spec!r}); write one of {FORMS}.")


def _range(name: str, spec: Any, kind: str, bounds: Any, step: Any = None) -> BaseDistribution:
    from optuna.distributions import FloatDistribution, IntDistribution

    if kind not in _KINDS:
        raise _fail(name, spec, f"unknown distribution {kind!r}; the kinds are {', '.join(_KINDS)}")
    if kind == "choice":
        return _choice(name, spec, bounds)
    if not (isinstance(bounds, list | tuple) and len(bounds) == 2 and all(_number(b) for b in bounds)):
        raise _fail(name, spec, f"{kind!r} takes two finite numbers, low and high")
    low, high = bounds
    if not low < high:
        raise _fail(name, spec, f"low {low!r} must be below high {high!r}")
    if step is not None and not (_number(step) and step > 0):
        raise _fail(name, spec, f"step must be a positive number, not {step!r}")
    integer = kind == "int" or (kind == "log" and isinstance(low, int) and isinstance(high, int))
    ints = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    if kind == "int" and not ints:
        raise _fail(name, spec, "an int range takes int bounds (and an int step)")
    if kind == "log":
        if low <= 0:
            raise _fail(name, spec, "a log range needs low > 0")
        if step is not None:
            raise _fail(name, spec, "a log range takes no step")
    if integer:
        return IntDistribution(int(low), int(high), log=kind == "log", step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=kind == "log", step=None if step is None else float(step))


def _choice(name: str, spec: Any, choices: Any) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution

    if not isinstance(choices, list | tuple) or not choices:
        raise _fail(name, spec, "a categorical parameter needs a non-empty list of choices")
    if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
        raise _fail(name, spec, "choices must be None, bools, numbers or strings")
    if len(set(map(repr, choices))) != len(choices):
        raise _fail(name, spec, "choices repeat")
    return CategoricalDistribution(list(choices))


def _parse_one(name: str, spec: Any) -> BaseDistribution:
    from optuna.distributions import BaseDistribution

    if isinstance(spec, BaseDistribution):
        return spec
    if isinstance(spec, list):
        return _choice(name, spec, spec)
    if isinstance(spec, tuple):
        if len(spec) == 2 and all(_number(v) for v in spec):
            kind = "int" if all(isinstance(v, int) for v in spec) else "float"
            return _range(name, spec, kind, spec)
        if len(spec) in (3, 4) and isinstance(spec[0], str):
            kind = spec[0]
            if kind == "choice":
                return _choice(name, spec, list(spec[1:]))
            return _range(name, spec, kind, spec[1:3], spec[3] if len(spec) == 4 else None)
        raise _fail(name, spec, "a tuple is (low, high) or (kind, low, high[, step])")
    if isinstance(spec, Mapping):
        kinds = [k for k in spec if k != "step"]
        if len(kinds) != 1 or set(spec) - {*kinds, "step"}:
            raise _fail(name, spec, "a table names one kind (log, int, float, uniform, choice) and maybe a step")
        return _range(name, spec, str(kinds[0]), spec[kinds[0]], spec.get("step"))
    raise _fail(name, spec, f"a {type(spec).__name__} is not a distribution")


def parse_space(space: Mapping[str, Any] | None) -> dict[str, BaseDistribution]:
    """Turn a space in any of the accepted forms into ``{name: optuna distribution}``, checking every entry.

    Example:
        >>> parse_space({"lr": ("log", 1e-5, 1e-1), "width": (32, 512), "optimizer": ["adam", "sgd"]})
        {'lr': FloatDistribution(high=0.1, log=True, low=1e-05, step=None), 'width': IntDistribution(...), ...}
    """
    try:
        import optuna  # noqa: F401
    except ImportError as error:
        raise ImportError("kiln tune needs Optuna: pip install 'kiln[tune]'.") from error
    if not isinstance(space, Mapping):
        raise ConfigError(f"space must be a dict of parameter name -> distribution; got {type(space).__name__}.")
    if not space:
        raise ConfigError(f"the search space is empty: give at least one parameter, e.g. space={{'lr': "
                          f"('log', 1e-5, 1e-1)}}; each value is one of {FORMS}.")  # fmt: skip
    parsed = {}
    for name, spec in space.items():
        if not isinstance(name, str) or not name or not name.isprintable() or len(name) > 100:
            raise ConfigError(f"search space parameter names are printable text of 1-100 characters; got {name!r}.")
        parsed[name] = _parse_one(name, spec)
    return parsed


def read_space(path: str | Path) -> dict[str, BaseDistribution]:
    """Read a ``space.toml``: one key per parameter (dotted keys and tables nest into ``section.key`` names).

    Example (space.toml)::

        lr = {log = [1e-4, 1e-1]}
        "model.width" = {int = [32, 256], step = 32}
        optimizer = {choice = ["adamw", "sgd"]}
    """
    file = Path(path)
    try:
        document = tomllib.loads(file.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read the search space {file}: {error.strerror or error}.") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{file} is not valid TOML: {error}.") from error
    return parse_space(_flatten(document))


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML tables that are not distribution tables become dotted names: [model] width = ... -> model.width."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not (set(value) & {*_KINDS, "step"}):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def suggest(trial: optuna.Trial, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """The trial's value of every parameter, drawn through Optuna's public ``suggest_*`` calls."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params: dict[str, Any] = {}
    for name, distribution in space.items():
        if isinstance(distribution, FloatDistribution):
            params[name] = trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log,
                                               step=distribution.step)  # fmt: skip
        elif isinstance(distribution, IntDistribution):
            params[name] = trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log,
                                             step=distribution.step)  # fmt: skip
        elif isinstance(distribution, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, distribution.choices)
        else:
            raise ConfigError(f"search space parameter {name!r}: {type(distribution).__name__} is not supported; "
                              "use FloatDistribution, IntDistribution or CategoricalDistribution.")  # fmt: skip
    return params
