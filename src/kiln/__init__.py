"""kiln: from data, to a trained model, to a versioned and integrity-checked model, to a fast HTTP service.

Example:
    >>> import kiln
    >>> from kiln.data import ArrayDataset
    >>> train, val = ArrayDataset(x, y).split(0.8, seed=0)
    >>> model = kiln.Model(net, loss="cross_entropy", optimizer="adamw", lr=1e-3, metrics=["accuracy"])
    >>> history = model.fit(train, epochs=10, batch_size=64, validation=val)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names and the module that defines each. They are imported on first use so that `import kiln` stays cheap
# (torchmetrics, SQLAlchemy and ONNX cost seconds to import and many programs never touch them).
_EXPORTS: dict[str, str] = {
    "Model": "kiln.train.model",
    "Callback": "kiln.train.callbacks",
    "TrainState": "kiln.train.state",
    "EarlyStopping": "kiln.train.callbacks",
    "History": "kiln.train.callbacks",
    "ModelCheckpoint": "kiln.train.logging",
    "MetricsLogger": "kiln.train.logging",
    "ProgressBar": "kiln.train.progress",
    "LRSchedule": "kiln.train.schedules",
    "ArrayDataset": "kiln.data.arrays",
    "KilnError": "kiln.errors",
    "Store": "kiln.store",
    "TrackingCallback": "kiln.train.tracking",
    "GradientDoctor": "kiln.train.doctor",
    "Finding": "kiln.train.doctor",
    "EMA": "kiln.train.averaging",
    "ProfileOptions": "kiln.train.profiler",
    "Profiler": "kiln.train.profiler",
    "SWA": "kiln.train.averaging",
}

# Subpackages reachable as attributes (kiln.data, kiln.store, ...), also imported on first use.
_SUBMODULES = ("data", "distributed", "errors", "export", "kernels", "serve", "store", "train", "tune")

__all__ = ["__version__", "init", "tune", *sorted(_EXPORTS)]  # kiln.tune: the package, callable as tune()


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"kiln.{name}")
    if name == "init":
        return import_module("kiln.train.init").init
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
